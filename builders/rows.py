"""Reading built datasets: `open_dataset`, the one way to open a dataset at a split (builder folders,
Hub-layout folders, `save_to_disk`, Hub ids), and `decode` / `caption_text` for its cells. `show`,
the trainer, `evaluate`, `generate` and the Studio all read rows through this module."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from conditioners.errors import UnknownNameError, UserError
from conditioners.images import load_image
from conditioners.locations import local_or_hub

from .recipe import RECIPE_FILE, default_output, resolve_builder


class DatasetNotBuiltError(UserError, RuntimeError):
    """The builder folder has no data yet; the message says which command builds it."""


class SplitNotFoundError(UserError, KeyError):
    """A dataset without the split asked for; the message lists the splits it has."""


def open_dataset(
    location: str, split: str = "train", config: str | None = None, streaming: bool = False, **kwargs: Any
) -> Any:
    """The one way to open a dataset at a split (the trainer, `evaluate`, `show`, the fidelity
    rows): a builder name or folder, a folder of a dataset's files (a Hub snapshot, a `to_parquet`
    export: splits found as `built_data_files` finds them), a `save_to_disk` folder of a
    `DatasetDict` or of a single `Dataset`, or a Hub id.

    A split the dataset lacks is a `SplitNotFoundError` naming the splits there are. A saved single
    `Dataset` has no named split: it is read as `train`, and asking it for another is refused. A
    path that does not exist fails at once, never as a Hub lookup."""
    import datasets

    where = _dataset_location(location)
    if isinstance(where, str) or config is not None:  # a Hub id, or a folder's card config by name
        return _load_by_name(str(where), split, config, streaming, **kwargs)
    if (where / "dataset_dict.json").is_file() or (where / "state.json").is_file():
        return _open_saved(where, split, streaming)
    data_files = built_data_files(where)
    _check_split(where, split, list(data_files))
    return datasets.load_dataset(
        str(where), split=split, data_files=data_files, streaming=streaming, **kwargs
    )


def dataset_splits(location: str, config: str | None = None) -> list[str]:
    """The splits `open_dataset(location, ...)` can open, as it finds them."""
    import datasets

    where = _dataset_location(location)
    if isinstance(where, str) or config is not None:
        with hub_dataset_errors(str(where)):
            return list(datasets.get_dataset_split_names(str(where), config))
    if (where / "dataset_dict.json").is_file():
        return list(json.loads((where / "dataset_dict.json").read_text())["splits"])
    if (where / "state.json").is_file():
        return ["train"]
    return list(built_data_files(where))


def dataset_card(location: str) -> str | None:
    """The dataset card (README.md) of what `open_dataset(location)` opens: the folder's own, or the
    Hub repository's (through HF_ENDPOINT); None when it has none."""
    where = _dataset_location(location)
    if isinstance(where, Path):
        card = where / "README.md"
        return card.read_text() if card.is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

    with hub_dataset_errors(where):
        try:
            return Path(hf_hub_download(where, "README.md", repo_type="dataset")).read_text()
        except EntryNotFoundError:
            return None
        except RepositoryNotFoundError:
            raise HubDatasetError(f"{where}: no such local folder, and no such dataset on the Hub") from None


def _dataset_location(location: str) -> Path | str:
    """An existing folder, a packaged builder's output folder, or a Hub id."""
    path = Path(location).expanduser()
    if path.is_dir() and not (path / RECIPE_FILE).exists():
        return path
    if path.is_file():
        raise UserError(f"{location}: a file, not a dataset folder")
    try:
        folder = default_output(resolve_builder(location))
    except UnknownNameError:
        if "/" not in location:  # a mistyped builder name, not a Hub id: the error lists the names
            raise
        return local_or_hub(location, "dataset folder (nor a builder name)")
    if not any((folder / "data").glob("*.parquet")):
        raise DatasetNotBuiltError(
            f"{folder} has no data yet. Build it first: "
            f"landmark-controlnet build {location} --source PATH_OR_DATASET"
        )
    return folder


