"""Loading the project's Flax models from diffusers / transformers model folders, local or on the Hub.

    unet = from_pretrained(UNet2DConditionModel, "stable-diffusion-v1-5/stable-diffusion-v1-5",
                           subfolder="unet", variant="fp16")

A model folder holds `config.json` and its weights in one of the layouts the PyTorch libraries write:
`<name>.safetensors`, `<name>.<variant>.safetensors`, or shards listed by `<name>.safetensors.index.json`
(`<name>.safetensors.index.<variant>.json`), where `<name>` is `diffusion_pytorch_model` for diffusers
models and `model` for transformers models. Safetensors are read one tensor at a time (`pread`, no
memory map), into a model built abstractly, so loading holds the parameters plus one tensor.

Pickled PyTorch weights (`diffusion_pytorch_model.bin`, `pytorch_model.bin`) are read only when the
caller passes `allow_pickle=True`; they are then loaded whole with
`torch.load(path, map_location="cpu", weights_only=True)` (torch is imported only then).

Single-file original (ldm) checkpoints are converted once to a diffusers pipeline folder with
`convert_single_file`, which needs PyTorch diffusers (the `train` extra); the folder then loads here.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal, Protocol, TypedDict, TypeVar, Unpack

import ml_dtypes  # noqa: F401  registers bfloat16 with numpy, so safe_open(framework="numpy") reads BF16
import numpy as np
from safetensors import SafetensorError, safe_open

from conditioners.errors import UserError
from conditioners.locations import local_or_hub

from .options import DEFAULT_OPTIONS, ModelOptions
from .pretrained import PretrainedModule
from .weights import DictTensorSource, TensorSource, WeightsError, load_module

ModelT = TypeVar("ModelT", bound=PretrainedModule)

CONFIG_NAME = "config.json"
MODEL_INDEX_NAME = "model_index.json"
PICKLE_OPT_IN = (
    "pass allow_pickle=True to read it with torch.load(weights_only=True) (needs torch), "
    "or convert it to safetensors"
)
# A Hub repo id: `name` or `owner/name`, no leading path punctuation (anything else is a local path).


class LoadingError(UserError):
    """A model folder or Hub repo lacks a file the loader needs, or holds one it will not read."""


class MissingFileError(LoadingError):
    """config.json or the weights are not where they should be."""


class PickleRefusedError(LoadingError):
    """Only pickled (.bin / .ckpt) weights were found and the caller did not opt in to reading them."""


class MissingExtraError(LoadingError):
    """An optional step needs packages (torch, diffusers) that are not installed."""


# -- reading tensors ---------------------------------------------------------------------------------


def _same_key(key: str) -> str:
    return key


def _same_tensor(key: str, tensor: np.ndarray) -> np.ndarray:
    return tensor


class SafetensorsSource:
    """A TensorSource over one or several `.safetensors` shards, read one tensor at a time.

    Tensors come back in their stored dtype (fp32, fp16 or bf16); `weights.load_module` casts each to
    the model's param dtype. `legacy_key` renames stored keys and `legacy_tensor(key, tensor)` reshapes
    a tensor stored in an older layout (a model's static methods of those names). Use as a context
    manager (or call `close()`) to release the open files.
    """

    def __init__(
        self,
        files: Sequence[str | Path],
        legacy_key: Callable[[str], str] = _same_key,
        legacy_tensor: Callable[[str, np.ndarray], np.ndarray] = _same_tensor,
    ):
        self.files = [Path(f) for f in files]
        self.legacy_tensor = legacy_tensor
        if not self.files:
            raise WeightsError("SafetensorsSource needs at least one .safetensors file")
        self._handles: dict[int, Any] = {}
        self._where: dict[str, tuple[int, str]] = {}
        for index in range(len(self.files)):
            for stored in self._handle(index).keys():  # noqa: SIM118  safe_open is not iterable
                self._add(legacy_key(stored), index, stored)

    def _add(self, key: str, index: int, stored: str) -> None:
        if key in self._where:
            other = self.files[self._where[key][0]]
            raise WeightsError(f"weight {key!r} is in both {other} and {self.files[index]}")
        self._where[key] = (index, stored)

    def _handle(self, index: int):
        if index not in self._handles:
            try:
                self._handles[index] = _open_streaming(self.files[index])
            except (SafetensorError, OSError) as exc:
                raise WeightsError(f"{self.files[index]}: not a readable safetensors file ({exc})") from exc
        return self._handles[index]

    def keys(self) -> Iterable[str]:
        return self._where.keys()

    def get(self, key: str) -> np.ndarray:
        index, stored = self._where[key]
        return self.legacy_tensor(key, self._handle(index).get_tensor(stored))

    def describe(self) -> str:
        if len(self.files) == 1:
            return str(self.files[0])
        return f"{self.files[0].parent} ({len(self.files)} shards: {', '.join(f.name for f in self.files)})"

    def close(self) -> None:
        self._handles.clear()  # safe_open releases its file when collected

    def __enter__(self) -> SafetensorsSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _open_streaming(path: Path):
    """safe_open reading each tensor with pread(2): no memory map whose pages would stay resident."""
    try:
        return safe_open(path, framework="numpy", backend="pread")
    except TypeError:  # safetensors < 0.8 has no backend= (it memory-maps)
        return safe_open(path, framework="numpy")


def pickle_source(
    files: Sequence[str | Path],
    legacy_key: Callable[[str], str] = _same_key,
    legacy_tensor: Callable[[str, np.ndarray], np.ndarray] = _same_tensor,
):
    """A TensorSource over pickled PyTorch state dicts (.bin), loaded whole with weights_only=True.

    Only for callers that opted in (`allow_pickle=True`): unpickling runs code from the file's author,
    which `weights_only=True` narrows to tensors and containers but does not make a format to trust.
    """
    try:
        import torch
    except ImportError as exc:
        raise MissingExtraError(
            f"reading {Path(files[0]).name} needs torch: pip install 'landmark-controlnet[train]'"
        ) from exc
    tensors: dict[str, np.ndarray] = {}
    for path in files:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
            raise LoadingError(f"{path}: torch.load(weights_only=True) cannot read it ({exc})") from exc
        if not isinstance(state, dict):
            raise LoadingError(f"{path}: holds a {type(state).__name__}, not a state dict")
        for stored, tensor in state.items():
            if isinstance(tensor, torch.Tensor):
                key = legacy_key(stored)
                tensors[key] = legacy_tensor(key, _torch_to_numpy(tensor, torch))
    name = str(files[0]) if len(files) == 1 else f"{Path(files[0]).parent} ({len(files)} .bin shards)"
    return DictTensorSource(tensors, name)


def _torch_to_numpy(tensor, torch) -> np.ndarray:
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: reinterpret the bits (no copy)
        return tensor.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


# -- model folders: local or on the Hub --------------------------------------------------------------


class ModelFolder(Protocol):
    """Where a model's files are: `fetch(name)` gives a local path, or None when the file is absent."""

    def fetch(self, name: str) -> Path | None: ...

    def listing(self) -> list[str]: ...

    def describe(self) -> str: ...


class LocalFolder:
    def __init__(self, root: Path, subfolder: str | None):
        self.root = root
        self.subfolder = subfolder
        self.path = root / subfolder if subfolder else root

    def fetch(self, name: str) -> Path | None:
        path = self.path / name
        return path if path.is_file() else None

    def listing(self) -> list[str]:
        return sorted(p.name for p in self.path.iterdir() if p.is_file()) if self.path.is_dir() else []

    def describe(self) -> str:
        return f"folder {self.root}" + (f", subfolder {self.subfolder!r}" if self.subfolder else "")


class HubFolder:
    """A model repo on the Hub (HF_ENDPOINT is honoured); files are downloaded into the HF cache on demand."""

    def __init__(self, repo_id: str, subfolder: str | None, revision: str | None, token: str | bool | None):
        self.repo_id = repo_id
        self.subfolder = subfolder
        self.revision = revision
        self._token = token  # never part of a message
        self.endpoint = os.environ.get("HF_ENDPOINT") or None
        self.unreachable: list[str] = []

    def fetch(self, name: str) -> Path | None:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        try:
            return Path(
                hf_hub_download(
                    self.repo_id,
                    name,
                    subfolder=self.subfolder or None,
                    revision=self.revision,
                    token=self._token,
                    endpoint=self.endpoint,
                )
            )
        except LocalEntryNotFoundError:  # offline (or no connection) and not in the cache
            self.unreachable.append(name)
            return None
        except EntryNotFoundError:
            return None
        except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
            raise self._hub_error(exc) from exc

    def _hub_error(self, exc: Exception) -> LoadingError:
        from huggingface_hub.errors import GatedRepoError, RevisionNotFoundError

        if isinstance(exc, RevisionNotFoundError):
            return MissingFileError(f"{self.describe()}: no such revision")
        if isinstance(exc, GatedRepoError):
            return LoadingError(f"{self.describe()}: gated repo; accept its terms, pass token= (or HF_TOKEN)")
        return MissingFileError(
            f"{self.describe()}: repo not found (a private repo needs token= or HF_TOKEN; "
            "a local folder must exist)"
        )

    def listing(self) -> list[str]:
        from huggingface_hub import HfApi

        try:
            files = HfApi(endpoint=self.endpoint).list_repo_files(
                self.repo_id, revision=self.revision, token=self._token
            )
        except Exception as exc:  # only for an error message: say why there is no list
            return [f"(could not list the repo: {type(exc).__name__})"]
        prefix = f"{self.subfolder.strip('/')}/" if self.subfolder else ""
        return sorted(f[len(prefix) :] for f in files if f.startswith(prefix) and "/" not in f[len(prefix) :])

    def describe(self) -> str:
        where = f"Hub repo {self.repo_id} ({self.endpoint or 'huggingface.co'})"
        where += f", subfolder {self.subfolder!r}" if self.subfolder else ""
        return where + f", revision {self.revision or 'main'!r}"


def open_folder(
    location: str | os.PathLike,
    subfolder: str | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
) -> ModelFolder:
    """A local folder if `location` exists on disk, otherwise a Hub repo id; a path that does not
    exist fails at once (`conditioners.locations`), with no network attempt."""
    where = local_or_hub(location, "model folder")
    if isinstance(where, str):
        return HubFolder(where, subfolder, revision, token)
    path = where
    if path.is_file():
        raise LoadingError(
            f"{path} is a file, not a model folder: convert a single-file checkpoint with "
            "landmark_controlnet.diffusion.loading.convert_single_file first"
        )
    if path.is_dir():
        if revision is not None:
            raise LoadingError(f"revision={revision!r} applies to Hub repos; {path} is a local folder")
        if subfolder and not (path / subfolder).is_dir():
            found = sorted(p.name for p in path.iterdir() if p.is_dir())
            raise MissingFileError(f"folder {path} has no subfolder {subfolder!r} (subfolders: {found})")
    return LocalFolder(path, subfolder)


def _missing(folder: ModelFolder, what: str, hint: str = "") -> MissingFileError:
    found = folder.listing()
    unreachable = getattr(folder, "unreachable", [])
    message = f"{folder.describe()}: {what} not found"
    if unreachable:
        message += "; the Hub could not be reached (offline?) and the local cache lacks it"
    message += f"; found instead: {', '.join(found)}" if found else "; the folder has no files"
    return MissingFileError(message + (f" ({hint})" if hint else ""))


# -- which weight files ------------------------------------------------------------------------------


def add_variant(name: str, variant: str | None) -> str:
    """`diffusion_pytorch_model.safetensors` + fp16 -> `diffusion_pytorch_model.fp16.safetensors`.

    The variant goes before the last suffix, as diffusers 0.39 and transformers 4.57 write it, so the
    shard index of a variant is `diffusion_pytorch_model.safetensors.index.fp16.json`.
    """
    if variant is None:
        return name
    stem, suffix = name.rsplit(".", 1)
    return f"{stem}.{variant}.{suffix}"


def _legacy_variant_index(index_name: str, variant: str | None) -> str | None:
    """The variant index name older diffusers wrote: `diffusion_pytorch_model.safetensors.fp16.index.json`."""
    if variant is None:
        return None
    return index_name.replace(".index.json", f".{variant}.index.json")


@dataclass(frozen=True)
class WeightFiles:
    """Candidate file names of one format, in the order they are tried."""

    single: str
    indexes: tuple[str, ...]


def weight_file_names(weights_name: str, variant: str | None, extension: Literal["safetensors", "bin"]):
    stem = "pytorch_model" if extension == "bin" and weights_name == "model" else weights_name
    index = f"{stem}.{extension}.index.json"
    indexes = (add_variant(index, variant), _legacy_variant_index(index, variant))
    return WeightFiles(add_variant(f"{stem}.{extension}", variant), tuple(i for i in indexes if i))


def _find(folder: ModelFolder, names: WeightFiles) -> list[Path] | None:
    """The files of the first candidate present: the single file, or an index's shards (index first)."""
    single = folder.fetch(names.single)
    if single is not None:
        return [single]
    for index_name in names.indexes:
        index = folder.fetch(index_name)
        if index is not None:
            return _shards(folder, index_name, index)
    return None


def _shards(folder: ModelFolder, index_name: str, index: Path) -> list[Path]:
    try:
        shard_names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (ValueError, KeyError, AttributeError) as exc:
        raise LoadingError(f"{folder.describe()}: {index_name} is not a shard index ({exc})") from exc
    shards = []
    for name in shard_names:
        shard = folder.fetch(name)
        if shard is None:
            raise _missing(folder, f"shard {name} (listed in {index_name})")
        shards.append(shard)
    return shards


def weights_source(
    folder: ModelFolder,
    cls: type[PretrainedModule],
    variant: str | None = None,
    allow_pickle: bool = False,
) -> TensorSource:
    """The TensorSource of `cls`'s weights in a model folder: safetensors if present, else .bin only
    with `allow_pickle`. Keys and tensors go through `cls.legacy_key` and `cls.legacy_tensor` (if any)."""
    legacy = (cls.legacy_key, cls.legacy_tensor)
    safe = weight_file_names(cls.weights_name, variant, "safetensors")
    files = _find(folder, safe)
    if files is not None:
        return SafetensorsSource(files, *legacy)
    pickled = weight_file_names(cls.weights_name, variant, "bin")
    if not allow_pickle:
        present = [n for n in (pickled.single, *pickled.indexes) if n in folder.listing()]
        if present:
            raise PickleRefusedError(
                f"{folder.describe()}: only pickled weights {present[0]} found (no {safe.single}); "
                + PICKLE_OPT_IN
            )
        raise _missing(folder, f"weights {safe.single} (or {safe.indexes[0]})", _variant_hint(variant))
    files = _find(folder, pickled)
    if files is None:
        raise _missing(
            folder, f"weights {safe.single}, {safe.indexes[0]} or {pickled.single}", _variant_hint(variant)
        )
    return pickle_source(files, *legacy)


def _variant_hint(variant: str | None) -> str:
    return f"variant={variant!r}: pass variant=None for the default files" if variant else ""


# -- models ------------------------------------------------------------------------------------------


def from_pretrained(
    cls: type[ModelT],
    location: str | os.PathLike,
    *,
    subfolder: str | None = None,
    revision: str | None = None,
    variant: str | None = None,
    options: ModelOptions = DEFAULT_OPTIONS,
    allow_pickle: bool = False,
    token: str | bool | None = None,
    on_host: bool = False,
) -> ModelT:
    """Build `cls` from a diffusers / transformers model folder: local, or a Hub repo id.

    `subfolder` picks a pipeline component (`unet`, `vae`, `text_encoder`, ...); `revision` a Hub branch,
    tag or commit (Hub only); `variant` the `<name>.<variant>.safetensors` files (e.g. "fp16"; they load
    into `options.param_dtype`). From the Hub only config.json and the weight files are downloaded (HF
    cache, HF_ENDPOINT and HF_TOKEN honoured; `token` overrides HF_TOKEN and is never shown).

    Pickled `.bin` weights are read only with `allow_pickle=True` (torch.load, weights_only=True, the
    whole file in memory); without it a folder holding only `.bin` raises PickleRefusedError.
    `on_host` keeps the weights in host memory as numpy arrays (`weights.load_module`).
    """
    folder = open_folder(location, subfolder, revision, token)
    config = _read_config(cls, folder)
    source = weights_source(folder, cls, variant, allow_pickle)
    try:
        return load_module(cls.abstract(config, options), source, cls.ignore_unexpected, on_host)
    finally:
        if isinstance(source, SafetensorsSource):
            source.close()


def abstract_pretrained(
    cls: type[ModelT],
    location: str | os.PathLike,
    *,
    subfolder: str | None = None,
    revision: str | None = None,
    options: ModelOptions = DEFAULT_OPTIONS,
    token: str | bool | None = None,
) -> ModelT:
    """`cls` as the folder's config.json describes it, with ShapeDtypeStructs for weights: only the
    config is read (from the Hub, only it is downloaded), so a model of any size is sized for free."""
    return cls.abstract(_read_config(cls, open_folder(location, subfolder, revision, token)), options)


class PipelineLoad(TypedDict, total=False):
    """How `load_stable_diffusion` and `load_flux` load a pipeline's models: `component_loader`'s
    arguments, all keywords (`revision` and `token` also for its tokenizers and scheduler config)."""

    revision: str | None
    variant: str | None
    options: ModelOptions
    allow_pickle: bool
    token: str | bool | None
    abstract: bool
    on_host: bool


def component_loader(**arguments: Unpack[PipelineLoad]) -> Callable[..., Any]:
    """How a pipeline loads each of its models, called as `load(cls, location, subfolder=...)`:
    `from_pretrained` with the pipeline's arguments, or with `abstract` `abstract_pretrained` (configs
    alone, so `variant`, `allow_pickle` and `on_host` do not apply)."""
    if arguments.pop("abstract", False):
        return partial(abstract_pretrained, **{k: v for k, v in arguments.items() if k in ABSTRACT_LOAD})
    return partial(from_pretrained, **arguments)


# What `abstract_pretrained` takes of a pipeline's loading arguments.
ABSTRACT_LOAD = ("revision", "options", "token")


def _read_config(cls: type[ModelT], folder: ModelFolder) -> Any:
    config_path = folder.fetch(CONFIG_NAME)
    if config_path is None:
        raise _missing(folder, CONFIG_NAME)
    return cls.config_class.from_json_file(config_path)


# -- pipelines ---------------------------------------------------------------------------------------

PIPELINE_COMPONENTS = (
    "unet",
    "transformer",
    "vae",
    "text_encoder",
    "text_encoder_2",
    "tokenizer",
    "tokenizer_2",
    "scheduler",
    "controlnet",
)


@dataclass(frozen=True)
class PipelineIndex:
    """What a pipeline's model_index.json says: its class and, per present component, the class name.

    `components` maps e.g. "unet" -> "UNet2DConditionModel"; components stored as null are absent.
    """

    location: str
    pipeline_class: str
    components: dict[str, str]

    def has(self, component: str) -> bool:
        return component in self.components


def read_model_index(
    location: str | os.PathLike, revision: str | None = None, token: str | bool | None = None
) -> PipelineIndex:
    folder = open_folder(location, None, revision, token)
    path = folder.fetch(MODEL_INDEX_NAME)
    if path is None:
        raise _missing(folder, MODEL_INDEX_NAME, "a pipeline folder has one; a model folder has config.json")
    raw = json.loads(path.read_text())
    components = {
        name: value[1]
        for name, value in raw.items()
        if name in PIPELINE_COMPONENTS and isinstance(value, list) and len(value) == 2 and value[1]
    }
    return PipelineIndex(str(location), raw.get("_class_name", ""), components)


def index_says(
    kind: Callable[[PipelineIndex], bool],
    location: str | os.PathLike,
    revision: str | None = None,
    token: str | bool | None = None,
) -> bool:
    """Whether `location`'s model_index.json is of `kind` (`is_sdxl`, `is_flux`); False without one."""
    try:
        return kind(read_model_index(location, revision=revision, token=token))
    except MissingFileError:
        return False


def is_sdxl(index: PipelineIndex) -> bool:
    """SDXL pipelines have a second text encoder (FLUX.1's second one is T5, beside a transformer)."""
    return index.has("text_encoder_2") and not is_flux(index)


def is_flux(index: PipelineIndex) -> bool:
    """FLUX.1 pipelines (FluxPipeline, FluxControlNetPipeline, ...) by their class name."""
    return index.pipeline_class.startswith("Flux")


# -- single-file (ldm) checkpoints -------------------------------------------------------------------

SDXL_SINGLE_FILE_KEY = "conditioner.embedders.1."  # SDXL's OpenCLIP bigG encoder; SD 1.x/2.x lack it


def convert_single_file(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: str | os.PathLike | None = None,
    *,
    sdxl: bool | None = None,
    allow_pickle: bool = False,
) -> Path:
    """Convert an original single-file checkpoint (ldm layout, e.g. `v1-5-pruned-emaonly.safetensors`)
    to a diffusers pipeline folder at `out_dir` (safetensors), which `from_pretrained(..., subfolder=...)`
    then reads.

    Uses PyTorch diffusers' `StableDiffusionPipeline.from_single_file` (or the XL one), so it needs the
    `train` extra. `config` is a diffusers pipeline folder (or Hub repo id) of the same architecture
    whose component configs and tokenizer files are used; offline it must be a local folder (its
    weights are not needed: model_index.json, each component's config.json, the tokenizer files and
    the scheduler config suffice). Without `config`, diffusers downloads the default one for the
    detected architecture. `sdxl` picks the pipeline; by default it comes from `config`'s
    model_index.json or the checkpoint's keys. `.ckpt` / `.bin` checkpoints are pickles: they need
    `allow_pickle=True` (diffusers loads them with weights_only=True).
    """
    checkpoint = Path(checkpoint).expanduser()
    if not checkpoint.is_file():
        raise MissingFileError(f"{checkpoint}: no such checkpoint file")
    pickled = checkpoint.suffix != ".safetensors"
    if pickled and not allow_pickle:
        raise PickleRefusedError(f"{checkpoint} is a pickled checkpoint; {PICKLE_OPT_IN}")
    if sdxl is None:
        sdxl = _single_file_is_sdxl(checkpoint, config, pickled)
    pipeline_class = _diffusers_pipeline_class(sdxl)
    kwargs: dict[str, Any] = {"config": str(config)} if config is not None else {}
    if config is not None and Path(config).expanduser().is_dir():
        kwargs["local_files_only"] = True
    pipeline = pipeline_class.from_single_file(str(checkpoint), **kwargs)
    out = Path(out_dir)
    pipeline.save_pretrained(out, safe_serialization=True)
    return out


def _single_file_is_sdxl(checkpoint: Path, config: str | os.PathLike | None, pickled: bool) -> bool:
    if config is not None:
        return is_sdxl(read_model_index(config))
    if pickled:
        raise LoadingError(f"{checkpoint}: pass sdxl=True/False or config= (a pickle's keys are not read)")
    with safe_open(checkpoint, framework="numpy") as f:
        return any(key.startswith(SDXL_SINGLE_FILE_KEY) for key in f.keys())  # noqa: SIM118


def _diffusers_pipeline_class(sdxl: bool):
    try:
        import diffusers
        import torch  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError(
            f"convert_single_file needs PyTorch diffusers and torch ({exc.name} is missing): "
            "pip install 'landmark-controlnet[train]'"
        ) from exc
    return diffusers.StableDiffusionXLPipeline if sdxl else diffusers.StableDiffusionPipeline
