"""`hand_standard` and `hand_encoded`: MediaPipe Hands drawn in MediaPipe's default hand style.

`hand_encoded` (Maki-DS "hand encoding") recolours the six palm landmarks by anatomical
handedness so that a model can learn which hand is which.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
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
from .detection import Detection, HintBox, Instance
from .drawing import Canvas, DrawingSpec, Edge, draw_instance
from .errors import OptionError
from .hand_regions import HandSearch, SearchSettings
from .images import ImageSource, LoadedImage, shrunk
from .mediapipe_people import PeopleFinder

HAND_CONNECTIONS = topology.HAND
HAND_LANDMARKER = task_model(
    "hand_landmarker",
    "hand_landmarker/hand_landmarker/float16/1/hand_landmarker.task",
    "Hand Landmarker",
    "7.8 MB",
    "fbc2a30080c3c557093b5ddfc334698132eb341044ccee322ccf8bcf3607cde1",
)
HAND_KINDS = ("left_hand", "right_hand")

# Colours are MediaPipe's BGR constants written as-is into RGB, as the original datasets did.
FINGER_LANDMARKS: dict[str, tuple[int, ...]] = {
    "palm": (0, 1, 5, 9, 13, 17),
    "thumb": (2, 3, 4),
    "index": (6, 7, 8),
    "middle": (10, 11, 12),
    "ring": (14, 15, 16),
    "pinky": (18, 19, 20),
}
FINGER_COLORS: dict[str, tuple[int, int, int]] = {
    "palm": (48, 48, 255),
    "thumb": (180, 229, 255),
    "index": (128, 64, 128),
    "middle": (0, 204, 255),
    "ring": (48, 255, 48),
    "pinky": (192, 101, 21),
}
FINGER_CONNECTIONS: dict[str, tuple[Edge, ...]] = {
    "palm": topology.HAND_PALM,
    "thumb": topology.HAND_THUMB,
    "index": topology.HAND_INDEX_FINGER,
    "middle": topology.HAND_MIDDLE_FINGER,
    "ring": topology.HAND_RING_FINGER,
    "pinky": topology.HAND_PINKY,
}
PALM_CONNECTION_COLOR = (128, 128, 128)
PALM_CONNECTION_THICKNESS = 3
FINGER_CONNECTION_THICKNESS = 2
LANDMARK_RADIUS = 5
FILLED = -1
# The Maki-DS palm colours that encode handedness.
ENCODED_PALM_COLORS = {"right_hand": (251, 206, 177), "left_hand": (255, 255, 225)}


def hand_landmark_style(palm_color: tuple[int, int, int] = FINGER_COLORS["palm"]) -> dict[int, DrawingSpec]:
    colors = {**FINGER_COLORS, "palm": palm_color}
    return {
        idx: DrawingSpec(colors[group], FILLED, LANDMARK_RADIUS)
        for group, indices in FINGER_LANDMARKS.items()
        for idx in indices
    }


def hand_connection_style() -> dict[Edge, DrawingSpec]:
    style = {}
    for group, edges in FINGER_CONNECTIONS.items():
        if group == "palm":
            spec = DrawingSpec(PALM_CONNECTION_COLOR, PALM_CONNECTION_THICKNESS)
        else:
            spec = DrawingSpec(FINGER_COLORS[group], FINGER_CONNECTION_THICKNESS)
        style.update(dict.fromkeys(edges, spec))
    return style


HAND_CONNECTION_STYLE = hand_connection_style()
STANDARD_LANDMARK_STYLE = hand_landmark_style()
ENCODED_LANDMARK_STYLES = {kind: hand_landmark_style(color) for kind, color in ENCODED_PALM_COLORS.items()}


def anatomical_kind(label: str, mirrored_labels: bool) -> str:
    """The subject's own side, from a MediaPipe handedness label.

    `mirrored_labels`: the label names the hand as it would be in the mirrored image. mp.solutions
    labels so for ordinary photos, the Tasks API for mirrored (selfie) frames.
    """
    label = label.lower()
    if mirrored_labels:
        label = {"left": "right", "right": "left"}[label]
    return f"{label}_hand"


def checked_int(name: str, value: Any, minimum: int) -> int:
    """`value` as an int of at least `minimum`, or a one-line `OptionError` naming the option."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise OptionError(f"{name}={value!r}: expected a whole number >= {minimum}")
    return value


