"""Dataset builders: source -> conditioner -> filters -> captioner -> Parquet shards + dataset card.

Each builder is a folder `builders/<name>/` with a `recipe.toml` (and optionally a
`card_template.md`); a build writes `data/{split}-NNNNN.parquet`, `README.md` (the dataset card)
and `preview.png` into it, so that `datasets.load_dataset("./builders/<name>")` opens it and the
folder can be uploaded to the Hub as it is.
"""

from .engine import BuildReport, BuildSettings, build, summarize
from .recipe import Recipe, builder_names, resolve_builder
from .sources import SOURCES, Source, SourceItem, make_source

__all__ = [
    "SOURCES",
    "BuildReport",
    "BuildSettings",
    "Recipe",
    "Source",
    "SourceItem",
    "build",
    "builder_names",
    "make_source",
    "resolve_builder",
    "summarize",
]
