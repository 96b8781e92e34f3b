"""The `Conditioner` base class: detection, filtering and drawing behind one callable.

A subclass supplies three things:
- `_create_detector()` builds the (expensive) detector once; it is reused for every image;
- `_detect(pixels)` returns instances with *normalised* coordinates for one RGB array;
- `paint(canvas, detection)` draws a detection; it is a pure classmethod (no detector).
"""

from __future__ import annotations

import atexit
import contextlib
import weakref
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from .detection import Detection, HintBox, Instance, SkipReason
from .drawing import Canvas
from .errors import UserError
from .filters import Filters
from .images import ImageLoadError, ImageSource, LoadedImage, encode_png, load_image


@dataclass
class Conditioned:
    """One input's result: its detection, its conditioning image and every extra image.

    `condition_many` also records where it came from (`index`, `name`, `source`), the pixels the
    detector saw (`photo`) and the encoded PNGs. An unreadable input has a result too:
    `skipped == "unreadable"`, the reason in `detection.skip_message`, and no images."""

    detection: Detection
    canvas: Canvas | None = None
    # The conditioner's `extra_images` (e.g. the inpainting "mask"), (h, w) uint8 each.
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    png: bytes | None = None
    extra_pngs: dict[str, bytes] = field(default_factory=dict)
    photo: LoadedImage | None = None
    index: int = 0
    name: str = ""
    source: ImageSource | None = None

    @property
    def skipped(self) -> str | None:
        return self.detection.skipped

    @property
    def ok(self) -> bool:
        """Whether the input could be read (a readable image may still be skipped)."""
        return self.detection.skipped != SkipReason.UNREADABLE

    @property
    def image(self) -> Image.Image:
        """The conditioning image (palette mode; `.convert("RGB")` for RGB)."""
        return self.canvas.to_image()

    def extra_image(self, name: str) -> Image.Image:
        return Image.fromarray(self.extras[name], "L")

    def to_array(self) -> np.ndarray:
        return self.canvas.to_array()

    def to_png(self) -> bytes:
        return self.png if self.png is not None else self.canvas.to_png()

    def encode(self) -> Conditioned:
        """Fill in `png` and `extra_pngs` (the runner does this in its helper thread)."""
        self.png = self.canvas.to_png()
        self.extra_pngs = {name: encode_png(self.extra_image(name)) for name in self.extras}
        return self


# Conditioners not yet closed. Their native detectors are closed at exit, before the interpreter
# tears down: a MediaPipe graph closed by the garbage collector during shutdown can hang forever.
_LIVE: weakref.WeakSet[Conditioner] = weakref.WeakSet()


@atexit.register
def _close_live_conditioners() -> None:
    for conditioner in list(_LIVE):
        with contextlib.suppress(Exception):
            conditioner.close()


