"""`face_pupils`: the LAION-Face conditioning (face contours plus pupils) from MediaPipe FaceMesh.

The spec's colours are BGR and the finished image is channel-reversed, so the right iris
appears as RGB (250, 200, 10); the canvas does the reversal through its palette.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ._mediapipe import MEDIAPIPE_VERSION, landmarks_to_array, solutions
from .base import Conditioner
from .detection import Detection, Instance
from .drawing import Canvas, DrawingSpec, Edge, draw_instance
from .filters import Filters

face_mesh = solutions.face_mesh

THICKNESS = 2
RADIUS = 1
PART_COLORS_BGR: dict[str, tuple[int, int, int]] = {
    "right_iris": (10, 200, 250),
    "right_eye": (10, 200, 180),
    "right_eyebrow": (10, 220, 180),
    "left_iris": (250, 200, 10),
    "left_eye": (180, 200, 10),
    "left_eyebrow": (180, 220, 10),
    "mouth": (10, 180, 10),
    "head": (10, 200, 10),
}
# Insertion order matters: it is the order lines are drawn in (as in the original dict).
_PART_EDGES: tuple[tuple[str, frozenset[Edge]], ...] = (
    ("head", face_mesh.FACEMESH_FACE_OVAL),
    ("left_eye", face_mesh.FACEMESH_LEFT_EYE),
    ("left_eyebrow", face_mesh.FACEMESH_LEFT_EYEBROW),
    ("right_eye", face_mesh.FACEMESH_RIGHT_EYE),
    ("right_eyebrow", face_mesh.FACEMESH_RIGHT_EYEBROW),
    ("mouth", face_mesh.FACEMESH_LIPS),
)
FACE_CONNECTION_STYLE: dict[Edge, DrawingSpec] = {
    edge: DrawingSpec(PART_COLORS_BGR[part], THICKNESS, RADIUS)
    for part, edges in _PART_EDGES
    for edge in edges
}
PUPILS = {468: "right_iris", 473: "left_iris"}
PUPIL_HALF_WIDTH = 2
PUPIL_MIN_VISIBILITY = 0.9


def paint_pupils(canvas: Canvas, points: np.ndarray, source_size: tuple[int, int]) -> None:
    """4x4 squares `[y-2:y+2, x-2:x+2]` at landmarks 468 and 473, with numpy slice semantics."""
    width, height = canvas.size
    for idx, part in PUPILS.items():
        if idx >= len(points):
            continue
        x, y, _, visibility = points[idx]
        if visibility < PUPIL_MIN_VISIBILITY:  # NaN (not given by FaceMesh) passes, as in the original
            continue
        nx, ny = x / source_size[0], y / source_size[1]
        if not (0 <= nx < 1 and 0 <= ny < 1):
            continue
        px, py = int(width * nx), int(height * ny)
        h = PUPIL_HALF_WIDTH
        canvas.paint(slice(py - h, py + h), slice(px - h, px + h), PART_COLORS_BGR[part])


class FacePupilsConditioner(Conditioner):
    """Up to five faces with refined (iris) landmarks: 478 points each."""

    name = "face_pupils"
    detector_name = "mediapipe.solutions.face_mesh"
    detector_version = MEDIAPIPE_VERSION
    reverse_channels = True
    default_filters = Filters(min_image_side=384, min_instance_size=64)
    # benchmarks/min_image_size.py: FaceMesh never raised, from 1x1 up (min_image_side=384 is a data filter)
    min_workable_side: ClassVar[int] = 1

    def __init__(self, *, max_num_faces: int = 5, min_detection_confidence: float = 0.5, **options: Any):
        super().__init__(**options)
        self.max_num_faces = max_num_faces
        self.min_detection_confidence = min_detection_confidence

    def _create_detector(self) -> Any:
        return face_mesh.FaceMesh(
            static_image_mode=True,
            max_num_faces=self.max_num_faces,
            refine_landmarks=True,
            min_detection_confidence=self.min_detection_confidence,
        )

    def _detect(self, pixels: np.ndarray) -> list[Instance]:
        faces = self.detector.process(pixels).multi_face_landmarks or []
        return [Instance("face", landmarks_to_array(face)) for face in faces]

    @classmethod
    def paint(cls, canvas: Canvas, detection: Detection) -> None:
        for instance in detection.of_kind("face"):
            draw_instance(
                canvas, instance.points, detection.size, FACE_CONNECTION_STYLE, None, FACE_CONNECTION_STYLE
            )
            paint_pupils(canvas, instance.points, detection.size)
