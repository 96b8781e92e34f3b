"""Any `datasets` dataset (Hub id or local path), optionally streamed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import datasets

from .base import Source, SourceItem


class HFDatasetSource(Source):
    """Rows of `name` with the photo in `image_column` and the caption in `caption_column`.

    source_id comes from `id_column` when given, else `{split}/{row index}`.
    """

    def __init__(
        self,
        name: str,
        split: str | None = None,
        config: str | None = None,
        image_column: str = "image",
        caption_column: str | None = "caption",
        id_column: str | None = None,
        streaming: bool = False,
    ):
        self.name = name
        self.split = split or "train"
        self.config = config
        self.image_column = image_column
        self.caption_column = caption_column
        self.id_column = id_column
        self.streaming = streaming

    def _dataset(self) -> Any:
        dataset = datasets.load_dataset(self.name, self.config, split=self.split, streaming=self.streaming)
        # Original bytes, never a decode + re-encode.
        return dataset.cast_column(self.image_column, datasets.Image(decode=False))

    def __iter__(self) -> Iterator[SourceItem]:
        for index, row in enumerate(self._dataset()):
            image = row[self.image_column]
            if image is None:
                continue
            data = image.get("bytes") or image.get("path")
            caption = row.get(self.caption_column) if self.caption_column else None
            source_id = str(row[self.id_column]) if self.id_column else f"{self.split}/{index}"
            yield SourceItem(source_id, data, None if caption is None else str(caption))

    def describe(self) -> str:
        return f"`datasets` dataset `{self.name}` (split `{self.split}`)"
