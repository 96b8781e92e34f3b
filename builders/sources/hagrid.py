"""HaGRID (hand gesture recognition image dataset), v1 and v2 layouts.

v1: `train_val_{gesture}/{image_id}.jpg` + `ann_train_val/{gesture}.json`
v2: `hagrid_dataset/{gesture}/{image_id}.jpg` + `hagrid_annotations/{split}/{gesture}.json`

Annotation records are keyed by image id and hold `bboxes` (normalised x, y, w, h), `labels`,
`united_bbox`, `united_label`, `user_id`, `hand_landmarks` and `meta` (v2), or `leading_hand` (v1).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets

from .base import STRING, Source, SourceItem

V1_ANNOTATIONS = "ann_train_val"
V2_IMAGES = "hagrid_dataset"
V2_ANNOTATIONS = "hagrid_annotations"
SUFFIXES = (".jpg", ".jpeg", ".png")


class HagridSource(Source):
    """Rows carry `gesture` (the class folder), `labels` (per box) and `user_id`."""

    extra_features = {
        "gesture": STRING,
        "labels": datasets.Sequence(STRING),
        "user_id": STRING,
    }

    def __init__(self, root: str | Path, split: str | None = None, gestures: list[str] | None = None):
        self.root = Path(root)
        self.split = split or "train"
        self.gestures = gestures
        self.layout = self._detect_layout()

    def _detect_layout(self) -> str:
        if (self.root / V2_ANNOTATIONS).is_dir():
            return "v2"
        if (self.root / V1_ANNOTATIONS).is_dir():
            return "v1"
        raise FileNotFoundError(
            f"{self.root} is not a HaGRID folder: "
            f"expected `{V1_ANNOTATIONS}/` (v1) or `{V2_ANNOTATIONS}/` (v2)"
        )

    def _annotation_files(self) -> list[Path]:
        folder = self.root / (V1_ANNOTATIONS if self.layout == "v1" else f"{V2_ANNOTATIONS}/{self.split}")
        if not folder.is_dir():
            raise FileNotFoundError(f"HaGRID annotations not found: {folder}")
        files = sorted(folder.glob("*.json"))
        if self.gestures:
            files = [f for f in files if f.stem in self.gestures]
        return files

    def _image_path(self, gesture: str, image_id: str) -> Path | None:
        folder = self.root / (f"train_val_{gesture}" if self.layout == "v1" else f"{V2_IMAGES}/{gesture}")
        for suffix in SUFFIXES:
            path = folder / f"{image_id}{suffix}"
            if path.exists():
                return path
        return None

    def __iter__(self) -> Iterator[SourceItem]:
        for annotation_file in self._annotation_files():
            gesture = annotation_file.stem
            records: dict[str, dict[str, Any]] = json.loads(annotation_file.read_text())
            for image_id in sorted(records):
                path = self._image_path(gesture, image_id)
                if path is None:
                    continue  # annotations of images not downloaded (subsets are common)
                record = records[image_id]
                yield SourceItem(
                    source_id=f"{gesture}/{image_id}",
                    image=str(path),
                    extra={
                        "gesture": gesture,
                        "labels": [str(label) for label in record.get("labels", [])],
                        "user_id": str(record.get("user_id", "")),
                    },
                )

    def describe(self) -> str:
        return f"HaGRID ({self.layout} layout, split `{self.split}`)"
