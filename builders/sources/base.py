"""What every source yields: a stable id, an image (a path or bytes), a caption, extra columns."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from conditioners.images import IMAGE_SUFFIXES


@dataclass
class SourceItem:
    """One source photo. `image` is a path (read by the worker that needs it) or encoded bytes."""

    source_id: str
    image: str | bytes
    caption: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.image if isinstance(self.image, str) else self.source_id

    def read_bytes(self) -> bytes:
        if isinstance(self.image, bytes):
            return self.image
        with open(self.image, "rb") as f:
            return f.read()


class Source(ABC):
    """A deterministic, restartable sequence of items (same order on every run: resume needs it)."""

    #: columns the source adds to every row, as `datasets` features
    extra_features: dict[str, Any] = {}

    @abstractmethod
    def __iter__(self) -> Iterator[SourceItem]: ...

    def describe(self) -> str:
        """A short human description for the dataset card."""
        return type(self).__name__

    def features(self) -> dict[str, Any]:
        return dict(self.extra_features)


def image_files(root: Path) -> list[Path]:
    """Image files below `root`, sorted by relative path (stable across runs and machines)."""
    found = []
    for directory, _, files in os.walk(root):
        for name in files:
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                found.append(Path(directory) / name)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


STRING = datasets.Value("string")
