"""`hand_depth_mask`: HandRefiner-style repair inputs, a hand depth map and an inpainting mask.

For every hand MediaPipe finds, a plausible hand is built from its 21 landmarks and their
relative z: tapered capsules along the bones (their round caps are the joints' spheres)
and a slab over the palm.
It is rendered with a z-buffer and shaded nearest = bright, each hand normalised to its own
depth range; the background is black. The mask is a box around each hand, padded by
max(`min_padding` px, `padding` x the box's longer side) and clamped to the image, unioned over
the hands; `tight_mask=True` dilates the rendered hand's silhouette by that padding instead.

Both images are pure functions of the stored detection (`draw` and `render_extra("mask")`), so
they can be re-drawn at any size, mirrored or not, without the detector.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import cv2
import numpy as np

from .detection import Detection, Instance
from .drawing import Canvas
from .mediapipe_hands import HAND_CONNECTIONS, HAND_KINDS, StandardHandConditioner

# Shading: the nearest point of a hand is NEAR_LEVEL, its farthest FAR_LEVEL, background 0.
NEAR_LEVEL = 255
FAR_LEVEL = 64
# Radii as fractions of the hand's palm length (wrist to middle-finger knuckle, in 3D).
JOINT_RADIUS = np.array(
    [
        0.16,  # wrist
        0.14, 0.12, 0.105, 0.095,  # thumb: CMC, MCP, IP, tip
        0.11, 0.10, 0.09, 0.08,  # index: MCP, PIP, DIP, tip
        0.115, 0.105, 0.095, 0.085,  # middle
        0.11, 0.10, 0.09, 0.08,  # ring
        0.10, 0.085, 0.075, 0.07,  # pinky
    ]
)  # fmt: skip
PALM_TRIANGLES = ((0, 1, 5), (0, 5, 9), (0, 9, 13), (0, 13, 17), (1, 2, 5))
PALM_HALF_THICKNESS = 0.1
MASK_ON = 255


@dataclass(frozen=True)
class MaskSettings:
    """How the inpainting mask is drawn; stored in the detection so re-drawing gives the same mask."""

    padding: float = 0.15  # x the longer side of the hand's landmark box
    min_padding: float = 30.0  # input pixels
    tight: bool = False  # dilated hand silhouette instead of a box
    small_hand: float = 60.0  # hands whose box fits in small_hand x small_hand px are flagged

    @classmethod
    def of(cls, detection: Detection) -> MaskSettings:
        return cls(**detection.extra.get("mask", {}))

    def pad(self, box: tuple[float, float, float, float]) -> float:
        x0, y0, x1, y1 = box
        return max(self.min_padding, self.padding * max(x1 - x0, y1 - y0))


# -- depth ------------------------------------------------------------------------------------
def hand_points_3d(points: np.ndarray, source_size: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """(21, 3) canvas pixels; MediaPipe's z is in units of the image width, smaller = nearer."""
    scale = np.asarray(size, np.float64) / np.asarray(source_size, np.float64)
    xyz = np.empty((len(points), 3))
    xyz[:, :2] = points[:, :2] * scale
    xyz[:, 2] = np.nan_to_num(points[:, 2]) * size[0]
    return xyz


def palm_length(xyz: np.ndarray) -> float:
    """Wrist to middle-finger knuckle in 3D: the hand's scale, whatever its pose."""
    length = float(np.linalg.norm(xyz[9] - xyz[0]))
    return length if np.isfinite(length) and length > 0 else 1.0


