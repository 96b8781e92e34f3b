"""Turning one chunk of source items into one Parquet shard (runs in each build process)."""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from PIL import Image

import conditioners
from conditioners import Conditioned, HintBox, SkipReason, condition_many
from conditioners.images import (
    Framing,
    ImageLoadError,
    ImageSource,
    LoadedImage,
    center_crop_framing,
    encode_jpeg,
    load_image,
    read_image_size,
    resize_and_crop,
    scaled_size,
)

from .captioners import CaptionInput, make_captioner
from .framing import HandFraming
from .parquet import ShardWriter
from .recipe import Recipe
from .sources import Source, SourceItem
from .storage import Folder

# What SDXL's size conditioning (its `time_ids`) needs from each row, in SDXL's conventions:
# `original_size` is [height, width] of the source photo, upright (EXIF orientation applied) and at
# full resolution; `crop_top_left` is [top, left] of `image` inside that photo resized to `image`'s
# scale ([0, 0] when the row stores the photo itself). The target size is `image`'s own size.
SIZE_FEATURES = {
    "original_size": datasets.Sequence(datasets.Value("int32"), length=2),
    "crop_top_left": datasets.Sequence(datasets.Value("int32"), length=2),
}
ROW_FEATURES = {
    "image": datasets.Image(),
    "conditioning_image": datasets.Image(),
    "caption": datasets.Value("string"),
    "landmarks": datasets.Value("string"),
    "source_id": datasets.Value("string"),
    **SIZE_FEATURES,
}
EMPTY_DRAWING = str(SkipReason.EMPTY_DRAWING)
Progress = Callable[[str], None]


def dataset_features(source: Source, recipe: Recipe) -> datasets.Features:
    """The row columns, the conditioner's extra images (an inpainting `mask`) and the source's own."""
    extra_images = conditioners.conditioner_class(recipe.conditioner_name).extra_images
    return datasets.Features(
        {**ROW_FEATURES, **{name: datasets.Image() for name in extra_images}, **source.features()}
    )


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.parquet"


def empty_marker_name(split: str, index: int) -> str:
    """Where a chunk that kept no row records its counts (hidden: not part of the dataset)."""
    return f"{EMPTY_DIR}/{split}-{index:05d}.json"


EMPTY_DIR = ".empty_chunks"
HELD_OUT_SPLIT = "validation"


@dataclass(frozen=True)
class Splits:
    """Where a chunk's rows go: `main`, except a `held_out_fraction` of source ids, chosen by a hash
    of the id (the same rows on every build and every machine), which go to `validation`."""

    main: str = "train"
    held_out_fraction: float = 0.0

    def of(self, source_id: str) -> str:
        if self.held_out_fraction <= 0:
            return self.main
        digest = hashlib.sha256(source_id.encode()).digest()
        return (
            HELD_OUT_SPLIT
            if int.from_bytes(digest[:8], "big") < self.held_out_fraction * 2**64
            else self.main
        )


@dataclass
class Chunk:
    index: int
    items: list[SourceItem]


@dataclass
class StoredPhoto(LoadedImage):
    """A photo framed as the recipe asks: `pixels` at detection scale, `stored` the row's JPEG, cut
    from the full-size upright photo by `framing` (`size` is the stored image's)."""

    stored: bytes = b""


@dataclass
class FramedResult(Conditioned):
    """A result framed after detection (`frame = "hands"`): `detection` is the stored one (the whole
    photo's detection, framed), `photo` still the picture the detector saw (less its full-size
    pixels), and `stored` the row's picture."""

    stored: StoredPhoto | None = None


@dataclass
class _Row:
    item: SourceItem
    result: Conditioned

    @property
    def photo(self) -> LoadedImage:
        """The picture the row stores: framed after detection, or as the detector saw it."""
        if isinstance(self.result, FramedResult) and self.result.stored is not None:
            return self.result.stored
        return self.result.photo

    @property
    def image_cell(self) -> dict[str, Any]:
        photo, name = self.photo, Path(self.item.name).name
        if isinstance(photo, StoredPhoto):  # re-encoded: the name must not claim another format
            return {"bytes": photo.stored, "path": str(Path(name).with_suffix(".jpg"))}
        return {"bytes": self.result.source, "path": name}

    @property
    def size_cells(self) -> dict[str, list[int]]:
        """`SIZE_FEATURES`: the source photo's upright full size and where the stored image was cut."""
        photo = self.photo
        if isinstance(photo, StoredPhoto):
            (width, height), (left, top) = photo.framing.source_size, photo.framing.offset
        else:  # the photo itself, whose full upright size `load_image` gives
            (width, height), (left, top) = photo.size, (0, 0)
        return {"original_size": [height, width], "crop_top_left": [top, left]}


