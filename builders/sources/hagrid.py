"""HaGRID (hand gesture recognition image dataset), v1 and v2 layouts.

v1: `train_val_{gesture}/{image_id}.jpg` + `ann_train_val/{gesture}.json`
v2: `hagrid_dataset/{gesture}/{image_id}.jpg` + `hagrid_annotations/{split}/{gesture}.json`

Annotation records are keyed by image id and hold `bboxes` (normalised x, y, w, h), `labels`,
`united_bbox`, `united_label`, `user_id`, `hand_landmarks` and `meta` (v2), or `leading_hand` (v1).

Every box, `no_gesture` hands included, becomes a hint (`SourceItem.hints`, with its label) in the
pixels of the upright photo, whose size is read from the file's header: the hand conditioners search
those boxes closely, so that the small hands of these Full HD photos are not missed.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets

from conditioners.detection import HintBox
from conditioners.images import read_image_size

from .base import STRING, Source, SourceItem

V1_ANNOTATIONS = "ann_train_val"
V2_IMAGES = "hagrid_dataset"
V2_ANNOTATIONS = "hagrid_annotations"
SUFFIXES = (".jpg", ".jpeg", ".png")
# A box that is not four finite numbers, in the `bboxes` column (which stays aligned with `labels`).
MALFORMED_BOX = [math.nan] * 4
log = logging.getLogger(__name__)


class HagridSource(Source):
    """Rows carry `gesture` (the class folder), `labels` and `bboxes` (per box: normalised x, y, w, h
    of the source photo, NaN for a malformed one) and `user_id`. Items carry the boxes as hints."""

    extra_features = {
        "gesture": STRING,
        "labels": datasets.Sequence(STRING),
        "bboxes": datasets.Sequence(datasets.Sequence(datasets.Value("float32"), length=4)),
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
                labels = [str(label) for label in _list(record.get("labels"))]
                boxes = [_box(box) for box in _list(record.get("bboxes"))]
                yield SourceItem(
                    source_id=f"{gesture}/{image_id}",
                    image=str(path),
                    extra={
                        "gesture": gesture,
                        "labels": labels,
                        "bboxes": [box or MALFORMED_BOX for box in boxes],
                        "user_id": str(record.get("user_id", "")),
                    },
                    hints=_hints(path, boxes, labels),
                )

    def describe(self) -> str:
        return f"HaGRID ({self.layout} layout, split `{self.split}`)"


def _list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else []


def _box(box: Any) -> list[float] | None:
    """A normalised [x, y, w, h] as four finite floats, or None when it is not one."""
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
        return None
    values = [float(v) for v in box]
    return values if all(math.isfinite(v) for v in values) else None


def _hints(path: Path, boxes: list[list[float] | None], labels: list[str]) -> list[HintBox]:
    """The well-formed `boxes` in pixels of the upright photo at `path` (malformed ones left out)."""
    if not any(boxes):
        return []
    try:
        size = read_image_size(str(path))  # the header only
    except Exception as exc:  # the worker reports the photo as unreadable
        log.warning("%s: no hand hints (cannot read its size: %s)", path, exc)
        return []
    if malformed := sum(box is None for box in boxes):
        log.warning("%s: %d malformed hand box(es) left out of the hints", path, malformed)
    return [
        HintBox.from_normalised_xywh(box, size, labels[i] if i < len(labels) else "")
        for i, box in enumerate(boxes)
        if box is not None
    ]
