"""`--engine ray`: the same chunks and shards as the local engine, run by a Ray Data actor pool.

The source is chunked exactly as locally (so finished shards are skipped on a restart), the chunks
become a Ray dataset, and `map_batches` hands them to a pool of actors that each hold one
conditioner and write one Parquet shard (with the `datasets` Features schema) per chunk into the
same folder layout. Point it at a cluster with `RAY_ADDRESS=ray://head:10001` (or `auto` on a
cluster node); the output must then be storage every node can reach: a shared mount or an fsspec
URL such as `s3://bucket/hands` (see `storage.Folder`).
"""

from __future__ import annotations

import os
from typing import Any

import datasets

from .engine import BuildReport, BuildSettings, prepare, summarize
from .recipe import Recipe
from .sources import Source
from .storage import Folder
from .worker import ChunkProcessor, Splits


class ShardActor:
    """One conditioner per actor, reused for every chunk it is given."""

    def __init__(
        self, recipe: Recipe, features: datasets.Features, data: Folder, splits: Splits, row_group_size: int
    ):
        self.processor = ChunkProcessor(recipe, features, row_group_size)
        self.data = data
        self.splits = splits

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        out: dict[str, list] = {"index": [], "items": [], "kept": []}
        for chunk in batch["chunk"]:
            counts = self.processor.run(chunk, self.data, self.splits)
            out["index"].append(chunk.index)
            out["items"].append(counts["items"])
            out["kept"].append(counts["kept"])
        return out


def build_with_ray(recipe: Recipe, source: Source, output: Folder, settings: BuildSettings) -> BuildReport:
    import ray

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=False)
    data, features, pending = prepare(recipe, source, output, settings)
    chunks = list(pending)
    if chunks:
        # Leave one CPU to Ray Data's own tasks: actors that take every CPU starve the pipeline.
        cpus = int(ray.available_resources().get("CPU", 1))
        actors = max(1, min(settings.num_proc, cpus - 1, len(chunks)))
        dataset = ray.data.from_items([{"chunk": chunk} for chunk in chunks], override_num_blocks=len(chunks))
        results = dataset.map_batches(
            ShardActor,
            fn_constructor_args=(recipe, features, data, settings.splits, settings.row_group_size),
            batch_size=1,
            batch_format="numpy",
            concurrency=actors,
            num_cpus=1,
        ).take_all()
        assert sorted(int(r["index"]) for r in results) == sorted(c.index for c in chunks)
    report = summarize(output, settings.split)
    report.missing_from_source = pending.missing
    return report
