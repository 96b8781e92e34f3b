"""img2dataset output, as used for LAION-Face: webdataset `.tar` shards or parquet files.

Tar shards hold `{key}.jpg` with `{key}.txt` (caption) and `{key}.json` (metadata); parquet output
holds `key`, `jpg` (bytes) and `caption`/`txt` columns. source_id is the img2dataset key.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq

from .base import STRING, Source, SourceItem

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


class Img2DatasetSource(Source):
    extra_features = {"url": STRING}

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.tars = sorted(self.root.glob("*.tar")) if self.root.is_dir() else [self.root]
        self.parquets = sorted(self.root.glob("*.parquet")) if self.root.is_dir() else []
        if self.root.suffix == ".parquet":
            self.tars, self.parquets = [], [self.root]
        if not self.tars and not self.parquets:
            raise FileNotFoundError(f"no img2dataset .tar or .parquet shards in {self.root}")

    def __iter__(self) -> Iterator[SourceItem]:
        for tar in self.tars:
            yield from _tar_items(tar)
        for parquet in self.parquets:
            yield from _parquet_items(parquet)

    def describe(self) -> str:
        kind = "webdataset tar" if self.tars else "parquet"
        return f"img2dataset {kind} shards (`{self.root.name}`)"


def _tar_items(path: Path) -> Iterator[SourceItem]:
    """Group tar members by key (members of one sample are adjacent in webdataset shards)."""
    with tarfile.open(path) as tar:
        group: dict[str, bytes] = {}
        current = None
        for member in tar:
            if not member.isfile():
                continue
            key, _, extension = member.name.rpartition(".")
            if key != current and current is not None:
                yield from _sample(current, group)
                group = {}
            current = key
            group[extension.lower()] = tar.extractfile(member).read()
        if current is not None:
            yield from _sample(current, group)


def _sample(key: str, files: dict[str, bytes]) -> Iterator[SourceItem]:
    image = next((files[e] for e in IMAGE_EXTENSIONS if e in files), None)
    if image is None:
        return
    meta = json.loads(files["json"]) if "json" in files else {}
    caption = files["txt"].decode("utf-8").strip() if "txt" in files else meta.get("caption")
    yield SourceItem(Path(key).name, image, caption, {"url": str(meta.get("url", ""))})


def _parquet_items(path: Path) -> Iterator[SourceItem]:
    parquet = pq.ParquetFile(path)
    names = parquet.schema_arrow.names
    image_column = next(c for c in IMAGE_EXTENSIONS if c in names)
    caption_column = next((c for c in ("caption", "txt", "text") if c in names), None)
    for batch in parquet.iter_batches(batch_size=64):
        rows = batch.to_pylist()
        for row in rows:
            if row.get(image_column) is None or row.get("status", "success") != "success":
                continue
            caption = row.get(caption_column) if caption_column else None
            yield SourceItem(str(row["key"]), row[image_column], caption, {"url": str(row.get("url") or "")})
