"""`face_pupils`: the LAION-Face conditioning (face contours plus pupils) from MediaPipe FaceMesh.

The spec's colours are BGR and the finished image is channel-reversed, so the right iris
appears as RGB (250, 200, 10); the canvas does the reversal through its palette.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from . import topology
from ._mediapipe import (
    MediaPipeConditioner,
    landmarks_to_array,
    solutions,
    task_landmarks_to_array,
    task_model,
)
from .detection import Detection, Instance
from .drawing import Canvas, DrawingSpec, Edge, draw_instance
from .filters import Filters

FACE_LANDMARKER = task_model(
    "face_landmarker",
    "face_landmarker/face_landmarker/float16/1/face_landmarker.task",
    "Face Landmarker",
    "3.8 MB",
    "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff",
)

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
_PART_EDGES: tuple[tuple[str, tuple[Edge, ...]], ...] = (
    ("head", topology.FACE_OVAL),
    ("left_eye", topology.FACE_LEFT_EYE),
    ("left_eyebrow", topology.FACE_LEFT_EYEBROW),
    ("right_eye", topology.FACE_RIGHT_EYE),
    ("right_eyebrow", topology.FACE_RIGHT_EYEBROW),
    ("mouth", topology.FACE_LIPS),
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


class FacePupilsConditioner(MediaPipeConditioner):
    """Up to five faces with refined (iris) landmarks: 478 points each."""

    name = "face_pupils"
    solutions_name = "mediapipe.solutions.face_mesh"
    tasks_name = "FaceLandmarker"
    tasks_model = FACE_LANDMARKER
    reverse_channels = True
    focus_points = tuple(PUPILS)
    default_filters = Filters(min_image_side=384, min_instance_size=64)
    # benchmarks/min_image_size.py: FaceMesh never raised, from 1x1 up (min_image_side=384 is a data filter)
    min_workable_side: ClassVar[int] = 1

    def __init__(self, *, max_num_faces: int = 5, min_detection_confidence: float = 0.5, **options: Any):
        super().__init__(**options)
        self.max_num_faces = max_num_faces
        self.min_detection_confidence = min_detection_confidence

    def _create_solutions_detector(self) -> Any:
        return solutions().face_mesh.FaceMesh(
            static_image_mode=True,
            max_num_faces=self.max_num_faces,
            refine_landmarks=True,
            min_detection_confidence=self.min_detection_confidence,
        )

    def _solutions_instances(self, results: Any) -> list[Instance]:
        return [Instance("face", landmarks_to_array(face)) for face in results.multi_face_landmarks or []]

    def _tasks_settings(self) -> dict[str, Any]:
        return {
            "num_faces": self.max_num_faces,
            "min_face_detection_confidence": self.min_detection_confidence,
        }

    def _tasks_instances(self, result: Any) -> list[Instance]:
        # Unscored, like FaceMesh: the pupils are drawn whenever the face is found.
        return [
            Instance("face", task_landmarks_to_array(face, scored=False)) for face in result.face_landmarks
        ]

    @classmethod
    def paint(cls, canvas: Canvas, detection: Detection) -> None:
        for instance in detection.of_kind("face"):
            draw_instance(
                canvas, instance.points, detection.size, FACE_CONNECTION_STYLE, None, FACE_CONNECTION_STYLE
            )
            paint_pupils(canvas, instance.points, detection.size)
