"""`holistic`: MediaPipe Holistic (face contours, both hands, body) in MediaPipe's default style."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ._mediapipe import MEDIAPIPE_VERSION, landmarks_to_array, solutions
from .base import Conditioner
from .detection import Detection, Instance, SkipReason
from .drawing import RED, Canvas, DrawingSpec, Edge, draw_instance
from .mediapipe_hands import HAND_CONNECTIONS, HAND_KINDS

LANDMARK_SPEC = DrawingSpec(color=RED)  # MediaPipe's draw_landmarks default: (0, 0, 255), r=2, t=2
CONNECTION_SPEC = DrawingSpec()  # (224, 224, 224), t=2
PART_CONNECTIONS: dict[str, frozenset[Edge]] = {
    "face": solutions.face_mesh_connections.FACEMESH_CONTOURS,
    "pose": solutions.pose_connections.POSE_CONNECTIONS,
    "left_hand": HAND_CONNECTIONS,
    "right_hand": HAND_CONNECTIONS,
}
# Drawing order: hands last, so that they sit on top of the body lines they are the point of.
DRAW_ORDER = ("face", "pose", "left_hand", "right_hand")
# Holistic's left/right hands follow its body model, which names the subject's own sides.
_RESULT_FIELDS = {
    "face": "face_landmarks",
    "pose": "pose_landmarks",
    "left_hand": "left_hand_landmarks",
    "right_hand": "right_hand_landmarks",
}


class HolisticConditioner(Conditioner):
    """Face, body and hands of one person. By default kept only when a hand is present."""

    name = "holistic"
    detector_name = "mediapipe.solutions.holistic"
    detector_version = MEDIAPIPE_VERSION
    # benchmarks/min_image_size.py: MediaPipe Holistic never raised, from 1x1 and 1x2000 up
    min_workable_side: ClassVar[int] = 1

    def __init__(self, *, require_hands: bool = True, min_detection_confidence: float = 0.5, **options: Any):
        super().__init__(**options)
        self.require_hands = require_hands
        self.min_detection_confidence = min_detection_confidence

    def _create_detector(self) -> Any:
        # model_complexity 1: the only pose model bundled with mediapipe 0.10.21 (0 and 2 download).
        return solutions.holistic.Holistic(
            static_image_mode=True, model_complexity=1, min_detection_confidence=self.min_detection_confidence
        )

    def _detect(self, pixels: np.ndarray) -> list[Instance]:
        results = self.detector.process(pixels)
        instances = []
        for kind in DRAW_ORDER:
            landmarks = getattr(results, _RESULT_FIELDS[kind])
            if landmarks:
                instances.append(Instance(kind, landmarks_to_array(landmarks)))
        return instances

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
