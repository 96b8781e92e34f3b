"""Turning one chunk of source items into one Parquet shard (runs in each build process)."""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
from PIL import Image

import conditioners
from conditioners import Detection, SkipReason
from conditioners.images import load_image
from conditioners.runner import Outcome, condition_many

from .captioners import CaptionInput, make_captioner
from .parquet import ShardWriter
from .recipe import Recipe
from .sources import Source, SourceItem
from .storage import Folder

ROW_FEATURES = {
    "image": datasets.Image(),
    "conditioning_image": datasets.Image(),
    "caption": datasets.Value("string"),
    "landmarks": datasets.Value("string"),
    "source_id": datasets.Value("string"),
}
UNREADABLE = str(SkipReason.UNREADABLE)
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


@dataclass
class Chunk:
    index: int
    items: list[SourceItem]


@dataclass
class _Row:
    item: SourceItem
    image_bytes: bytes
    png: bytes
    detection: Detection
    pixels: Any
    extra_pngs: dict[str, bytes]


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

    def close(self) -> None:
        self.conditioner.close()

    def run(self, chunk: Chunk, data: Folder, split: str, progress: Progress | None = None) -> dict[str, Any]:
        """Write the shard of `chunk` into `data`; return its counts (also stored in the shard)."""
        writer = ShardWriter(data, shard_name(split, chunk.index), self.features, self.row_group_size)
        counts: Counter[str] = Counter()
        pending: list[_Row] = []
        try:
            for outcome in condition_many(self.conditioner, _read(chunk.items), render=False):
                reason, row = self._row(chunk.items[outcome.index], outcome)
                counts[reason or "kept"] += 1
                if progress:
                    progress(reason or "kept")
                if row is not None:
                    pending.append(row)
                if len(pending) >= self.captioner.batch_size:
                    self._write(writer, pending)
            self._write(writer, pending)
        except BaseException:
            writer.abort()
            raise
        summary = {
            "items": len(chunk.items),
            "kept": counts.pop("kept", 0),
            "skipped": dict(sorted(counts.items())),
        }
        if not writer.close(summary):
            data.write_text(empty_marker_name(split, chunk.index), json.dumps(summary))
        return summary

    def _row(self, item: SourceItem, outcome: Outcome) -> tuple[str | None, _Row | None]:
        if not outcome.ok:
            return UNREADABLE, None
        detection = outcome.detection
        if detection.skipped:
            return str(detection.skipped), None
        image_bytes = outcome.source if isinstance(outcome.source, bytes) else item.read_bytes()
        if self.recipe.resize_short_side:
            image_bytes, detection = resize_and_crop(image_bytes, detection, self.recipe.resize_short_side)
        canvas = self.conditioner.render(detection)
        if canvas.is_empty():
            return EMPTY_DRAWING, None
        extras = {
            name: png_bytes(self.conditioner.render_extra(name, detection))
            for name in self.conditioner.extra_images
        }
        return None, _Row(item, image_bytes, canvas.to_png(), detection, outcome.loaded.pixels, extras)

    def _write(self, writer: ShardWriter, rows: list[_Row]) -> None:
        if not rows:
            return
        captions = self.captioner([CaptionInput(r.item, r.pixels, r.detection) for r in rows])
        for row, caption in zip(rows, captions, strict=True):
            writer.write(
                {
                    "image": {"bytes": row.image_bytes, "path": Path(row.item.name).name},
                    "conditioning_image": {"bytes": row.png, "path": None},
                    **{name: {"bytes": png, "path": None} for name, png in row.extra_pngs.items()},
                    "caption": caption,
                    "landmarks": row.detection.to_json(),
                    "source_id": row.item.source_id,
                    **{key: row.item.extra.get(key) for key in self.source_columns},
                }
            )
        rows.clear()


def png_bytes(gray: Any) -> bytes:
    """A single-channel uint8 array as a fast-compressed PNG."""
    buffer = io.BytesIO()
    Image.fromarray(gray, "L").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _read(items: list[SourceItem]) -> Iterator[bytes | str]:
    """Item bytes for the runner; an unreadable path is passed on so that it fails as unreadable."""
    for item in items:
        try:
            yield item.read_bytes()
        except OSError:
            yield item.name


def resize_and_crop(image_bytes: bytes, detection: Detection, short_side: int) -> tuple[bytes, Detection]:
    """Resize so the short side is `short_side`, centre-crop to a square; landmarks follow."""
    photo = Image.fromarray(load_image(image_bytes).pixels)
    scale = short_side / min(photo.size)
    resized = photo.resize(
        (max(short_side, round(photo.width * scale)), max(short_side, round(photo.height * scale))),
        Image.Resampling.LANCZOS,
    )
    left, top = (resized.width - short_side) // 2, (resized.height - short_side) // 2
    cropped = resized.crop((left, top, left + short_side, top + short_side))
    sx, sy = resized.width / photo.width, resized.height / photo.height
    moved = detection.transformed((sx, sy), (-left, -top), (short_side, short_side))
    buffer = io.BytesIO()
    cropped.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue(), moved
