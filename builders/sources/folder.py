"""A folder of images, with optional captions from `metadata.jsonl` or side-car `.txt` files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from .base import Source, SourceItem, image_files


class FolderSource(Source):
    """`root/**/*.jpg|png|...`; source_id is the path relative to `root`.

    Captions: `metadata.jsonl` lines `{"file_name": ..., "text"|"caption": ...}` (the `datasets`
    imagefolder convention), else `photo.txt` next to `photo.jpg`, else none.
    """

    def __init__(self, root: str | Path, caption_field: str | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        self.caption_field = caption_field

    def _metadata_captions(self) -> dict[str, str]:
        captions: dict[str, str] = {}
        for metadata in sorted(self.root.rglob("metadata.jsonl")):
            base = metadata.parent.relative_to(self.root)
            for line in metadata.read_text().splitlines():
                if not line.strip():
                    continue
                record = json.loads(line)
                fields = [self.caption_field] if self.caption_field else ["text", "caption"]
                caption = next((record[f] for f in fields if f in record), None)
                if caption is not None:
                    captions[(base / record["file_name"]).as_posix()] = str(caption)
        return captions

    def __iter__(self) -> Iterator[SourceItem]:
        captions = self._metadata_captions()
        for path in image_files(self.root):
            source_id = path.relative_to(self.root).as_posix()
            caption = captions.get(source_id)
            sidecar = path.with_suffix(".txt")
            if caption is None and sidecar.exists():
                caption = sidecar.read_text().strip()
            yield SourceItem(source_id, str(path), caption)

    def describe(self) -> str:
        return f"image folder `{self.root.name}`"