def _open_saved(folder: Path, split: str, streaming: bool) -> Any:
    import datasets

    loaded = datasets.load_from_disk(str(folder))
    if isinstance(loaded, datasets.DatasetDict):
        _check_split(folder, split, list(loaded))
        loaded = loaded[split]
    elif split != "train":
        raise SplitNotFoundError(
            f"{folder}: a saved single Dataset has no {split!r} split (it is read as 'train'); "
            "save a DatasetDict with that split, or ask for train"
        )
    return loaded.to_iterable_dataset() if streaming else loaded


def _load_by_name(name: str, split: str, config: str | None, streaming: bool, **kwargs: Any) -> Any:
    """`datasets.load_dataset` on a Hub id (or a folder with a named config), its errors one line."""
    import datasets

    with hub_dataset_errors(name):
        try:
            return datasets.load_dataset(name, config, split=split, streaming=streaming, **kwargs)
        except ValueError as exc:
            if "split" not in str(exc).lower():
                raise
            raise SplitNotFoundError(f"{name}: no {split!r} split ({exc})") from None


class HubDatasetError(UserError, ConnectionError):
    """A Hub dataset id that cannot be opened: not reachable (offline), or no such dataset."""


@contextmanager
def hub_dataset_errors(repo_id: str) -> Iterator[None]:
    """The Hub's answers about a dataset id as one line each."""
    from datasets.exceptions import DatasetNotFoundError

    try:
        yield
    except DatasetNotFoundError:
        raise HubDatasetError(
            f"{repo_id}: no such local folder, and no such dataset on the Hub (a private one needs HF_TOKEN)"
        ) from None
    except ConnectionError as exc:
        raise HubDatasetError(
            f"{repo_id}: no such local folder, and the Hub could not be reached ({exc}); offline "
            "(HF_HUB_OFFLINE=1) only datasets already in the cache open"
        ) from None


def _check_split(where: Path, split: str, splits: list[str]) -> None:
    if split not in splits:
        raise SplitNotFoundError(f"{where}: no {split!r} split; its splits: {', '.join(sorted(splits))}")


class UnknownLayoutError(UserError, FileNotFoundError):
    """A dataset folder whose files `built_data_files` cannot assign to splits (not a ValueError:
    evaluate reads those as an unknown split)."""


SPLIT_NAME = r"\w+(?:\.\w+)*"  # datasets' rule for split names (no dash)
# This project's own shards, `data/{split}-NNNNN.parquet` (any split name): found before datasets'
# defaults, which know only train/validation/test by name in files without `-of-NNNNN`.
BUILT_SHARD = re.compile(rf"(?P<split>{SPLIT_NAME})-[0-9]{{5}}\.parquet")
LOOKED_FOR = (
    "a README.md `configs` data_files section, data/{split}-NNNNN-of-NNNNN.* or data/{split}-NNNNN.parquet "
    "shards, files named after a split (train, validation, test, ...) or {split}/ folders"
)


def built_data_files(folder: Path | str) -> dict[str, list[str]]:
    """The data files of a dataset folder by split, to pass to `load_dataset` as `data_files`.

    Given this way, `datasets` keys its cache on the files themselves (their mtimes). Left to the
    card's `configs`, datasets 5.0 keys it on the patterns alone, so a folder rebuilt with as many
    rows would load the previous build's rows from the cache.

    The splits are found as `datasets` finds them: the default config's `data_files` (or
    `data_dir`) in the card's `configs` (README.md YAML, or `.huggingface.yaml`) when it has one;
    else this project's `data/{split}-NNNNN.parquet`; else datasets' own patterns
    (`datasets.data_files.get_data_patterns`): the Hub's `data/{split}-NNNNN-of-NNNNN.parquet`,
    `{split}/` folders, file names that start with a split name. A folder in none of these layouts
    (or whose files name no split) raises `UnknownLayoutError`. Paths are absolute, symlinks kept
    (a Hub snapshot's files are links to extension-less blobs; datasets reads a file's format
    from its name)."""
    from datasets.data_files import DataFilesDict, sanitize_patterns

    folder = Path(folder).expanduser().resolve()
    base, patterns = _card_patterns(folder)
    if patterns is None:
        patterns = _built_shard_patterns(base) or _default_patterns(base)
    patterns = sanitize_patterns(patterns)
    try:
        resolved = DataFilesDict.from_patterns(patterns, base_path=base.as_posix())
    except FileNotFoundError as exc:  # a literal path of the card that is not there
        raise UnknownLayoutError(f"{folder}: the card's `configs` name a missing file ({exc})") from None
    by_split = {str(split): list(dict.fromkeys(files)) for split, files in resolved.items()}
    for split, files in by_split.items():
        if not re.fullmatch(SPLIT_NAME, split):
            raise UnknownLayoutError(f"{folder}: split name {split!r} is not a word (letters, digits, _)")
        if not files:
            raise UnknownLayoutError(f"{folder}: no file matches split {split!r} ({patterns[split]})")
    return by_split


