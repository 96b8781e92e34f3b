"""Run a conditioner over many images, overlapping I/O with detection.

MediaPipe releases the GIL while its graph runs, so decoding the next image, and drawing and
PNG-encoding the previous one, in a helper thread hides most of their cost behind the detector.
Every input yields one `Conditioned`, in order; an unreadable one says so instead of raising.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from .base import Conditioned, Conditioner
from .detection import HintBox
from .images import ImageLoadError, ImageSource, LoadedImage, describe_source

# How a source becomes the pixels a detector sees; a build passes one that also frames the photo.
# (source, name, hints) -> the pixels; the hints let a hand search decode what it needs.
Loader = Callable[[ImageSource, str, Sequence[HintBox]], LoadedImage]
# What happens to a detected result just before it is drawn (a build frames the photo around it).
Finisher = Callable[[Conditioned], Conditioned]


def condition_many(
    conditioner: Conditioner,
    sources: Iterable[ImageSource],
    *,
    size: tuple[int, int] | None = None,
    encode_png: bool = True,
    render_skipped: bool = True,
    render: bool = True,
    load: Loader | None = None,
    prefetch: int = 4,
    io_threads: int = 1,
    hints: Sequence[Sequence[HintBox]] | None = None,
    before_draw: Finisher | None = None,
) -> Iterator[Conditioned]:
    """Yield a `Conditioned` per source, in order. Memory is bounded by `prefetch` images.

    `render_skipped=False` draws nothing for skipped images (a build stores none of them);
    `render=False` draws nothing at all (`evaluate` needs only the detections). `hints[i]` are the
    hint boxes of source i (input pixels), for conditioners that search regions. `before_draw` runs
    in the helper thread on each result about to be drawn and returns the result to draw: it may
    replace the detection (drawn at its own size) and the photo, or mark the result skipped."""
    load = load or conditioner.load

    def read(source: ImageSource, hinted: Sequence[HintBox]) -> LoadedImage | ImageLoadError:
        try:
            return load(source, describe_source(source), hinted)
        except ImageLoadError as exc:
            return exc

    def draw(result: Conditioned) -> Conditioned:
        if before_draw is not None:
            result = before_draw(result)
            if not result.ok or (result.skipped and not render_skipped):
                return result
        drawn = conditioner.conditioned(result.detection, size)
        result.canvas, result.extras = drawn.canvas, drawn.extras
        return result.encode() if encode_png else result

    with ThreadPoolExecutor(max_workers=io_threads, thread_name_prefix="condition-io") as pool:
        loads: deque[tuple[int, ImageSource, Future]] = deque()
        finished: deque[Future | Conditioned] = deque()
        source_iter = iter(enumerate(sources))

        def top_up() -> None:
            while len(loads) < prefetch:
                item = next(source_iter, None)
                if item is None:
                    return
                hinted = hints[item[0]] if hints else ()
                loads.append((item[0], item[1], pool.submit(read, item[1], hinted)))

        top_up()
        while loads:
            index, source, future = loads.popleft()
            top_up()
            result = _detect(conditioner, index, source, future.result(), hints[index] if hints else ())
            drawn = render and result.ok and (render_skipped or not result.skipped)
            finished.append(pool.submit(draw, result) if drawn else result)
            while finished and (len(finished) > prefetch or _ready(finished[0])):
                yield _result(finished.popleft())
        while finished:
            yield _result(finished.popleft())


def _detect(
    conditioner: Conditioner,
    index: int,
    source: ImageSource,
    loaded: LoadedImage | ImageLoadError,
    hints: Sequence[HintBox],
) -> Conditioned:
    if isinstance(loaded, ImageLoadError):
        return Conditioned(conditioner.unreadable(loaded), index=index, name=loaded.source, source=source)
    detection = conditioner.detect(loaded, hints=hints)
    return Conditioned(detection, photo=loaded, index=index, name=loaded.name, source=source)


def _ready(item: Future | Conditioned) -> bool:
    return not isinstance(item, Future) or item.done()


def _result(item: Future | Conditioned) -> Conditioned:
    return item.result() if isinstance(item, Future) else item
