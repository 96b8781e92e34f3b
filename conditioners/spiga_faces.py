"""`spiga68`: the "uncanny faces" illustrated mask from SPIGA's 68 iBUG face landmarks.

Faces are found with MediaPipe face detection (bundled, offline); each padded box goes to SPIGA
(`300wpublic`), which returns 68 points (`_spiga.py` runs it on CPU). The drawing is pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from . import _mediapipe
from .base import Conditioner
from .detection import Detection, Instance
from .drawing import Canvas, Color, scale_to_canvas
from .filters import Filters
from .weights import installed_version, missing_requirements

LINE_WIDTH = 4
LIME: Color = (0, 255, 0)
YELLOW: Color = (255, 255, 0)
ORANGE: Color = (255, 165, 0)
MAGENTA: Color = (255, 0, 255)
CYAN: Color = (0, 255, 255)
BLUE: Color = (0, 0, 255)


@dataclass(frozen=True)
class FacePart:
    name: str
    points: slice  # into the 68 iBUG points
    color: Color
    closed: bool = False  # closed parts are outlined and filled


# Drawing order: later parts paint over earlier ones (inner lips over outer lips).
FACE_PARTS: tuple[FacePart, ...] = (
    FacePart("jaw", slice(0, 17), LIME),
    FacePart("right_brow", slice(17, 22), YELLOW),
    FacePart("left_brow", slice(22, 27), YELLOW),
    FacePart("nose_bridge", slice(27, 31), ORANGE),
    FacePart("nose_base", slice(31, 36), ORANGE),
    FacePart("right_eye", slice(36, 42), MAGENTA, closed=True),
    FacePart("left_eye", slice(42, 48), MAGENTA, closed=True),
    FacePart("outer_lips", slice(48, 60), CYAN, closed=True),
    FacePart("inner_lips", slice(60, 68), BLUE, closed=True),
)
NUM_POINTS = 68


def paint_face(canvas: Canvas, points: np.ndarray, source_size: tuple[int, int]) -> None:
    """One face's 68 points (input pixels) as the illustrated mask; non-finite points are left out."""
    pixels = scale_to_canvas(points, source_size, canvas.size)
    for part in FACE_PARTS:
        outline = pixels[part.points]
        outline = outline[np.isfinite(outline).all(axis=1)]
        if len(outline) < 2:
            continue
        if part.closed and len(outline) >= 3:
            canvas.fill_polygon(outline, part.color)
        canvas.polyline(outline, part.color, LINE_WIDTH, closed=part.closed)


class Spiga68Conditioner(Conditioner):
    """Every face MediaPipe finds (up to `max_faces`), as SPIGA's 68 points."""

    name = "spiga68"
    detector_name = "spiga.300wpublic+mediapipe.face_detection"
    detector_version = installed_version("spiga")
    default_filters = Filters(min_instance_size=32)
    # benchmarks/min_image_size.py: never raised from 1x1 up (MediaPipe finds no face box below ~16 px)
    min_workable_side: ClassVar[int] = 1

    def __init__(
        self,
        *,
        weights: str | None = None,
        box_padding: float = 0.15,
        min_face_score: float = 0.5,
        max_faces: int = 5,
        **options: Any,
    ):
        super().__init__(**options)
        self.weights = weights
        self.box_padding = box_padding
        self.min_face_score = min_face_score
        self.max_faces = max_faces

    @classmethod
    def unavailable_reason(cls) -> str | None:
        from ._spiga import SPIGA_WEIGHTS

        if not _mediapipe.solutions_available():  # its face boxes come from mp.solutions' two face detectors
            return "SPIGA's face detection needs mp.solutions (the 'solutions' extra; see the README)"
        return missing_requirements(["torch", "spiga"], "spiga", SPIGA_WEIGHTS)

    def _create_detector(self) -> Any:
        from ._spiga import SpigaDetector

        with _mediapipe.quiet_native_logs():
            face_detectors = [  # short range (within ~2 m) and full range
                _mediapipe.solutions().face_detection.FaceDetection(
                    model_selection=model, min_detection_confidence=self.min_face_score
                )
                for model in (0, 1)
            ]
        return SpigaDetector(face_detectors, self.weights, self.box_padding, self.max_faces)

    def _detect(self, pixels: np.ndarray) -> list[Instance]:
        height, width = pixels.shape[:2]
        instances = []
        for points, score in self.detector(pixels):
            normalized = np.column_stack(
                [points / (width, height), np.zeros(len(points)), np.full(len(points), np.nan)]
            )
            instances.append(Instance("face", normalized, score))
        return instances

    @classmethod
    def paint(cls, canvas: Canvas, detection: Detection) -> None:
        for instance in detection.of_kind("face"):
            paint_face(canvas, instance.points, detection.size)
