"""`holistic`: MediaPipe Holistic (face contours, both hands, body) in MediaPipe's default style."""

from __future__ import annotations

from typing import Any, ClassVar

from . import topology
from ._mediapipe import (
    MediaPipeConditioner,
    landmarks_to_array,
    solutions,
    task_landmarks_to_array,
    task_model,
)
from .detection import Detection, Instance, SkipReason
from .drawing import RED, Canvas, DrawingSpec, Edge, draw_instance
from .mediapipe_hands import HAND_CONNECTIONS, HAND_KINDS

HOLISTIC_LANDMARKER = task_model(
    "holistic_landmarker",
    "holistic_landmarker/holistic_landmarker/float16/1/holistic_landmarker.task",
    "Holistic Landmarker",
    "13.7 MB",
    "e2dab61191e2dcd0a15f943d8e3ed1dce13c82dfa597b9dd39f562975a50c3f8",
)

LANDMARK_SPEC = DrawingSpec(color=RED)  # MediaPipe's draw_landmarks default: (0, 0, 255), r=2, t=2
CONNECTION_SPEC = DrawingSpec()  # (224, 224, 224), t=2
PART_CONNECTIONS: dict[str, tuple[Edge, ...]] = {
    "face": topology.FACE_CONTOURS,
    "pose": topology.POSE,
    "left_hand": HAND_CONNECTIONS,
    "right_hand": HAND_CONNECTIONS,
}
# Drawing order: hands last, so that they sit on top of the body lines they are the point of.
DRAW_ORDER = ("face", "pose", "left_hand", "right_hand")
# Holistic's left/right hands follow its body model, which names the subject's own sides; the
# Tasks result has the same field names.
_RESULT_FIELDS = {
    "face": "face_landmarks",
    "pose": "pose_landmarks",
    "left_hand": "left_hand_landmarks",
    "right_hand": "right_hand_landmarks",
}


class HolisticConditioner(MediaPipeConditioner):
    """Face, body and hands of one person. By default kept only when a hand is present."""

    name = "holistic"
    solutions_name = "mediapipe.solutions.holistic"
    tasks_name = "HolisticLandmarker"
    tasks_model = HOLISTIC_LANDMARKER
    # benchmarks/min_image_size.py: MediaPipe Holistic never raised, from 1x1 and 1x2000 up
    min_workable_side: ClassVar[int] = 1

    def __init__(self, *, require_hands: bool = True, min_detection_confidence: float = 0.5, **options: Any):
        super().__init__(**options)
        self.require_hands = require_hands
        self.min_detection_confidence = min_detection_confidence

    def _create_solutions_detector(self) -> Any:
        # model_complexity 1: the only pose model bundled with mediapipe 0.10.21 (0 and 2 download).
        return solutions().holistic.Holistic(
            static_image_mode=True, model_complexity=1, min_detection_confidence=self.min_detection_confidence
        )

    def _solutions_instances(self, results: Any) -> list[Instance]:
        parts = ((kind, getattr(results, _RESULT_FIELDS[kind])) for kind in DRAW_ORDER)
        return [Instance(kind, landmarks_to_array(landmarks)) for kind, landmarks in parts if landmarks]

    def _tasks_settings(self) -> dict[str, Any]:
        confidence = self.min_detection_confidence
        return {"min_face_detection_confidence": confidence, "min_pose_detection_confidence": confidence}

    def _tasks_instances(self, result: Any) -> list[Instance]:
        parts = ((kind, getattr(result, _RESULT_FIELDS[kind])) for kind in DRAW_ORDER)
        # Only the body model scores its landmarks (visibility), as in mp.solutions.
        return [
            Instance(kind, task_landmarks_to_array(landmarks, scored=kind == "pose"))
            for kind, landmarks in parts
            if landmarks
        ]

    def filter(self, detection: Detection) -> Detection:
        detection = super().filter(detection)
        has_hand = any(inst.kind in HAND_KINDS for inst in detection.instances)
        if detection.skipped is None and self.require_hands and not has_hand:
            return detection.with_instances(detection.instances, SkipReason.MISSING_REQUIRED_PART)
        return detection

    @classmethod
    def paint(cls, canvas: Canvas, detection: Detection) -> None:
        for kind in DRAW_ORDER:
            for instance in detection.of_kind(kind):
                draw_instance(
                    canvas,
                    instance.points,
                    detection.size,
                    PART_CONNECTIONS[kind],
                    LANDMARK_SPEC,
                    CONNECTION_SPEC,
                )