def _card_patterns(folder: Path) -> tuple[Path, dict[str, list[str]] | None]:
    """(base folder, patterns by split) of the card's default config; (folder, None) without one."""
    import yaml
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard, DatasetCardData

    readme = folder / "README.md"
    try:  # a card without YAML has no configs (and DatasetCard.load would log a warning about it)
        has_yaml = readme.is_file() and readme.read_text(encoding="utf-8").lstrip().startswith("---")
        data = DatasetCard.load(readme).data.to_dict() if has_yaml else {}
        if (folder / ".huggingface.yaml").is_file():  # as datasets reads it: over the card's YAML
            data.update(yaml.safe_load((folder / ".huggingface.yaml").read_text()) or {})
        configs = MetadataConfigs.from_dataset_card_data(DatasetCardData(**data))
        default = configs.get_default_config_name() if configs else None
    except (ValueError, yaml.YAMLError) as exc:
        raise UnknownLayoutError(f"{folder}: its card's YAML `configs` cannot be read ({exc})") from None
    if not configs:
        return folder, None
    if default is None:
        raise UnknownLayoutError(
            f"{folder}: its card has several `configs` ({', '.join(configs)}) and none is the default; "
            "name one (the trainer's --dataset_config_name)"
        )
    config = configs[default]
    base = folder / config["data_dir"] if config.get("data_dir") else folder
    return base, config.get("data_files")  # no data_files: datasets' patterns under data_dir


def _built_shard_patterns(folder: Path) -> dict[str, list[str]] | None:
    splits = sorted(
        {m["split"] for p in (folder / "data").glob("*.parquet") if (m := BUILT_SHARD.fullmatch(p.name))}
    )
    return {split: [f"data/{split}-[0-9][0-9][0-9][0-9][0-9].parquet"] for split in splits} or None


def _default_patterns(folder: Path) -> dict[str, list[str]]:
    from datasets.data_files import DEFAULT_PATTERNS_ALL, EmptyDatasetError, get_data_patterns

    try:
        patterns = {str(split): list(p) for split, p in get_data_patterns(folder.as_posix()).items()}
    except EmptyDatasetError:
        raise UnknownLayoutError(f"{folder} has no data files: looked for {LOOKED_FOR}") from None
    except ValueError as exc:  # datasets: a data/NAME-NNNNN-of-NNNNN file whose NAME is no split name
        raise UnknownLayoutError(
            f"{folder}: a data/NAME-NNNNN-of-NNNNN file's NAME is no split name ({exc})"
        ) from None
    if patterns == {str(split): list(p) for split, p in DEFAULT_PATTERNS_ALL.items()}:
        raise UnknownLayoutError(f"{folder}: no file or folder names a split; looked for {LOOKED_FOR}")
    return patterns


# -- cells ---------------------------------------------------------------------------------------
def decode(value: Any, name: str) -> Image.Image:
    """A `datasets` image cell ({"bytes", "path"}), a PIL image or a file path, upright RGB."""
    if isinstance(value, dict):
        name = value.get("path") or name
        value = value.get("bytes") or value.get("path")
    return Image.fromarray(load_image(value, name=name).pixels)


def caption_text(value: Any) -> str:
    """A caption cell as text: of several captions the first, as the example trainer takes it."""
    if isinstance(value, list | tuple | np.ndarray):
        return str(value[0]) if len(value) else ""
    return "" if value is None else str(value)
