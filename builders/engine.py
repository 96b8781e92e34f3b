"""The local build engine: chunks of the source -> shards, in one or several processes, resumable.

Chunk i always covers items [i * shard_size, (i + 1) * shard_size) of the source's fixed order and
becomes shard `data/{split}-{i:05d}.parquet`. A restarted build skips the chunks whose shard
exists, so a build killed at any point resumes with no duplicated and no missing rows.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import queue
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
from tqdm import tqdm

from .parquet import read_counts, remove_temporaries
from .recipe import Recipe
from .sources import Source
from .worker import EMPTY_DIR, Chunk, ChunkProcessor, dataset_features

STATE_FILE = ".build_state.json"


@dataclass
class BuildSettings:
    split: str = "train"
    num_proc: int = 1
    max_samples: int | None = None
    shard_size: int = 500
    row_group_size: int = 64


@dataclass
class BuildReport:
    output: Path
    split: str
    rows: int = 0
    items: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    shards: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "output": str(self.output)}


def build(
    recipe: Recipe, source: Source, output: Path, settings: BuildSettings, progress: bool = True
) -> BuildReport:
    data_dir, features, chunks = prepare(recipe, source, output, settings)
    bar = tqdm(desc=f"build {recipe.name}", unit="img", disable=not progress, total=settings.max_samples)
    counts: Counter[str] = Counter()

    def tick(reason: str) -> None:
        counts[reason] += 1
        bar.update()
        bar.set_postfix(kept=counts["kept"], skipped=sum(counts.values()) - counts["kept"], refresh=False)

    if settings.num_proc <= 1:
        _run_here(recipe, features, chunks, data_dir, settings, tick)
    else:
        _run_in_pool(recipe, features, chunks, data_dir, settings, tick)
    bar.close()
    return summarize(output, settings.split)


def prepare(
    recipe: Recipe, source: Source, output: Path, settings: BuildSettings
) -> tuple[Path, datasets.Features, Iterator[Chunk]]:
    """What every engine does first: the data folder, the row features and the chunks still to build."""
    data_dir = output / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    remove_temporaries(data_dir)
    check_state(output, recipe, source, settings)
    chunks = pending_chunks(source, settings, done_chunks(data_dir, settings.split))
    return data_dir, dataset_features(source), chunks


def summarize(output: Path, split: str) -> BuildReport:
    report = BuildReport(output=output, split=split)
    skipped: Counter[str] = Counter()
    for _, record in sorted(chunk_records(output / "data", split).items()):
        counts = read_counts(record) if record.suffix == ".parquet" else json.loads(record.read_text())
        report.rows += counts.get("kept", 0)
        report.items += counts.get("items", 0)
        skipped.update(counts.get("skipped", {}))
        report.shards += record.suffix == ".parquet"
    report.skipped = dict(sorted(skipped.items()))
    return report


def check_state(output: Path, recipe: Recipe, source: Source, settings: BuildSettings) -> None:
    """A resumed build must chunk the same source the same way, or shards would overlap."""
    state = {
        "recipe": recipe.name,
        "conditioner": recipe.conditioner,
        "source": source.describe(),
        "split": settings.split,
        "shard_size": settings.shard_size,
        "max_samples": settings.max_samples,
    }
    path = output / "data" / STATE_FILE
    states = json.loads(path.read_text()) if path.exists() else {}
    previous = states.get(settings.split)
    if previous and previous != state and chunk_records(output / "data", settings.split):
        changed = sorted(k for k in state if state[k] != previous.get(k))
        raise ValueError(
            f"{output}/data holds a {settings.split!r} build made with other settings "
            f"({', '.join(changed)}); delete its shards or pass --overwrite to start again"
        )
    states[settings.split] = state
    path.write_text(json.dumps(states, indent=1))


def chunk_records(data_dir: Path, split: str) -> dict[int, Path]:
    """Chunk index -> the file that proves it done: its shard, or its empty-chunk marker."""
    records = {}
    for path in [*data_dir.glob(f"{split}-*.parquet"), *(data_dir / EMPTY_DIR).glob(f"{split}-*.json")]:
        records[int(path.stem.rsplit("-", 1)[1])] = path
    return records


def done_chunks(data_dir: Path, split: str) -> set[int]:
    return set(chunk_records(data_dir, split))


def pending_chunks(source: Source, settings: BuildSettings, done: set[int]) -> Iterator[Chunk]:
    items = itertools.islice(iter(source), settings.max_samples)
    for index in itertools.count():
        batch = list(itertools.islice(items, settings.shard_size))
        if not batch:
            return
        if index not in done:
            yield Chunk(index, batch)


def _run_here(recipe, features, chunks, data_dir, settings, tick) -> None:
    processor = ChunkProcessor(recipe, features, settings.row_group_size)
    try:
        for chunk in chunks:
            processor.run(chunk, data_dir, settings.split, tick)
    finally:
        processor.close()


# -- multi-process ---------------------------------------------------------------------------
_processor: ChunkProcessor | None = None
_progress_queue: Any = None


def _init_worker(
    recipe: Recipe, features: datasets.Features, row_group_size: int, progress_queue: Any
) -> None:
    global _processor, _progress_queue
    _processor = ChunkProcessor(recipe, features, row_group_size)
    _progress_queue = progress_queue


def _run_chunk(chunk: Chunk, data_dir: Path, split: str) -> dict[str, Any]:
    return _processor.run(chunk, data_dir, split, _progress_queue.put)


def _run_in_pool(recipe, features, chunks, data_dir, settings, tick) -> None:
    # spawn, not fork: MediaPipe's native threads do not survive a fork.
    context = multiprocessing.get_context("spawn")
    progress_queue = context.Queue()
    in_flight: set[Future] = set()
    with ProcessPoolExecutor(
        settings.num_proc,
        mp_context=context,
        initializer=_init_worker,
        initargs=(recipe, features, settings.row_group_size, progress_queue),
    ) as pool:
        chunk_iter = iter(chunks)
        while True:
            while len(in_flight) < 2 * settings.num_proc:  # bounded: memory does not grow with the source
                chunk = next(chunk_iter, None)
                if chunk is None:
                    break
                in_flight.add(pool.submit(_run_chunk, chunk, data_dir, settings.split))
            if not in_flight:
                break
            finished, in_flight = wait(in_flight, timeout=0.2, return_when=FIRST_COMPLETED)
            _drain(progress_queue, tick)
            for future in finished:
                future.result()  # re-raise a worker's error here
    _drain(progress_queue, tick)


def _drain(progress_queue: Any, tick) -> None:
    while True:
        try:
            tick(progress_queue.get_nowait())
        except queue.Empty:
            return