class ChunkProcessor:
    """Holds one conditioner and one captioner for the life of a build process."""

    def __init__(self, recipe: Recipe, features: datasets.Features, row_group_size: int = 64):
        self.recipe = recipe
        self.features = features
        self.row_group_size = row_group_size
        self.conditioner = conditioners.get(recipe.conditioner_name, **recipe.conditioner_options)
        self.captioner = make_captioner(recipe.captioner_type, **recipe.captioner_options)
        extra_images = set(self.conditioner.extra_images)
        self.source_columns = [k for k in features if k not in ROW_FEATURES and k not in extra_images]
        # A resumed build of a folder whose shards predate them writes none (see engine.written_features).
        self.size_columns = [k for k in SIZE_FEATURES if k in features]
        self.hand_framing = (
            HandFraming(recipe.resize_short_side, recipe.hand_context, recipe.min_side)
            if recipe.frame == "hands"
            else None
        )

    def close(self) -> None:
        self.conditioner.close()

    def run(
        self, chunk: Chunk, data: Folder, splits: Splits, progress: Progress | None = None
    ) -> dict[str, Any]:
        """Write the shard of `chunk` into `data` (and its held-out rows' shard); return its counts.

        The main split's shard (or empty marker) is published last: it is the record that the chunk
        is done, so a build killed between the two re-runs the chunk and rewrites both."""
        names = {splits.main, HELD_OUT_SPLIT} if splits.held_out_fraction > 0 else {splits.main}
        writers = {
            name: ShardWriter(data, shard_name(name, chunk.index), self.features, self.row_group_size)
            for name in names
        }
        skipped: Counter[str] = Counter()
        kept: Counter[str] = Counter()  # by split
        pending: dict[str, list[_Row]] = {name: [] for name in names}
        hints: Counter[str] = Counter()  # hinted hands searched and not found (hands, not images)
        results = condition_many(
            self.conditioner,
            _read(chunk.items),
            render_skipped=False,
            load=self.load,
            before_draw=self.frame_around_hands if self.hand_framing else None,
            hints=[item.hints for item in chunk.items],  # source pixels: `load`'s framing maps them
        )
        try:
            for result in results:
                hints.update(_hint_counts(result))
                reason = _skip_reason(result)
                if progress:
                    progress(reason or "kept")
                if reason:
                    skipped[reason] += 1
                else:
                    item = chunk.items[result.index]
                    split = splits.of(item.source_id)
                    pending[split].append(_Row(item, result))
                    kept[split] += 1
                for name, rows in pending.items():
                    if len(rows) >= self.captioner.batch_size:
                        self._write(writers[name], rows)
            for name, rows in pending.items():
                self._write(writers[name], rows)
        except BaseException:
            for writer in writers.values():
                writer.abort()
            raise
        summary = {
            "items": len(chunk.items),
            "kept": kept[splits.main],
            "skipped": dict(sorted(skipped.items())),
            "hints": hints["hints"],
            "hint_not_found": hints["hint_not_found"],
            "source_ids": [item.source_id for item in chunk.items],  # what the chunk held: see ChunkPlan
        }
        if HELD_OUT_SPLIT in writers:  # its counts hold rows only: the items are the main split's
            writers.pop(HELD_OUT_SPLIT).close({"items": 0, "kept": kept[HELD_OUT_SPLIT], "skipped": {}})
            summary["held_out"] = kept[HELD_OUT_SPLIT]
        if not writers[splits.main].close(summary):
            data.write_text(empty_marker_name(splits.main, chunk.index), json.dumps(summary))
        return summary

    def load(self, source: ImageSource, name: str, hints: Sequence[HintBox] = ()) -> LoadedImage:
        """Decode once: the detector's pixels and, when the recipe frames photos, the stored JPEG.

        Runs in the runner's helper thread, overlapped with detection. `frame = "hands"` loads the
        whole photo as the conditioner does (its hand search sees full resolution); the picture to
        store is cut after detection, in `frame_around_hands`."""
        short_side = self.recipe.resize_short_side
        if not short_side or self.hand_framing:
            return self.conditioner.load(source, name, hints)
        width, height = read_image_size(source, name)
        detail = math.ceil(short_side * max(width, height) / max(1, min(width, height)))
        full = load_image(source, long_side=detail, name=name)  # JPEGs decode at reduced scale
        if min(full.size) < max(self.conditioner.min_workable_side, self.conditioner.filters.min_image_side):
            return full  # skipped as image_too_small; never blown up to the frame size
        # Framed from the full upright size, so that the crop the row records is exact; the reduced
        # decode is resized straight to that framing's frame.
        framing = center_crop_framing(full.size, short_side)
        decoded = (full.pixels.shape[1], full.pixels.shape[0])
        framed = resize_and_crop(full.pixels, replace(framing, source_size=decoded), Image.Resampling.LANCZOS)
        detected = framed.resize(scaled_size(framed.size, self.conditioner.detect_long_side))
        return StoredPhoto(
            np.asarray(detected),
            framed.size,
            name,
            detail=np.asarray(framed) if framed.size != detected.size else None,  # for a hand search
            framing=framing,
            stored=encode_jpeg(framed),
        )

    def frame_around_hands(self, result: Conditioned) -> Conditioned:
        """`frame = "hands"`: cut the picture to store around the hands found in the whole photo and
        frame the detection the same way, so that the conditioning image is drawn at the stored size
        from the stored landmarks. Runs in the runner's helper thread, after detection and before
        drawing; only for results that are kept."""
        photo = result.photo
        framing, record = self.hand_framing.framing(result.detection)
        try:
            pixels = _whole_photo(photo, framing, result.source)
        except ImageLoadError as exc:  # decoded once already; only a changed file gets here
            result.detection = self.conditioner.unreadable(exc)
            return result
        decoded = (pixels.shape[1], pixels.shape[0])
        framed = resize_and_crop(pixels, replace(framing, source_size=decoded), Image.Resampling.LANCZOS)
        detected = framed.resize(scaled_size(framed.size, self.conditioner.detect_long_side))
        detection = result.detection.framed(framing)
        values = {f.name: getattr(result, f.name) for f in fields(Conditioned)}
        return FramedResult(
            **{
                **values,
                "detection": replace(detection, extra={**detection.extra, "framing": record}),
                "photo": replace(
                    photo, detail=None, decode_detail=None
                ),  # the full-size pixels are done with
            },
            stored=StoredPhoto(
                np.asarray(detected), framed.size, photo.name, framing=framing, stored=encode_jpeg(framed)
            ),
        )

    def _write(self, writer: ShardWriter, rows: list[_Row]) -> None:
        if not rows:
            return
        captions = self.captioner([CaptionInput(r.item, r.photo.pixels, r.result.detection) for r in rows])
        for row, caption in zip(rows, captions, strict=True):
            result = row.result
            writer.write(
                {
                    "image": row.image_cell,
                    "conditioning_image": {"bytes": result.png, "path": None},
                    **{name: {"bytes": png, "path": None} for name, png in result.extra_pngs.items()},
                    "caption": caption,
                    "landmarks": result.detection.to_json(),
                    "source_id": row.item.source_id,
                    **{key: cell for key, cell in row.size_cells.items() if key in self.size_columns},
                    **{key: row.item.extra.get(key) for key in self.source_columns},
                }
            )
        rows.clear()


