"""Source adapters: each turns a dataset layout into a stable sequence of `SourceItem`s."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conditioners.errors import UnknownNameError, UserError

from .base import Source, SourceItem
from .face_synthetics import FaceSyntheticsSource
from .folder import FolderSource
from .hagrid import HagridSource
from .hf_dataset import HFDatasetSource
from .img2dataset import Img2DatasetSource

SOURCES: dict[str, type[Source]] = {
    "folder": FolderSource,
    "hagrid": HagridSource,
    "img2dataset": Img2DatasetSource,
    "hf_dataset": HFDatasetSource,
    "face_synthetics": FaceSyntheticsSource,
}


class SourceNotFoundError(UserError, FileNotFoundError):
    """The `--source` path does not exist."""


def make_source(kind: str, location: str, split: str | None = None, **options: Any) -> Source:
    """The source `kind` reading `location` (a path, or a dataset name for `hf_dataset`).

    `images` is an image folder or img2dataset output, whichever `location` holds.
    """
    if kind == "images":
        kind = "img2dataset" if _holds_img2dataset_shards(Path(location)) else "folder"
    if kind not in SOURCES:
        raise UnknownNameError(f"unknown source type {kind!r}; available: {', '.join(SOURCES)}, images")
    cls = SOURCES[kind]
    if kind in ("hagrid", "hf_dataset"):
        options["split"] = split
    if kind == "hf_dataset":
        return cls(location, **options)
    if not Path(location).exists():
        raise SourceNotFoundError(f"--source {location}: no such file or folder")
    return cls(location, **options)


def _holds_img2dataset_shards(location: Path) -> bool:
    if location.suffix in (".tar", ".parquet"):
        return True
    return location.is_dir() and (any(location.glob("*.tar")) or any(location.glob("*.parquet")))


__all__ = ["SOURCES", "Source", "SourceItem", "make_source"]
