"""People's poses for the hand search: MediaPipe Pose, one person or several.

The solutions backend's Pose finds one person per call, so `PeopleFinder` finds people one after
another, hiding each one found before looking again. The Tasks backend's PoseLandmarker finds up to
`num_poses` people at once, from Google's `pose_landmarker_full.task` (pinned by SHA-256).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np

from ._mediapipe import (
    landmarks_to_array,
    mediapipe_module,
    quiet_native_logs,
    solutions,
    task_landmarks_to_array,
    task_model,
    tasks_vision,
)
from .weights import WeightsNotFoundError, resolve_weights

log = logging.getLogger(__name__)

POSE_LANDMARKER = task_model(
    "pose_landmarker",
    "pose_landmarker/pose_landmarker_full/float16/1/pose_landmarker_full.task",
    "Pose Landmarker (full)",
    "9.4 MB",
    "5134a3aad27a58b93da0088d431f366da362b44e3ccfbe3462b3827a839011b1",
)
# A found person's landmark box grows by this share of its side before it is hidden.
HIDE_PADDING = 0.15
MIN_VISIBILITY = 0.3


class PeopleFinder:
    """Callable: an RGB array -> one (33, 4) array of normalised pose landmarks per person."""

    def __init__(self, backend: str, max_people: int, model_path: str | None = None, optional: bool = False):
        self.backend = backend
        self.max_people = max_people
        self.model_path = model_path
        # Optional (the "auto" search): a Tasks pose model that cannot be had turns the pass off,
        # with one warning, instead of failing every picture.
        self.optional = optional
        self._detector: Any = None
        self.off = False

    @property
    def detector(self) -> Any:
        if self._detector is None:
            self._detector = self._create()
        return self._detector

    def _create(self) -> Any:
        with quiet_native_logs():
            return self._new_detector()

    def _new_detector(self) -> Any:
        if self.backend == "solutions":
            # model_complexity 1: the only pose model bundled with mediapipe 0.10.21.
            return solutions().pose.Pose(static_image_mode=True, model_complexity=1)
        vision = tasks_vision()
        from mediapipe.tasks.python.core.base_options import BaseOptions

        options = vision.PoseLandmarkerOptions(
            base_options=BaseOptions(str(resolve_weights(POSE_LANDMARKER, self.model_path))),
            running_mode=vision.RunningMode.IMAGE,
            num_poses=self.max_people,
        )
        return vision.PoseLandmarker.create_from_options(options)

    def __call__(self, pixels: np.ndarray) -> Iterator[np.ndarray]:
        """Up to `max_people` people, each found only when the caller asks for the next one."""
        if self.off:
            return
        try:
            self.detector  # noqa: B018 -- built here, where a missing model can be handled
        except WeightsNotFoundError as exc:
            if not self.optional:
                raise
            log.warning("the hand search's pose pass is off (tiles stand in for it): %s", exc)
            self.off = True
            return
        if self.backend == "tasks":
            mp = mediapipe_module()
            image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(pixels))
            with quiet_native_logs():
                found_people = self.detector.detect(image).pose_landmarks
            yield from (task_landmarks_to_array(p) for p in found_people)
            return
        hidden = pixels
        for found_so_far in range(self.max_people):
            with quiet_native_logs():  # graphs log once they first find something
                found = self.detector.process(hidden).pose_landmarks
            if not found:
                return
            person = landmarks_to_array(found)
            yield person
            hidden = hide(hidden if found_so_far else pixels.copy(), person)

    def close(self) -> None:
        if self._detector is not None:
            self._detector.close()
            self._detector = None


def hide(pixels: np.ndarray, person: np.ndarray) -> np.ndarray:
    """`pixels` with the padded box of `person`'s visible landmarks painted over (in place)."""
    height, width = pixels.shape[:2]
    visible = person[np.nan_to_num(person[:, 3], nan=1.0) >= MIN_VISIBILITY, :2] * (width, height)
    if len(visible) == 0:
        visible = person[:, :2] * (width, height)
    (x0, y0), (x1, y1) = visible.min(axis=0), visible.max(axis=0)
    pad = HIDE_PADDING * max(x1 - x0, y1 - y0)
    left, top = int(max(x0 - pad, 0)), int(max(y0 - pad, 0))
    right, bottom = int(min(x1 + pad, width)), int(min(y1 + pad, height))
    pixels[top:bottom, left:right] = 0
    return pixels
