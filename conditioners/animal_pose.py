"""`animal_pose`: OpenPifPaf's `shufflenetv2k30-animalpose`, 20 Animal-Pose keypoints per animal.

Every animal above `min_score` is kept and drawn; joints the network did not find (confidence 0)
and their bones are left out. The drawing is pure; `_openpifpaf.py` holds the detector.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from .base import Conditioner
from .detection import Detection, Instance
from .drawing import Canvas, Color, Edge, scale_to_canvas
from .filters import Filters
from .weights import installed_version, missing_requirements

KEYPOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "throat", "tail", "withers",
    "left_front_elbow", "right_front_elbow", "left_back_elbow", "right_back_elbow",
    "left_front_knee", "right_front_knee", "left_back_knee", "right_back_knee",
    "left_front_paw", "right_front_paw", "left_back_paw", "right_back_paw",
)  # fmt: skip
# 1-based, as openpifpaf and DESIGN section 4 write it.
SKELETON: tuple[Edge, ...] = (
    (1, 2), (1, 3), (1, 6), (2, 4), (3, 5), (2, 3), (6, 8), (6, 9), (6, 10), (7, 8),
    (7, 11), (7, 12), (10, 14), (14, 18), (9, 13), (13, 17), (12, 16), (16, 20), (11, 15), (15, 19),
)  # fmt: skip
# Left limbs warm, right limbs cool, head and spine neutral: the model can tell left from right.
JOINT_COLORS: tuple[Color, ...] = (
    (255, 255, 255),  # nose
    (255, 0, 128),  # left eye
    (128, 0, 255),  # right eye
    (255, 128, 192),  # left ear
    (128, 192, 255),  # right ear
    (192, 192, 192),  # throat
    (128, 128, 128),  # tail
    (255, 192, 128),  # withers
    (255, 128, 0),  # left front elbow
    (0, 128, 255),  # right front elbow
    (255, 255, 0),  # left back elbow
    (0, 255, 255),  # right back elbow
    (255, 64, 0),  # left front knee
    (0, 64, 255),  # right front knee
    (192, 255, 0),  # left back knee
    (0, 255, 192),  # right back knee
    (255, 0, 0),  # left front paw
    (0, 0, 255),  # right front paw
    (128, 255, 0),  # left back paw
    (0, 255, 128),  # right back paw
)
# One hue per bone, in SKELETON order (20 steps round the colour wheel at 85% saturation).
EDGE_COLORS: tuple[Color, ...] = (
    (217, 33, 33), (217, 88, 33), (217, 143, 33), (217, 198, 33), (180, 217, 33),
    (125, 217, 33), (69, 217, 33), (33, 217, 51), (33, 217, 106), (33, 217, 161),
    (33, 217, 217), (33, 161, 217), (33, 106, 217), (33, 51, 217), (69, 33, 217),
    (125, 33, 217), (180, 33, 217), (217, 33, 198), (217, 33, 143), (217, 33, 88),
)  # fmt: skip
LINE_WIDTH_FRACTION = 0.01  # of the canvas's shorter side, floored
JOINT_RADIUS_FRACTION = 0.015
MIN_CONFIDENCE = 0.0  # a joint is drawn when its confidence is above this


def line_width(size: tuple[int, int]) -> int:
    """floor(min_side * 0.01), at least 1 px so that small canvases still show the skeleton."""
    return max(1, math.floor(min(size) * LINE_WIDTH_FRACTION))


def joint_radius(size: tuple[int, int]) -> int:
    return max(1, math.floor(min(size) * JOINT_RADIUS_FRACTION))


def paint_animal(canvas: Canvas, points: np.ndarray, source_size: tuple[int, int]) -> None:
    """Bones first, then joints on top; points are (20, 4) in input pixels with confidence last."""
    pixels = scale_to_canvas(points, source_size, canvas.size)
    found = np.isfinite(pixels).all(axis=1) & ~(points[:, 3] <= MIN_CONFIDENCE)
    centers = {i: (int(round(x)), int(round(y))) for i, (x, y) in enumerate(pixels) if found[i]}
    width, radius = line_width(canvas.size), joint_radius(canvas.size)
    for (a, b), color in zip(SKELETON, EDGE_COLORS, strict=True):
        if a - 1 in centers and b - 1 in centers:
            canvas.line(centers[a - 1], centers[b - 1], color, width)
    for index, center in centers.items():
        canvas.circle(center, radius, JOINT_COLORS[index], -1)


class AnimalPoseConditioner(Conditioner):
    """Every animal with a score of at least `min_score` (openpifpaf's annotation score)."""

    name = "animal_pose"
    detector_name = "openpifpaf.shufflenetv2k30-animalpose"
    detector_version = installed_version("openpifpaf")
    default_filters = Filters(min_instance_size=16)
    # benchmarks/min_image_size.py: OpenPifPaf's scale transform divides by (side - 1), so 1 px raises
    min_workable_side: ClassVar[int] = 2

    def __init__(
        self,
        *,
        weights: str | None = None,
        trust_checkpoint: bool = False,
        min_score: float = 0.2,
        **options: Any,
    ):
        super().__init__(**options)
        self.weights = weights
        self.trust_checkpoint = trust_checkpoint
        self.min_score = min_score

    @classmethod
    def unavailable_reason(cls) -> str | None:
        from ._openpifpaf import ANIMALPOSE_WEIGHTS

        return missing_requirements(["torch", "openpifpaf"], "animal", ANIMALPOSE_WEIGHTS)

    def _create_detector(self) -> Any:
        from ._openpifpaf import AnimalPoseDetector

        return AnimalPoseDetector(self.weights, self.trust_checkpoint)

    def _detect(self, pixels: np.ndarray) -> list[Instance]:
        height, width = pixels.shape[:2]
        instances = []
        for keypoints, score in self.detector(pixels):
            if score < self.min_score:
                continue
            xy = keypoints[:, :2] / (width, height)
            points = np.column_stack([xy, np.zeros(len(xy)), keypoints[:, 2]])
            instances.append(Instance("animal", points, score))
        return instances

    @classmethod
    def paint(cls, canvas: Canvas, detection: Detection) -> None:
        for instance in detection.of_kind("animal"):
            paint_animal(canvas, instance.points, detection.size)
