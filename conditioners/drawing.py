"""Drawing primitives shared by every conditioner.

Everything is drawn into a palette-indexed canvas: one uint8 index per pixel plus a short
palette. OpenCV's default (non anti-aliased) lines and circles only ever *set* pixels, so the
indexed drawing is pixel-for-pixel the RGB drawing, and a palette PNG encodes ~10x faster than
an RGB one (DESIGN section 7).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from .images import encode_png

Color = tuple[int, int, int]
Edge = tuple[int, int]
BLACK: Color = (0, 0, 0)


class Canvas:
    """A black image of `size` (width, height) drawn in palette indices."""

    def __init__(self, size: tuple[int, int], reverse_channels: bool = False):
        width, height = size
        self.size = (int(width), int(height))
        self.indices = np.zeros((self.size[1], self.size[0]), dtype=np.uint8)
        self.palette: list[Color] = [BLACK]
        self._indices: dict[Color, int] = {BLACK: 0}
        # Some specs are written in BGR and flipped at the end (LAION-Face): store them flipped.
        self.reverse_channels = reverse_channels

    def index(self, color: Color) -> int:
        """The palette index of `color`, added on first use."""
        index = self._indices.get(color)
        if index is None:
            if len(self.palette) == 256:
                raise ValueError("a canvas holds at most 256 colours")
            stored = tuple(int(c) for c in color)
            self.palette.append(stored[::-1] if self.reverse_channels else stored)
            index = self._indices[color] = len(self.palette) - 1
        return index

    def line(self, start: tuple[int, int], end: tuple[int, int], color: Color, thickness: int) -> None:
        cv2.line(self.indices, start, end, self.index(color), thickness)

    def circle(self, center: tuple[int, int], radius: int, color: Color, thickness: int) -> None:
        cv2.circle(self.indices, center, radius, self.index(color), thickness)

    def polyline(self, points: np.ndarray, color: Color, thickness: int, closed: bool = False) -> None:
        pts = np.round(points).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(self.indices, [pts], closed, self.index(color), thickness)

    def fill_polygon(self, points: np.ndarray, color: Color) -> None:
        pts = np.round(points).astype(np.int32).reshape(-1, 1, 2)
        cv2.fillPoly(self.indices, [pts], self.index(color))

    def paint(self, rows: slice, cols: slice, color: Color) -> None:
        """Numpy-slice assignment, with numpy's slicing semantics (used by the pupil squares)."""
        self.indices[rows, cols] = self.index(color)

    def paint_levels(self, levels: np.ndarray) -> None:
        """Grey levels (h, w) uint8 onto the canvas; 0 leaves a pixel as it is (depth maps)."""
        rows, cols = np.flatnonzero(levels.any(axis=1)), np.flatnonzero(levels.any(axis=0))
        if not len(rows):
            return
        window = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))  # only where drawn
        drawn = levels[window]
        lookup = np.zeros(256, np.uint8)
        for level in np.flatnonzero(np.bincount(drawn.ravel(), minlength=256)[1:]) + 1:
            lookup[level] = self.index((int(level),) * 3)
        self.indices[window] = np.where(drawn > 0, lookup[drawn], self.indices[window])

    def is_empty(self) -> bool:
        return not self.indices.any()

    def palette_array(self) -> np.ndarray:
        return np.array(self.palette, dtype=np.uint8)

    def to_array(self) -> np.ndarray:
        """(h, w, 3) uint8 RGB."""
        return self.palette_array()[self.indices]

    def to_image(self) -> Image.Image:
        """A palette-mode PIL image (convert("RGB") gives `to_array()`)."""
        image = Image.fromarray(self.indices, "P")
        image.putpalette(self.palette_array().ravel().tolist())
        return image

    def to_png(self, compress_level: int = 1) -> bytes:
        return encode_png(self.to_image(), compress_level)


@dataclass(frozen=True)
class DrawingSpec:
    """Colour, line thickness and circle radius; mirrors MediaPipe's DrawingSpec defaults."""

    color: Color = (224, 224, 224)
    thickness: int = 2
    circle_radius: int = 2


# MediaPipe's drawing_utils constants: landmark borders are always this colour.
LANDMARK_BORDER: Color = (224, 224, 224)
RED: Color = (0, 0, 255)
VISIBILITY_THRESHOLD = 0.5


def to_pixels(normalized: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """MediaPipe's normalised -> pixel rule: floor(v * size), clamped, NaN where outside [0, 1]."""
    size_arr = np.array(size, dtype=np.float64)
    inside = (normalized >= 0) & ((normalized < 1) | np.isclose(normalized, 1.0, rtol=1e-9, atol=0.0))
    inside = inside.all(axis=1)
    pixels = np.minimum(np.floor(normalized * size_arr), size_arr - 1)
    pixels[~inside] = np.nan
    return pixels


def scale_to_canvas(points: np.ndarray, source_size: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """(N, 2) float pixels on a canvas of `size` for points given in an image of `source_size`."""
    return points[:, :2] * (np.asarray(size, np.float64) / np.asarray(source_size, np.float64))


def landmark_pixels(
    points: np.ndarray,
    source_size: tuple[int, int],
    size: tuple[int, int],
    threshold: float = VISIBILITY_THRESHOLD,
) -> dict[int, tuple[int, int]]:
    """Index -> pixel of every drawable landmark: visible and inside the image."""
    normalized = points[:, :2] / np.array(source_size, dtype=np.float64)
    pixels = to_pixels(normalized, size)
    visibility = points[:, 3]
    drawable = np.flatnonzero(np.isfinite(pixels).all(axis=1) & ~(visibility < threshold))
    return dict(zip(drawable.tolist(), map(tuple, pixels[drawable].astype(np.int64).tolist()), strict=True))


def draw_landmarks(
    canvas: Canvas,
    pixels: Mapping[int, tuple[int, int]],
    connections: Iterable[Edge],
    landmark_spec: DrawingSpec | Mapping[int, DrawingSpec] | None,
    connection_spec: DrawingSpec | Mapping[Edge, DrawingSpec],
) -> None:
    """Connections, then bordered landmark dots: the same cv2 calls, in the same order, as MediaPipe."""
    for edge in connections:
        start, end = edge
        if start in pixels and end in pixels:
            spec = connection_spec[edge] if isinstance(connection_spec, Mapping) else connection_spec
            canvas.line(pixels[start], pixels[end], spec.color, spec.thickness)
    if not landmark_spec:
        return
    for idx, center in pixels.items():
        spec = landmark_spec[idx] if isinstance(landmark_spec, Mapping) else landmark_spec
        border_radius = max(spec.circle_radius + 1, int(spec.circle_radius * 1.2))
        canvas.circle(center, border_radius, LANDMARK_BORDER, spec.thickness)
        canvas.circle(center, spec.circle_radius, spec.color, spec.thickness)


def draw_instance(
    canvas: Canvas,
    points: np.ndarray,
    source_size: tuple[int, int],
    connections: Iterable[Edge],
    landmark_spec: DrawingSpec | Mapping[int, DrawingSpec] | None,
    connection_spec: DrawingSpec | Mapping[Edge, DrawingSpec],
) -> None:
    """`draw_landmarks` for points given in the pixels of an image of `source_size`."""
    pixels = landmark_pixels(points, source_size, canvas.size)
    draw_landmarks(canvas, pixels, connections, landmark_spec, connection_spec)
