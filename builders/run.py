"""Orchestration behind `landmark-controlnet build` and `show`."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from .card import write_card
from .engine import BuildReport, BuildSettings, build, summarize
from .recipe import CARD_TEMPLATE_FILE, RECIPE_FILE, Recipe, resolve_builder
from .sources import make_source
from .worker import EMPTY_DIR, dataset_features


class DatasetNotBuiltError(RuntimeError):
    """The builder folder has no data yet; the message says which command builds it."""


def prepare_output(recipe_folder: Path, output: Path | None) -> Path:
    """The folder to build into; a separate --output gets the recipe too, so it stays self-describing."""
    if output is None or output.resolve() == recipe_folder.resolve():
        return recipe_folder
    output.mkdir(parents=True, exist_ok=True)
    for name in (RECIPE_FILE, CARD_TEMPLATE_FILE):
        if (recipe_folder / name).exists():
            shutil.copy2(recipe_folder / name, output / name)
    return output


def run_build(
    name_or_dir: str,
    source_location: str,
    settings: BuildSettings,
    output: Path | None = None,
    engine: str = "local",
    overwrite: bool = False,
    progress: bool = True,
) -> BuildReport:
    recipe_folder = resolve_builder(name_or_dir)
    output = prepare_output(recipe_folder, output)
    recipe = Recipe.load(output)
    if overwrite:
        discard_split(output, settings.split)
    source = make_source(recipe.source_type, source_location, settings.split, **recipe.source_options)
    if engine == "ray":
        from .ray_engine import build_with_ray

        report = build_with_ray(recipe, source, output, settings)
    elif engine == "local":
        report = build(recipe, source, output, settings, progress=progress)
    else:
        raise ValueError(f"unknown engine {engine!r}: local or ray")
    splits = sorted({p.name.rsplit("-", 1)[0] for p in (output / "data").glob("*-*.parquet")})
    reports = [report] + [summarize(output, s) for s in splits if s != settings.split]
    write_card(output, recipe, source.describe(), dataset_features(source), reports)
    return report


def discard_split(output: Path, split: str) -> None:
    for record in [
        *(output / "data").glob(f"{split}-*.parquet"),
        *(output / "data" / EMPTY_DIR).glob(f"{split}-*"),
    ]:
        record.unlink()


def load_builder(name_or_dir: str, split: str = "train", **kwargs: Any):
    """`datasets.load_dataset` on a builder folder, with a useful sentence when it is not built yet."""
    import datasets

    folder = resolve_builder(name_or_dir)
    if not any((folder / "data").glob("*.parquet")):
        raise DatasetNotBuiltError(
            f"{folder} has no data yet. Build it first: "
            f"landmark-controlnet build {name_or_dir} --source PATH_OR_DATASET"
        )
    return datasets.load_dataset(str(folder), split=split, **kwargs)
