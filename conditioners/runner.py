"""Run a conditioner over many images, overlapping I/O with detection.

MediaPipe releases the GIL while its graph runs, so decoding the next image, and drawing and
PNG-encoding the previous one, in a helper thread hides most of their cost behind the detector.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from .base import Conditioner
from .detection import Detection
from .drawing import Canvas
from .images import ImageLoadError, ImageSource, LoadedImage, describe_source


@dataclass
class Outcome:
    """One input's result: a detection and its drawing, or the error that made it unreadable."""

    index: int
    source: ImageSource
    name: str
    detection: Detection | None = None
    loaded: LoadedImage | None = None
    canvas: Canvas | None = None
    png: bytes | None = None
    error: ImageLoadError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def condition_many(
    conditioner: Conditioner,
    sources: Iterable[ImageSource],
    *,
    size: tuple[int, int] | None = None,
    encode_png: bool = True,
    render: bool = True,
    prefetch: int = 4,
    io_threads: int = 1,
) -> Iterator[Outcome]:
    """Yield an `Outcome` per source, in order. Memory is bounded by `prefetch` images.

    `render=False` leaves the drawing to the caller (a builder draws after resizing the photo)."""

    def load(source: ImageSource) -> LoadedImage | ImageLoadError:
        try:
            return conditioner.load(source, name=describe_source(source))
        except ImageLoadError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=io_threads, thread_name_prefix="condition-io") as pool:
        loads: deque[tuple[int, ImageSource, Future]] = deque()
        finished: deque[tuple[Outcome, Future | None]] = deque()
        source_iter = iter(enumerate(sources))

        def top_up() -> None:
            while len(loads) < prefetch:
                item = next(source_iter, None)
                if item is None:
                    return
                loads.append((item[0], item[1], pool.submit(load, item[1])))

        top_up()
        while loads:
            index, source, future = loads.popleft()
            top_up()
            loaded = future.result()
            finished.append(_process(conditioner, index, source, loaded, size, render, encode_png, pool))
            while finished and (len(finished) > prefetch or _ready(finished[0][1])):
                yield _complete(*finished.popleft())
        while finished:
            yield _complete(*finished.popleft())


def _process(
    conditioner, index, source, loaded, size, render, encode_png, pool
) -> tuple[Outcome, Future | None]:
    """Detect here; draw and encode in the helper thread, overlapped with the next detection."""
    if isinstance(loaded, ImageLoadError):
        return Outcome(index, source, loaded.source, error=loaded), None
    detection = conditioner.detect(loaded)
    outcome = Outcome(index, source, loaded.name, detection=detection, loaded=loaded)
    return outcome, pool.submit(_draw, conditioner, detection, size, encode_png) if render else None


def _draw(
    conditioner: Conditioner, detection: Detection, size, encode_png: bool
) -> tuple[Canvas, bytes | None]:
    canvas = conditioner.render(detection, size)
    return canvas, canvas.to_png() if encode_png else None


def _ready(future: Future | None) -> bool:
    return future is None or future.done()


def _complete(outcome: Outcome, drawing: Future | None) -> Outcome:
    if drawing is not None:
        outcome.canvas, outcome.png = drawing.result()
    return outcome