class StandardHandConditioner(MediaPipeConditioner):
    """Up to `max_num_hands` hands in MediaPipe's default hand style."""

    name = "hand_standard"
    solutions_name = "mediapipe.solutions.hands"
    tasks_name = "HandLandmarker"
    tasks_model = HAND_LANDMARKER
    # benchmarks/min_image_size.py: MediaPipe Hands never raised, from 1x1 and 1x2000 up
    min_workable_side: ClassVar[int] = 1

    def __init__(
        self,
        *,
        max_num_hands: int = 2,
        min_detection_confidence: float = 0.5,
        model_complexity: int = 1,
        selfie: bool = False,
        hand_regions: str = "auto",
        crop_context: float = 3.0,
        tile_size: int = 384,
        tile_scales: int = 2,
        tile_overlap: float = 0.3,
        max_people: int = 4,
        region_confidence: float = 0.8,
        pose_model_path: str | None = None,
        **options: Any,
    ):
        super().__init__(**options)
        self.max_num_hands = checked_int("max_num_hands", max_num_hands, 1)
        self.min_detection_confidence = min_detection_confidence
        self.model_complexity = model_complexity  # solutions only: the Tasks bundle is the full model
        self.selfie = selfie  # True for mirrored (front-camera) frames
        self.search = SearchSettings(
            hand_regions, crop_context, tile_size, tile_scales, tile_overlap, max_people
        )
        self.people = PeopleFinder(self.backend, max_people, pose_model_path, optional=hand_regions == "auto")
        self.region_confidence = region_confidence
        self._region_detector: Any = None

    def load(
        self, source: ImageSource, name: str | None = None, hints: Sequence[HintBox] = ()
    ) -> LoadedImage:
        """The detector's copy and, for the search, the full picture: decoded first when hints
        will be searched (the whole-frame pass then does not run), else only once a region pass
        needs it (the detector's copy stays exactly the single pass's)."""
        if self.search.hand_regions == "none":
            return super().load(source, name)
        if hints and self.search.runs("hints"):
            full = self.decode(source, name, None)
            return replace(full, pixels=shrunk(full.pixels, self.detect_long_side), detail=full.pixels)
        loaded = super().load(source, name)
        if loaded.pixels.shape[:2] == loaded.size[::-1]:
            return replace(loaded, detail=loaded.pixels)
        return replace(loaded, decode_detail=lambda: self.decode(source, name, None).pixels)

    def _find(self, loaded: LoadedImage, detection: Detection, hints: Sequence[HintBox]) -> Detection:
        if self.search.hand_regions == "none":
            return replace(detection, instances=self.detect_pixels(loaded.pixels, loaded.size))
        search = HandSearch(
            self.search,
            self._detect_region,
            self._detect,
            self.people,
            loaded.pixels,
            loaded.sharpest,
            loaded.size,
            self.max_num_hands,
        )
        report = search.run(lambda: self.detect_pixels(loaded.pixels, loaded.size), hints)
        return replace(detection, instances=search.hands(), extra={**detection.extra, **report})

    def _detect_region(self, pixels: np.ndarray) -> list[Instance]:
        """The search's passes: crops upscale small, blurry content, where the palm detector
        is easier to fool (an animal's paw), so they take the stricter `region_confidence`."""
        if self._region_detector is None:
            self._region_detector = self._create_detector(confidence=self.region_confidence)
        return self._detect_with(self._region_detector, pixels)

    def close(self) -> None:
        super().close()
        self.people.close()
        if self._region_detector is not None:
            self._region_detector.close()
            self._region_detector = None

    def _create_solutions_detector(self, confidence: float | None = None) -> Any:
        return solutions().hands.Hands(
            static_image_mode=True,
            max_num_hands=self.max_num_hands,
            model_complexity=self.model_complexity,
            min_detection_confidence=confidence or self.min_detection_confidence,
        )

    def _solutions_instances(self, results: Any) -> list[Instance]:
        hands = zip(results.multi_hand_landmarks or [], results.multi_handedness or [], strict=True)
        return [
            Instance(anatomical_kind(best.label, not self.selfie), landmarks_to_array(points), best.score)
            for points, handedness in hands
            for best in handedness.classification[:1]
        ]

    def _tasks_settings(self, confidence: float | None = None) -> dict[str, Any]:
        return {
            "num_hands": self.max_num_hands,
            "min_hand_detection_confidence": confidence or self.min_detection_confidence,
        }

    def _tasks_instances(self, result: Any) -> list[Instance]:
        hands = zip(result.hand_landmarks, result.handedness, strict=True)
        return [
            Instance(
                anatomical_kind(best.category_name, self.selfie),
                task_landmarks_to_array(points, scored=False),
                best.score,
            )
            for points, categories in hands
            for best in categories[:1]
        ]

    landmark_styles: ClassVar[dict[str, dict[int, DrawingSpec]]] = dict.fromkeys(
        HAND_KINDS, STANDARD_LANDMARK_STYLE
    )

    @classmethod
    def paint(cls, canvas: Canvas, detection: Detection) -> None:
        for instance in detection.instances:
            if instance.kind in HAND_KINDS:
                style = cls.landmark_styles[instance.kind]
                draw_instance(
                    canvas, instance.points, detection.size, HAND_CONNECTIONS, style, HAND_CONNECTION_STYLE
                )


class EncodedHandConditioner(StandardHandConditioner):
    """As `hand_standard`, with the palm landmarks coloured by anatomical handedness."""

    name = "hand_encoded"
    landmark_styles = ENCODED_LANDMARK_STYLES
