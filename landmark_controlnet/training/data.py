"""The input pipeline: no torch, each host reads only its own rows, exact resume.

Rows are decoded, resized and centre-cropped in background threads, and whole batches are put
on the devices ahead of the step that needs them. Pictures stay uint8 (0..255) up to the devices,
a quarter of float32's bytes to transfer; the step scales them there (`diffusion.pixels`). Which
rows a host reads at a given step depends only on (seed, step), so a resumed run reads exactly what
an uninterrupted run would have read:
- a map-style dataset is shuffled per epoch with a seed of (seed, epoch), cut into global
  batches, and host p reads the p-th slice of each global batch;
- a streamed dataset is split between hosts (`split_dataset_by_node`), shuffled with a buffer,
  and resumed by skipping the rows this host had already consumed in the current epoch.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import cv2
import datasets
import numpy as np
from PIL import Image

import conditioners
from builders.rows import caption_text, decode
from conditioners import Detection
from conditioners.errors import OptionError
from conditioners.images import center_crop_framing, resize_and_crop

SHUFFLE_BUFFER = 1000
ROW_INDEX = "__row_index__"  # a map-style row's index in the dataset, which --cache_latents keys on
Prepare = Callable[[dict[str, Any], np.random.Generator], dict[str, Any]]


@dataclass
class Columns:
    image: str = "image"
    conditioning_image: str = "conditioning_image"
    caption: str = "caption"
    landmarks: str = "landmarks"
    mask: str | None = None  # inpainting runs only
    original_size: str = "original_size"  # SDXL's size conditioning, when the builder recorded it
    crop_top_left: str = "crop_top_left"

    def check(self, dataset: datasets.Dataset | datasets.IterableDataset) -> None:
        available = list(dataset.features or {})
        for flag, column in [
            ("--image_column", self.image),
            ("--conditioning_image_column", self.conditioning_image),
            ("--caption_column", self.caption),
            *([("--mask_column", self.mask)] if self.mask else []),
        ]:
            if available and column not in available:
                raise OptionError(f"{flag} {column!r} is not a column of the dataset; it has {available}")

    def raw(self, dataset: datasets.Dataset | datasets.IterableDataset) -> Any:
        """Images as bytes: decoding happens in our threads, not in `datasets`."""
        for column in (self.image, self.conditioning_image, self.mask):
            if column:
                dataset = dataset.cast_column(column, datasets.Image(decode=False))
        return dataset


# -- one example ------------------------------------------------------------------------------
@dataclass
class ExampleOptions:
    resolution: int
    random_flip: bool = False
    proportion_empty_prompts: float = 0.0
    mask_dilation: float = 0.0  # the largest random dilation of an inpainting mask, x resolution
    size_ids: bool = False  # SDXL: each example gets its six `time_ids`


def frame(image: Image.Image, resolution: int) -> Image.Image:
    """How training frames every picture of a row (photo, conditioning image, mask): the short side
    resized to `resolution` (bilinear), the long side centre-cropped. Validation frames its pictures
    with this too, so that it shows the model what training showed it."""
    return resize_and_crop(image, resolution, Image.Resampling.BILINEAR)


def conditioning_values(conditioning: Image.Image) -> np.ndarray:
    """A framed RGB conditioning image as the loader sends it: (H, W, 3) uint8; the step scales it to
    the ControlNet's [0, 1] (`conditioning_input`)."""
    return np.asarray(conditioning, np.uint8)


def prepare_mask(mask: Image.Image, resolution: int, radius: int = 0) -> np.ndarray:
    """An L mask framed as training frames it, thresholded and grown by `radius` px: (H, W, 1) uint8,
    255 = repaint, 0 = keep."""
    return dilate(frame(mask, resolution), radius)


def flipped_conditioning(conditioning: Image.Image, landmarks: str | None) -> Image.Image:
    """The conditioning image of the mirrored photo.

    Re-drawn from the stored landmarks with left and right swapped: mirroring the pixels of a
    hand_encoded or face_pupils drawing would paint a left hand in right-hand colours."""
    if not landmarks:
        return conditioning.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    detection = Detection.from_json(landmarks).mirrored()
    return Image.fromarray(conditioners.draw(detection, conditioning.size))


def example_draws(options: ExampleOptions, rng: np.random.Generator) -> tuple[bool, bool]:
    """(mirror the row, train it on the empty prompt): the first draws of a row's generator, so that
    cached and uncached examples of one row at one step make the same choices."""
    flip, empty = rng.random(2)
    return bool(options.random_flip and flip < 0.5), bool(empty < options.proportion_empty_prompts)


def row_name(row: dict[str, Any]) -> str:
    return str(row.get("source_id") or "row")