def hand_depth(xyz: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) distance to the nearest hand surface, +inf off the hand (orthographic, along z)."""
    depth = np.full((size[1], size[0]), np.inf)
    radius = JOINT_RADIUS * palm_length(xyz)
    for start, end in HAND_CONNECTIONS:  # every joint ends a bone, so its sphere is a capsule's cap
        _capsule(depth, xyz[start], xyz[end], radius[start], radius[end])
    for triangle in PALM_TRIANGLES:
        _triangle(depth, xyz[list(triangle)], PALM_HALF_THICKNESS * palm_length(xyz))
    return depth


def _window(depth: np.ndarray, low: np.ndarray, high: np.ndarray):
    """The pixel grid of depth[y0:y1, x0:x1] covering [low, high], or None when off-image."""
    height, width = depth.shape
    x0, y0 = np.maximum(np.floor(low).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(high).astype(int) + 1, (width, height))
    if x0 >= x1 or y0 >= y1:
        return None
    # A row and a column that broadcast to the window: a quarter of the work of a full grid.
    xs = np.arange(x0, x1, dtype=np.float64)[None, :]
    ys = np.arange(y0, y1, dtype=np.float64)[:, None]
    return (slice(y0, y1), slice(x0, x1)), xs, ys


def _capsule(depth: np.ndarray, a: np.ndarray, b: np.ndarray, radius_a: float, radius_b: float) -> None:
    """A tapered capsule from a to b: the near surface over the nearest point of the axis."""
    reach = max(radius_a, radius_b)
    found = _window(depth, np.minimum(a[:2], b[:2]) - reach, np.maximum(a[:2], b[:2]) + reach)
    if found is None:
        return
    region, xs, ys = found
    axis = b[:2] - a[:2]
    length2 = float(axis @ axis)
    if length2 == 0:
        t = np.zeros((ys.shape[0], xs.shape[1]))
    else:
        t = np.clip(((xs - a[0]) * axis[0] + (ys - a[1]) * axis[1]) / length2, 0.0, 1.0)
    dist2 = (xs - (a[0] + t * axis[0])) ** 2 + (ys - (a[1] + t * axis[1])) ** 2
    radius = radius_a + t * (radius_b - radius_a)
    surface = a[2] + t * (b[2] - a[2]) - np.sqrt(np.maximum(radius**2 - dist2, 0.0))
    np.minimum(depth[region], np.where(dist2 <= radius**2, surface, np.inf), out=depth[region])


def _triangle(depth: np.ndarray, corners: np.ndarray, half_thickness: float) -> None:
    """A flat slab through three joints, its near face `half_thickness` in front of them."""
    found = _window(depth, corners[:, :2].min(axis=0), corners[:, :2].max(axis=0))
    (ax, ay, az), (bx, by, bz), (cx, cy, cz) = corners
    area = (bx - ax) * (cy - ay) - (cx - ax) * (by - ay)
    if found is None or abs(area) < 1e-9:
        return
    region, xs, ys = found
    w_b = ((xs - ax) * (cy - ay) - (cx - ax) * (ys - ay)) / area
    w_c = ((bx - ax) * (ys - ay) - (xs - ax) * (by - ay)) / area
    w_a = 1.0 - w_b - w_c
    inside = (w_a >= 0) & (w_b >= 0) & (w_c >= 0)
    surface = w_a * az + w_b * bz + w_c * cz - half_thickness
    np.minimum(depth[region], np.where(inside, surface, np.inf), out=depth[region])


def shade(depth: np.ndarray) -> np.ndarray:
    """Depth -> uint8 levels: nearest NEAR_LEVEL, farthest FAR_LEVEL, off-hand 0."""
    on_hand = np.isfinite(depth)
    levels = np.zeros(depth.shape, np.uint8)
    if not on_hand.any():
        return levels
    near, far = depth[on_hand].min(), depth[on_hand].max()
    nearness = (far - depth[on_hand]) / (far - near) if far > near else 1.0
    levels[on_hand] = np.round(FAR_LEVEL + (NEAR_LEVEL - FAR_LEVEL) * nearness).astype(np.uint8)
    return levels


def hands(detection: Detection) -> list[Instance]:
    return [instance for instance in detection.instances if instance.kind in HAND_KINDS]


Window = tuple[slice, slice]


def hand_levels(detection: Detection, instance: Instance, size: tuple[int, int]) -> tuple[Window, np.ndarray]:
    """One hand's shaded depth over the window around it (memory bounded by the hand, not the image)."""
    xyz = hand_points_3d(instance.points, detection.size, size)
    finite = xyz[np.isfinite(xyz[:, :2]).all(axis=1), :2]
    if not len(finite):
        return (slice(0, 0), slice(0, 0)), np.zeros((0, 0), np.uint8)
    reach = JOINT_RADIUS.max() * palm_length(xyz) + 1
    low = np.clip(np.floor(finite.min(axis=0) - reach), 0, size).astype(int)
    high = np.clip(np.ceil(finite.max(axis=0) + reach) + 1, 0, size).astype(int)
    local = xyz.copy()
    local[:, :2] -= low
    window = (slice(low[1], high[1]), slice(low[0], high[0]))
    return window, shade(hand_depth(local, tuple(np.maximum(high - low, 0))))


def depth_levels(detection: Detection, size: tuple[int, int] | None = None) -> np.ndarray:
    """(h, w) uint8 depth map of every hand; where hands overlap the brighter one shows."""
    size = size or detection.size
    levels = np.zeros((size[1], size[0]), np.uint8)
    for instance in hands(detection):
        window, hand = hand_levels(detection, instance, size)
        np.maximum(levels[window], hand, out=levels[window])
    return levels


