"""Parquet shards with the `datasets` Features in their schema, written atomically.

A shard is written row group by row group to a temporary file and published into its folder
only when complete (see `storage.Folder`), so a killed build leaves either a whole shard or none.
Each shard carries its build counts (items seen, kept, skipped by reason) in its key-value
metadata: a finished shard is its own record of the work it covers.
"""

from __future__ import annotations

import json
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from .storage import Folder

COUNTS_KEY = "landmark_controlnet"


class ShardWriter:
    def __init__(self, folder: Folder, name: str, features: datasets.Features, row_group_size: int = 64):
        self.folder = folder
        self.name = name
        self.temporary = folder.temporary(name)
        self.features = features
        self.schema = features.arrow_schema
        self.row_group_size = row_group_size
        self._rows: list[dict[str, Any]] = []
        self._writer = pq.ParquetWriter(self.temporary, self.schema, compression="zstd")
        self.rows_written = 0

    def write(self, row: dict[str, Any]) -> None:
        self._rows.append(row)
        if len(self._rows) >= self.row_group_size:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            encoded = [self.features.encode_example(row) for row in self._rows]
            self._writer.write_table(pa.Table.from_pylist(encoded, schema=self.schema))
            self.rows_written += len(self._rows)
            self._rows = []

    def close(self, counts: dict[str, Any]) -> bool:
        """Finish the file, record `counts`, and move it into place atomically.

        A shard without rows is not kept (`datasets` cannot read one); returns whether it was."""
        self._flush()
        if self.rows_written == 0:
            self.abort()
            return False
        self._writer.add_key_value_metadata({COUNTS_KEY: json.dumps(counts)})
        self._writer.close()
        self.folder.publish(self.temporary, self.name)
        return True

    def abort(self) -> None:
        self._writer.close()
        self.temporary.unlink(missing_ok=True)


def read_counts(folder: Folder, name: str) -> dict[str, Any]:
    with folder.open(name) as file:
        metadata = pq.ParquetFile(file).metadata.metadata or {}
    return json.loads(metadata.get(COUNTS_KEY.encode(), b"{}"))
