"""Orchestration behind `landmark-controlnet build` and `show`."""

from __future__ import annotations

import os
from pathlib import Path

from .card import write_card
from .engine import BuildReport, BuildSettings, build, held_out_from, summarize, written_features
from .recipe import CARD_TEMPLATE_FILE, RECIPE_FILE, Recipe, default_output, resolve_builder
from .sources import make_source
from .storage import Folder
from .worker import EMPTY_DIR, HELD_OUT_SPLIT


def prepare_output(recipe_folder: Path, output: str | Path | None) -> Folder:
    """The folder (local or fsspec URL) to build into, by default `default_output(recipe_folder)`;
    one that is not the recipe folder gets the recipe too, so it stays self-describing."""
    folder = Folder(output or default_output(recipe_folder))
    if folder.is_local:  # reports give this path: absolute and without `..`
        folder = Folder(os.path.normpath(folder.root))
        if Path(folder.root).resolve() == recipe_folder.resolve():
            return folder
    folder.makedirs()
    for name in (RECIPE_FILE, CARD_TEMPLATE_FILE):
        if (recipe_folder / name).exists():
            folder.write_bytes(name, (recipe_folder / name).read_bytes())
    return folder


def run_build(
    name_or_dir: str,
    source_location: str,
    settings: BuildSettings,
    output: str | Path | None = None,
    engine: str = "local",
    overwrite: bool = False,
    progress: bool = True,
) -> BuildReport:
    recipe_folder = resolve_builder(name_or_dir)
    recipe = Recipe.load(recipe_folder)
    output = prepare_output(recipe_folder, output)
    if overwrite:
        if held_out_from(output) == settings.split:
            discard_split(output, HELD_OUT_SPLIT)
        discard_split(output, settings.split)
    source = make_source(recipe.source_type, source_location, settings.split, **recipe.source_options)
    if engine == "ray":
        from .ray_engine import build_with_ray

        report = build_with_ray(recipe, source, output, settings)
    elif engine == "local":
        report = build(recipe, source, output, settings, progress=progress)
    else:
        raise ValueError(f"unknown engine {engine!r}: local or ray")
    splits = sorted({name.rsplit("-", 1)[0] for name in output.sub("data").names("*-*.parquet")})
    reports = [report] + [summarize(output, s) for s in splits if s != settings.split]
    features = written_features(output.sub("data"), source, recipe)  # as the shards hold them
    write_card(output, recipe, source.describe(), features, reports)
    return report


def discard_split(output: Folder, split: str) -> None:
    data = output.sub("data")
    for name in [*data.names(f"{split}-*.parquet"), *data.names(f"{EMPTY_DIR}/{split}-*")]:
        data.remove(name)