# -- mask -------------------------------------------------------------------------------------
def mask_boxes(detection: Detection) -> list[tuple[float, float, float, float]]:
    """Each hand's padded box in input pixels, clamped to the image."""
    settings = MaskSettings.of(detection)
    boxes = []
    for instance in hands(detection):
        box = instance.bbox()
        pad = settings.pad(box)
        x0, y0, x1, y1 = box
        boxes.append(
            (
                max(x0 - pad, 0.0),
                max(y0 - pad, 0.0),
                min(x1 + pad, float(detection.width)),
                min(y1 + pad, float(detection.height)),
            )
        )
    return boxes


def mask_image(detection: Detection, size: tuple[int, int] | None = None) -> np.ndarray:
    """(h, w) uint8: MASK_ON where the inpainting model repaints, 0 elsewhere."""
    size = size or detection.size
    settings = MaskSettings.of(detection)
    mask = np.zeros((size[1], size[0]), np.uint8)
    sx, sy = size[0] / detection.width, size[1] / detection.height
    if settings.tight:
        for instance in hands(detection):
            _add_dilated_silhouette(
                mask, detection, instance, round(settings.pad(instance.bbox()) * max(sx, sy))
            )
        return mask
    for x0, y0, x1, y1 in mask_boxes(detection):
        rows = slice(int(np.floor(y0 * sy)), int(np.ceil(y1 * sy)))
        mask[rows, int(np.floor(x0 * sx)) : int(np.ceil(x1 * sx))] = MASK_ON
    return mask


def _add_dilated_silhouette(mask: np.ndarray, detection: Detection, instance: Instance, radius: int) -> None:
    """OR the hand's silhouette grown by a disc of `radius` px into `mask`, within the hand's window."""
    (rows, cols), hand = hand_levels(detection, instance, (mask.shape[1], mask.shape[0]))
    if not hand.size:
        return
    y0, x0 = max(rows.start - radius, 0), max(cols.start - radius, 0)
    y1, x1 = min(rows.stop + radius, mask.shape[0]), min(cols.stop + radius, mask.shape[1])
    silhouette = np.zeros((y1 - y0, x1 - x0), np.uint8)
    silhouette[rows.start - y0 : rows.stop - y0, cols.start - x0 : cols.stop - x0] = hand > 0
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2)
    np.maximum(mask[y0:y1, x0:x1], cv2.dilate(silhouette, kernel) * MASK_ON, out=mask[y0:y1, x0:x1])


def small_hands(detection: Detection, settings: MaskSettings) -> list[int]:
    """Indices (into `detection.instances`) of hands whose box fits in small_hand x small_hand px."""
    flagged = []
    for index, instance in enumerate(detection.instances):
        x0, y0, x1, y1 = instance.bbox()
        if instance.kind in HAND_KINDS and max(x1 - x0, y1 - y0) < settings.small_hand:
            flagged.append(index)
    return flagged


# -- the conditioner --------------------------------------------------------------------------
class HandDepthMaskConditioner(StandardHandConditioner):
    """Hand depth maps (nearest = bright) with a padded inpainting mask per hand, HandRefiner style."""

    name = "hand_depth_mask"
    extra_images: ClassVar[tuple[str, ...]] = ("mask",)
    # benchmarks/min_image_size.py: MediaPipe Hands never raised, from 1x1 and 1x2000 up
    min_workable_side: ClassVar[int] = 1

    def __init__(
        self,
        *,
        padding: float = 0.15,
        min_padding: float = 30.0,
        tight_mask: bool = False,
        small_hand: float = 60.0,
        **options: Any,
    ):
        super().__init__(**options)
        self.mask_settings = MaskSettings(padding, min_padding, tight_mask, small_hand)

    def filter(self, detection: Detection) -> Detection:
        detection = super().filter(detection)
        detection.extra = {
            **detection.extra,
            "mask": asdict(self.mask_settings),
            "small_hands": small_hands(detection, self.mask_settings),
        }
        return detection

    @classmethod
    def paint(cls, canvas: Canvas, detection: Detection) -> None:
        canvas.paint_levels(depth_levels(detection, canvas.size))

    @classmethod
    def render_extra(cls, name: str, detection: Detection, size: tuple[int, int] | None = None) -> np.ndarray:
        if name != "mask":
            return super().render_extra(name, detection, size)
        return mask_image(detection, size)