def photo_values(photo: Image.Image, resolution: int, flip: bool) -> np.ndarray:
    """A decoded photo, mirrored or not, framed: (H, W, 3) uint8; the step scales it to the VAE's
    [-1, 1] (`photo_input`). Resizing gives 8-bit pixels already: no precision is lost."""
    photo = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else photo
    return np.asarray(frame(photo, resolution), np.uint8)


def prepare_conditioning(
    row: dict[str, Any], columns: Columns, options: ExampleOptions, flip: bool
) -> dict[str, np.ndarray]:
    """The row's conditioning image (re-drawn mirrored when `flip`) as the ControlNet's input, and for
    SDXL the row's `time_ids`."""
    conditioning = decode(row[columns.conditioning_image], f"{row_name(row)} (conditioning)")
    prepared = {}
    if options.size_ids:
        prepared["time_ids"] = size_ids(row, columns, conditioning.size, options.resolution)
    if flip:
        conditioning = flipped_conditioning(conditioning, row.get(columns.landmarks))
    prepared["conditioning_pixel_values"] = conditioning_values(frame(conditioning, options.resolution))
    return prepared


def size_ids(
    row: dict[str, Any], columns: Columns, stored_size: tuple[int, int], resolution: int
) -> np.ndarray:
    """SDXL's (original height, original width, crop top, crop left, target height, target width).

    The builder's `original_size` and `crop_top_left` (in the stored picture's scale) when the row has
    them, else the stored picture's own size and no crop; then training's own centre crop, added in
    the framed scale, as SDXL counts crops in the resized frame. The stored size is the conditioning
    image's, which the builders write at the photo's size. A mirrored row keeps its ids: a centred
    crop mirrors onto itself."""
    framing = center_crop_framing(stored_size, resolution)
    original, crop = row.get(columns.original_size), row.get(columns.crop_top_left)
    if original is None or crop is None:
        original, crop = (stored_size[1], stored_size[0]), (0, 0)
    scale_x, scale_y = framing.scale
    top = round(crop[0] * scale_y) + framing.offset[1]
    left = round(crop[1] * scale_x) + framing.offset[0]
    return np.array([original[0], original[1], top, left, resolution, resolution], np.float32)


def prepare_example(
    row: dict[str, Any], columns: Columns, options: ExampleOptions, rng: np.random.Generator
) -> dict[str, Any]:
    """The photo's and the conditioning image's pixels, both (H, W, 3) uint8, the caption, and for
    inpainting rows the mask, (H, W, 1) uint8 (255 = repaint), randomly dilated."""
    name = row_name(row)
    flip, empty = example_draws(options, rng)
    photo = decode(row[columns.image], name)
    example = {
        "pixel_values": photo_values(photo, options.resolution, flip),
        **prepare_conditioning(row, columns, options, flip),
        "caption": "" if empty else caption_text(row[columns.caption]),
    }
    if columns.mask:
        mask = decode_mask(row[columns.mask], f"{name} (mask)")
        mask = mask.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else mask
        radius = int(rng.integers(0, round(options.mask_dilation * options.resolution) + 1))
        example["mask"] = prepare_mask(mask, options.resolution, radius)
    return example


def decode_mask(value: Any, name: str) -> Image.Image:
    """A mask cell as an L image (white = repaint); colour masks are reduced to their luminance."""
    return decode(value, name).convert("L")


def dilate(mask: Image.Image, radius: int) -> np.ndarray:
    """(H, W, 1) uint8, 255 or 0: the mask thresholded at half, grown by a disc of `radius` px."""
    binary = (np.asarray(mask) >= 128).astype(np.uint8) * 255
    if radius > 0:
        binary = cv2.dilate(binary, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2))
    return binary[..., None]


# -- which rows, in which order ---------------------------------------------------------------
@dataclass
class Layout:
    """How a micro-batch is split: `host_batch` rows on each of `num_hosts` hosts."""

    host_batch: int
    num_hosts: int = 1
    host_index: int = 0

    @property
    def global_batch(self) -> int:
        return self.host_batch * self.num_hosts


def rows_of(columns: dict[str, list]) -> list[dict[str, Any]]:
    """A batch of `datasets` columns ({name: values}) as rows ([{name: value}])."""
    return [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]