class Conditioner(ABC):
    """Base class; use as a context manager so the detector is released."""

    name: ClassVar[str] = ""
    detector_name: ClassVar[str] = ""
    detector_version: ClassVar[str] = ""
    # Whether the spec's colours are BGR and the finished image is channel-reversed.
    reverse_channels: ClassVar[bool] = False
    default_filters: ClassVar[Filters] = Filters()
    # Single-channel images drawn beside the conditioning image; each is a column of a built dataset.
    extra_images: ClassVar[tuple[str, ...]] = ()
    # The shorter image side below which the detector cannot work (measured per detector); such
    # images are skipped as `image_too_small` before detection.
    min_workable_side: ClassVar[int] = 1
    # Landmark indices whose error `evaluate` also reports on their own (the pupils, for gaze).
    focus_points: ClassVar[tuple[int, ...]] = ()

    def __init__(
        self,
        *,
        detect_long_side: int | None = 512,
        min_image_side: int | None = None,
        min_instance_size: float | None = None,
        min_keypoint_fraction: float | None = None,
        max_instances: int | None = None,
    ):
        self.detect_long_side = detect_long_side
        overrides = {
            "min_image_side": min_image_side,
            "min_instance_size": min_instance_size,
            "min_keypoint_fraction": min_keypoint_fraction,
            "max_instances": max_instances,
        }
        self.filters = replace(self.default_filters, **{k: v for k, v in overrides.items() if v is not None})
        self._detector: Any = None
        _LIVE.add(self)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this conditioner cannot run on this machine (a missing extra or weights), or None.

        Checks locally only: nothing is downloaded. Conditioners bundled with their weights
        (MediaPipe's) are always available.
        """
        return None

    # -- lifecycle -----------------------------------------------------------------------
    @property
    def detector(self) -> Any:
        if self._detector is None:
            self._detector = self._create_detector()
        return self._detector

    def close(self) -> None:
        if self._detector is not None:
            closer = getattr(self._detector, "close", None)
            if closer:
                closer()
            self._detector = None

    def __enter__(self) -> Conditioner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # a forgotten close() must not leak native detector threads
        with contextlib.suppress(Exception):
            self.close()

    # -- detection -----------------------------------------------------------------------
    def load(
        self, source: ImageSource, name: str | None = None, hints: Sequence[HintBox] = ()
    ) -> LoadedImage:
        """The detector's copy of `source` (long side `detect_long_side`). `hints` (the ones that
        `detect` will get) let a conditioner that searches them decode what the search needs."""
        return self.decode(source, name, self.detect_long_side)

    def decode(self, source: ImageSource, name: str | None, long_side: int | None) -> LoadedImage:
        """Every decode of a conditioner goes through here."""
        return load_image(source, long_side=long_side, name=name)

    def detect(
        self,
        source: ImageSource | LoadedImage,
        name: str | None = None,
        hints: Sequence[HintBox] = (),
    ) -> Detection:
        """Detect, map to input pixels and filter. Raises `ImageLoadError` for unreadable input.

        `hints` are boxes (input pixels) where the caller knows an instance to be; conditioners that
        search regions look there closely, the others ignore them. An exception inside the detector
        skips this image as `detector_error` (with the message), so one bad image never ends a run;
        missing weights and other `UserError`s still raise."""
        loaded = source if isinstance(source, LoadedImage) else self.load(source, name)
        detection = self.empty_detection(loaded.size)
        if self._too_small(loaded):  # the detector is not run at all
            return detection.with_instances([], SkipReason.IMAGE_TOO_SMALL)
        self.detector  # noqa: B018 -- built outside the guard below: a missing model is not per image
        try:
            detection = self._find(loaded, detection, loaded.hints_here(hints))
        except UserError:
            raise
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            return replace(detection, skipped=SkipReason.DETECTOR_ERROR, skip_message=message)
        return self.filter(detection)

    def _find(self, loaded: LoadedImage, detection: Detection, hints: Sequence[HintBox]) -> Detection:
        """`detection` with the instances found in `loaded`, in input pixels (before the filters).

        One detector pass over the whole picture; the hand conditioners add their region search."""
        return replace(detection, instances=self.detect_pixels(loaded.pixels, loaded.size))

    def detect_pixels(self, pixels: np.ndarray, size: tuple[int, int]) -> list[Instance]:
        """One detector pass over `pixels`, its instances mapped to an image of `size`."""
        return [_to_pixels(instance, size) for instance in self._detect(pixels)]

    def empty_detection(
        self, size: tuple[int, int], skipped: str | None = None, message: str | None = None
    ) -> Detection:
        """A detection of this conditioner with no instances (`skipped` says why, if it is one)."""
        return Detection(
            conditioner=self.name,
            width=size[0],
            height=size[1],
            detector=self.detector_name,
            detector_version=self.detector_version,
            skipped=skipped,
            skip_message=message,
        )

    def unreadable(self, error: ImageLoadError) -> Detection:
        return self.empty_detection((0, 0), SkipReason.UNREADABLE, error.reason)

    def _too_small(self, loaded: LoadedImage) -> bool:
        """Below the filter's `min_image_side` (full size) or the detector's workable size (the
        pixels it would get)."""
        detector_side = min(loaded.pixels.shape[:2])
        return min(loaded.size) < self.filters.min_image_side or detector_side < self.min_workable_side

    def filter(self, detection: Detection) -> Detection:
        return self.filters.apply(detection)

    def __call__(
        self,
        source: ImageSource | LoadedImage,
        size: tuple[int, int] | None = None,
        hints: Sequence[HintBox] = (),
    ) -> Conditioned:
        return self.conditioned(self.detect(source, hints=hints), size)

    @classmethod
    def conditioned(cls, detection: Detection, size: tuple[int, int] | None = None) -> Conditioned:
        """`detection` with its conditioning image and extra images drawn at `size` (pure)."""
        extras = {name: cls.render_extra(name, detection, size) for name in cls.extra_images}
        return Conditioned(detection, cls.render(detection, size), extras)

    # -- drawing -------------------------------------------------------------------------
    @classmethod
    def render(cls, detection: Detection, size: tuple[int, int] | None = None) -> Canvas:
        canvas = Canvas(size or detection.size, reverse_channels=cls.reverse_channels)
        cls.paint(canvas, detection)
        return canvas

    @classmethod
    def draw(cls, detection: Detection, size: tuple[int, int] | None = None) -> np.ndarray:
        """Pure drawing: (h, w, 3) uint8 RGB, no detector involved."""
        return cls.render(detection, size).to_array()

    @classmethod
    def render_extra(cls, name: str, detection: Detection, size: tuple[int, int] | None = None) -> np.ndarray:
        """The extra image `name` (one of `extra_images`) as (h, w) uint8; pure, like `draw`."""
        raise KeyError(f"{cls.name} draws no extra image {name!r}; it has {list(cls.extra_images)}")

    @classmethod
    @abstractmethod
    def paint(cls, canvas: Canvas, detection: Detection) -> None:
        """Draw `detection` (input-pixel coordinates) onto `canvas` (any size)."""

    # -- subclass hooks ------------------------------------------------------------------
    @abstractmethod
    def _create_detector(self) -> Any:
        """Build the detector; called once, on first use."""

    @abstractmethod
    def _detect(self, pixels: np.ndarray) -> list[Instance]:
        """Instances in normalised [0, 1] image coordinates for one upright RGB array."""


def _to_pixels(instance: Instance, size: tuple[int, int]) -> Instance:
    """An instance in normalised coordinates mapped to the pixels of an image of `size`."""
    points = instance.points.copy()
    points[:, 0] *= size[0]
    points[:, 1] *= size[1]
    return replace(instance, points=points)
