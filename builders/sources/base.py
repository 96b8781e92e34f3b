"""What every source yields: a stable id, an image (a path or bytes), a caption, extra columns and
hint boxes (where the source knows a hand to be)."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from conditioners.detection import HintBox
from conditioners.images import IMAGE_SUFFIXES


@dataclass
class SourceItem:
    """One source photo. `image` is a path (read by the worker that needs it) or encoded bytes.

    `hints` are boxes where the source knows an instance to be (HaGRID's hand boxes, with their
    labels), in pixels of the upright source photo at full size, whatever the recipe's framing: the
    worker passes them to the conditioner, which maps them into the picture it sees. Conditioners
    that search regions (the MediaPipe hand conditioners) look there closely; a box they cannot use
    (NaN, empty, outside the photo) is ignored with a warning, so a source need not check them."""

    source_id: str
    image: str | bytes
    caption: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    hints: list[HintBox] = field(default_factory=list)

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