def _hint_counts(result: Conditioned) -> dict[str, int]:
    """What the conditioner's search reports: `hints`, the hint boxes it searched (those it could use
    in the picture it saw), and `hint_not_found`, how many of them no pass found a hand in. Counted
    whether the item was kept or skipped (a photo whose hands were all missed is skipped as
    `no_detection`); nothing where the conditioner searched no hints."""
    extra = result.detection.extra
    if "hint_not_found" not in extra:
        return {}
    return {"hints": int(extra.get("hints", 0)), "hint_not_found": int(extra["hint_not_found"])}


def _whole_photo(photo: LoadedImage, framing: Framing, source: ImageSource) -> np.ndarray:
    """The whole photo with at least the detail of `framing`'s resized frame: the loaded pixels that
    have it (a hand conditioner's full-size `detail`), else the photo decoded again at that size."""
    needed = min(framing.resized_size[0], photo.size[0])
    for pixels in (photo.sharpest(), photo.pixels):
        if pixels is not None and pixels.shape[1] >= needed:
            return pixels
    return load_image(source, long_side=max(framing.resized_size), name=photo.name).pixels


def _skip_reason(result: Conditioned) -> str | None:
    if result.skipped:
        return str(result.skipped)
    return EMPTY_DRAWING if result.canvas.is_empty() else None


def _read(items: list[SourceItem]) -> Iterator[bytes | str]:
    """Item bytes for the runner; an unreadable path is passed on so that it fails as unreadable."""
    for item in items:
        try:
            yield item.read_bytes()
        except OSError:
            yield item.name
