"""The data model every conditioner returns: a `Detection` holding `Instance`s.

Points are stored in the pixels of the (EXIF-oriented) input image, so a detection can be
re-drawn at any size without running the detector again.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from .errors import OptionError

_MIRRORED_KIND = {"left_hand": "right_hand", "right_hand": "left_hand"}


class SkipReason(StrEnum):
    """Why an image yields no usable conditioning; builders count these."""

    UNREADABLE = "unreadable"
    NO_DETECTION = "no_detection"
    IMAGE_TOO_SMALL = "image_too_small"
    INSTANCE_TOO_SMALL = "instance_too_small"
    TOO_FEW_KEYPOINTS = "too_few_keypoints"
    TOO_MANY_INSTANCES = "too_many_instances"
    MISSING_REQUIRED_PART = "missing_required_part"
    EMPTY_DRAWING = "empty_drawing"
    DETECTOR_ERROR = "detector_error"


@dataclass(frozen=True)
class HintBox:
    """Where the caller knows an instance to be (a HaGRID hand box): x0, y0, x1, y1 in the pixels of
    the upright input image, with the source's label. Conditioners that search regions (the
    MediaPipe hand conditioners) look there closely; the others ignore hints."""

    x0: float
    y0: float
    x1: float
    y1: float
    label: str = ""

    @classmethod
    def from_normalised_xywh(cls, box: Any, size: tuple[int, int], label: str = "") -> HintBox:
        """From a normalised [x, y, w, h] (HaGRID's `bboxes`) in an image of `size` (width, height)."""
        x, y, w, h = (float(v) for v in box)
        return cls(x * size[0], y * size[1], (x + w) * size[0], (y + h) * size[1], label)

    def problem(self, size: tuple[int, int]) -> str | None:
        """Why this box cannot be searched in an image of `size` (NaN, empty, outside), or None."""
        corners = (self.x0, self.y0, self.x1, self.y1)
        if not all(math.isfinite(v) for v in corners):
            return "not a finite box"
        if self.x1 - self.x0 < 1 or self.y1 - self.y0 < 1:
            return "empty box"
        if self.x1 <= 0 or self.y1 <= 0 or self.x0 >= size[0] or self.y0 >= size[1]:
            return f"outside the {size[0]}x{size[1]} image"
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"box": [self.x0, self.y0, self.x1, self.y1], "label": self.label}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HintBox:
        return cls(*(float(v) for v in data["box"]), label=str(data.get("label", "")))