class IndexedRows:
    """Map-style dataset: micro-batch b of the run is a fixed slice of a per-epoch permutation."""

    def __init__(self, dataset: datasets.Dataset, layout: Layout, seed: int):
        if len(dataset) < layout.global_batch:
            raise OptionError(
                f"the dataset has {len(dataset)} rows, fewer than one global batch of {layout.global_batch} "
                "(train_batch_size x devices); lower --train_batch_size or add rows"
            )
        self.dataset = dataset
        self.layout = layout
        self.seed = seed
        self.batches_per_epoch = len(dataset) // layout.global_batch  # the last partial batch is dropped
        self._permutation: tuple[int, np.ndarray] | None = None

    def indices(self, batch: int) -> np.ndarray:
        epoch, k = divmod(batch, self.batches_per_epoch)
        if self._permutation is None or self._permutation[0] != epoch:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))
            self._permutation = (epoch, order)
        start = k * self.layout.global_batch + self.layout.host_index * self.layout.host_batch
        return self._permutation[1][start : start + self.layout.host_batch]

    def batches(self, first_batch: int) -> Iterator[tuple[list[dict[str, Any]], dict[str, int]]]:
        batch = first_batch
        while True:
            indices = self.indices(batch)
            rows = rows_of(self.dataset[indices.tolist()])
            for row, index in zip(rows, indices.tolist(), strict=True):
                row[ROW_INDEX] = index
            batch += 1
            yield rows, {"batch": batch, "epoch": batch // self.batches_per_epoch}


class StreamedRows:
    """Streamed dataset: this host's part of the stream, epoch after epoch."""

    def __init__(self, dataset: datasets.IterableDataset, layout: Layout, seed: int):
        from datasets.distributed import split_dataset_by_node

        self.dataset = split_dataset_by_node(dataset, rank=layout.host_index, world_size=layout.num_hosts)
        self.layout = layout
        self.seed = seed

    def batches(
        self, epoch: int, rows_in_epoch: int
    ) -> Iterator[tuple[list[dict[str, Any]], dict[str, int]]]:
        while True:
            stream = self.dataset.shuffle(seed=self.seed, buffer_size=SHUFFLE_BUFFER)
            stream.set_epoch(epoch)
            rows: list[dict[str, Any]] = []
            for row in stream.skip(rows_in_epoch):
                rows.append(row)
                if len(rows) == self.layout.host_batch:
                    rows_in_epoch += len(rows)
                    yield rows, {"epoch": epoch, "rows_in_epoch": rows_in_epoch}
                    rows = []
            if rows_in_epoch == 0:
                raise OptionError(f"the stream gives host {self.layout.host_index} less than one batch")
            epoch, rows_in_epoch = epoch + 1, 0


# -- batches on the devices -------------------------------------------------------------------
class BatchLoader:
    """Turns row batches into numpy batches in threads, stacked into `accumulation` micro-batches.

    `prepare(row, rng)` makes one example (`prepare_example`, or a cached one); a "caption" it
    returns is tokenised by `tokenize` into the token ids of every text encoder, by batch key."""

    def __init__(
        self,
        rows: Iterator[tuple[list[dict[str, Any]], dict[str, int]]],
        prepare: Prepare,
        tokenize: Callable[[list[str]], dict[str, np.ndarray]],
        accumulation: int,
        seed: int,
        first_micro_batch: int = 0,
        threads: int = 4,
    ):
        self.rows = rows
        self.prepare = prepare
        self.tokenize = tokenize
        self.accumulation = accumulation
        self.seed = seed
        self.first_micro_batch = first_micro_batch  # per-row randomness is keyed by it: exact resume
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="decode")

    def micro_batch(self, rows: list[dict[str, Any]], number: int) -> dict[str, np.ndarray]:
        rngs = [np.random.default_rng([self.seed, number, i]) for i in range(len(rows))]
        prepared = list(self.pool.map(self.prepare, rows, rngs))
        batch = {key: np.stack([e[key] for e in prepared]) for key in prepared[0] if key != "caption"}
        if "caption" in prepared[0]:
            batch.update(self.tokenize([e["caption"] for e in prepared]))
        return batch

    def __iter__(self) -> Iterator[tuple[dict[str, np.ndarray], dict[str, int]]]:
        number = self.first_micro_batch
        while True:
            micro = []
            for _ in range(self.accumulation):
                rows, position = next(self.rows)
                micro.append(self.micro_batch(rows, number))
                number += 1
            yield {key: np.stack([m[key] for m in micro]) for key in micro[0]}, position


def prefetch(iterator: Iterator[Any], put: Callable[[Any], Any], depth: int = 2) -> Iterator[Any]:
    """Run `iterator` in a background thread, `put` each item on the devices, keep `depth` ready.

    Closing the generator stops the thread and waits for it: a thread still running JAX while
    the interpreter exits aborts the process ("terminate called without an active exception").
    """
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def offer(item: Any) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch, position in iterator:
                if stop.is_set() or not offer((put(batch), position)):
                    return
        except BaseException as exc:  # surfaced in the training loop, not lost in a thread
            offer(exc)
        offer(done)

    thread = threading.Thread(target=produce, daemon=True, name="prefetch")
    thread.start()
    try:
        while (item := ready.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=120)  # a batch being read finishes; a hung read does not hang the exit