@dataclass
class Instance:
    """One detected hand, face, body or animal.

    `points` is an (N, 4) float64 array of x, y (input pixels), z (the detector's relative
    depth) and visibility. Visibility is the smaller of the detector's visibility and presence
    scores, and NaN where the detector gives neither; NaN counts as visible.
    """

    kind: str
    points: np.ndarray
    score: float | None = None
    # Facts about this instance beyond its points, e.g. which hand-search pass found it (`found_by`).
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        points = np.asarray(self.points, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] not in (2, 3, 4):
            raise ValueError(f"points must be (N, 2..4), got shape {points.shape}")
        if points.shape[1] < 4:  # missing z / visibility columns
            pad = np.full((len(points), 4 - points.shape[1]), np.nan)
            points = np.concatenate([points, pad], axis=1)
        self.points = points

    @property
    def xy(self) -> np.ndarray:
        return self.points[:, :2]

    @property
    def visibility(self) -> np.ndarray:
        return self.points[:, 3]

    def visible_mask(self, threshold: float = 0.5) -> np.ndarray:
        """Points the detector considers visible (NaN visibility counts as visible)."""
        vis = self.visibility
        return np.isnan(vis) | (vis >= threshold)

    def bbox(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) around the finite points."""
        xy = self.xy[np.isfinite(self.xy).all(axis=1)]
        if len(xy) == 0:
            return (0.0, 0.0, 0.0, 0.0)
        (x0, y0), (x1, y1) = xy.min(axis=0), xy.max(axis=0)
        return (float(x0), float(y0), float(x1), float(y1))

    def size(self) -> float:
        """min(width, height) of the landmark box, in pixels."""
        x0, y0, x1, y1 = self.bbox()
        return min(x1 - x0, y1 - y0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "score": _json_float(self.score),
            "points": [[_json_float(v) for v in row] for row in self.points.tolist()],
            **({"extra": self.extra} if self.extra else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Instance:
        points = np.array(
            [[np.nan if v is None else v for v in row] for row in data["points"]], dtype=np.float64
        ).reshape(-1, len(data["points"][0]) if data["points"] else 4)
        return cls(kind=data["kind"], points=points, score=data.get("score"), extra=data.get("extra", {}))


@dataclass
class Detection:
    """What a conditioner found in one image."""

    conditioner: str
    width: int
    height: int
    instances: list[Instance] = field(default_factory=list)
    detector: str = ""
    detector_version: str = ""
    skipped: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Why, in words, for skips that need it (`unreadable`, `detector_error`): the file's error.
    skip_message: str | None = None

    @property
    def size(self) -> tuple[int, int]:
        return (self.width, self.height)

    def of_kind(self, kind: str) -> list[Instance]:
        return [inst for inst in self.instances if inst.kind == kind]

    def with_instances(self, instances: list[Instance], skipped: str | None = None) -> Detection:
        return replace(self, instances=instances, skipped=skipped)

    def framed(self, framing: Any) -> Detection:
        """The detection of the photo after `conditioners.images.resize_and_crop(photo, framing)`."""
        left, top = framing.offset
        return self.transformed(framing.scale, (-left, -top), framing.size)

    def transformed(
        self, scale: tuple[float, float], offset: tuple[float, float], size: tuple[int, int]
    ) -> Detection:
        """Points mapped by x' = x * sx + ox (used when a builder resizes and crops the photo)."""
        sx, sy = scale
        ox, oy = offset
        moved = []
        for inst in self.instances:
            points = inst.points.copy()
            points[:, 0] = points[:, 0] * sx + ox
            points[:, 1] = points[:, 1] * sy + oy
            moved.append(replace(inst, points=points))
        return replace(self, instances=moved, width=int(size[0]), height=int(size[1]))

    def mirrored(self) -> Detection:
        """The detection of the horizontally flipped image: x mirrored, left and right swapped."""
        flipped = []
        for inst in self.instances:
            points = inst.points.copy()
            points[:, 0] = self.width - points[:, 0]
            flipped.append(replace(inst, kind=_MIRRORED_KIND.get(inst.kind, inst.kind), points=points))
        return replace(
            self, instances=flipped, extra={**self.extra, "mirrored": not self.extra.get("mirrored")}
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "conditioner": self.conditioner,
            "width": self.width,
            "height": self.height,
            "instances": [inst.to_dict() for inst in self.instances],
            "skipped": self.skipped,
            **({"skip_message": self.skip_message} if self.skip_message else {}),
            "detector": self.detector,
            "detector_version": self.detector_version,
            **({"extra": self.extra} if self.extra else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Detection:
        return cls(
            conditioner=data["conditioner"],
            width=int(data["width"]),
            height=int(data["height"]),
            instances=[Instance.from_dict(inst) for inst in data.get("instances", [])],
            detector=data.get("detector", ""),
            detector_version=data.get("detector_version", ""),
            skipped=data.get("skipped"),
            extra=data.get("extra", {}),
            skip_message=data.get("skip_message"),
        )

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str | bytes) -> Detection:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Detection:
        """A stored detection JSON; a file that is not one is a one-line `OptionError` naming it."""
        try:
            return cls.from_json(Path(path).read_text())
        except (ValueError, KeyError, TypeError) as exc:  # not JSON, or JSON of something else
            raise OptionError(
                f"{path}: not a detection JSON of the condition command ({type(exc).__name__}: {exc})"
            ) from None


def _json_float(value: float | None) -> float | None:
    """JSON has no NaN: missing values are written as null."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)
