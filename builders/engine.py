"""The local build engine: chunks of the source -> shards, in one or several processes, resumable.

Chunk i always covers items [i * shard_size, (i + 1) * shard_size) of the source's fixed order and
becomes shard `data/{split}-{i:05d}.parquet`. A restarted build skips the chunks whose shard
exists, so a build killed at any point resumes with no duplicated and no missing rows.
"""

from __future__ import annotations

import itertools
import json
import logging
import multiprocessing
import queue
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Any

import datasets
import pyarrow.parquet as pq
from tqdm import tqdm

from conditioners.errors import UserError

from .parquet import read_counts
from .recipe import Recipe
from .sources import Source, SourceItem
from .storage import Folder
from .worker import (
    EMPTY_DIR,
    HELD_OUT_SPLIT,
    SIZE_FEATURES,
    Chunk,
    ChunkProcessor,
    Splits,
    dataset_features,
)

STATE_FILE = ".build_state.json"
log = logging.getLogger(__name__)


class BuildSettingsError(UserError, ValueError):
    """A build resumed with settings other than those its shards were made with."""


@dataclass
class BuildSettings:
    split: str = "train"
    num_proc: int = 1
    max_samples: int | None = None
    shard_size: int = 500
    row_group_size: int = 64
    validation_fraction: float = 0.0  # held out into the `validation` split, by a hash of source_id

    def __post_init__(self) -> None:
        if not 0 <= self.validation_fraction < 1:
            raise UserError(f"--validation-fraction {self.validation_fraction}: must be in [0, 1)")
        if self.validation_fraction and self.split == HELD_OUT_SPLIT:
            raise UserError(
                f"--validation-fraction holds rows out into {HELD_OUT_SPLIT!r}: build another split"
            )

    @property
    def splits(self) -> Splits:
        return Splits(self.split, self.validation_fraction)


@dataclass
class BuildReport:
    output: str
    split: str
    rows: int = 0
    items: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    shards: int = 0
    # Hands, not images: the hint boxes (a source's hand boxes) the conditioner searched, and how many
    # of those no pass found a hand in (their photos keep the hands found, or are skipped otherwise).
    hints: int = 0
    hint_not_found: int = 0
    # Rows this split's chunks held out into `validation` (--validation-fraction), not in `rows`.
    held_out_rows: int = 0
    # Items earlier runs built that the source no longer has (their rows stay); this run's count.
    missing_from_source: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build(
    recipe: Recipe, source: Source, output: Folder, settings: BuildSettings, progress: bool = True
) -> BuildReport:
    data, features, chunks = prepare(recipe, source, output, settings)
    bar = tqdm(desc=f"build {recipe.name}", unit="img", disable=not progress, total=settings.max_samples)
    counts: Counter[str] = Counter()

    def tick(reason: str) -> None:
        counts[reason] += 1
        bar.update()
        bar.set_postfix(kept=counts["kept"], skipped=sum(counts.values()) - counts["kept"], refresh=False)

    if settings.num_proc <= 1:
        _run_here(recipe, features, chunks, data, settings, tick)
    else:
        _run_in_pool(recipe, features, chunks, data, settings, tick)
    bar.close()
    report = summarize(output, settings.split)
    report.missing_from_source = chunks.missing
    return report


def prepare(
    recipe: Recipe, source: Source, output: Folder, settings: BuildSettings
) -> tuple[Folder, datasets.Features, ChunkPlan]:
    """What every engine does first: the data folder, the row features and the chunks still to build."""
    data = output.sub("data")
    data.makedirs()
    data.remove_temporaries()
    check_state(data, recipe, source, settings)
    chunks = ChunkPlan(source, settings, data, chunk_records(data, settings.split))
    features = written_features(data, source, recipe)
    if missing := [name for name in later_columns(source) if name not in features]:
        log.warning(
            "%s holds shards built before rows recorded %s: this build keeps their schema, without those "
            "columns, so that the dataset stays loadable. To record them, build into a new folder, or "
            "delete every shard of this one first (--overwrite deletes the built split's own).",
            data,
            " and ".join(missing),
        )
    return data, features, chunks


def summarize(output: Folder, split: str) -> BuildReport:
    data = output.sub("data")
    report = BuildReport(output=output.location, split=split)
    skipped: Counter[str] = Counter()
    for _, name in sorted(chunk_records(data, split).items()):
        is_shard = name.endswith(".parquet")
        counts = read_counts(data, name) if is_shard else json.loads(data.read_text(name))
        report.rows += counts.get("kept", 0)
        report.items += counts.get("items", 0)
        skipped.update(counts.get("skipped", {}))
        report.hints += counts.get("hints", 0)
        report.hint_not_found += counts.get("hint_not_found", 0)
        report.held_out_rows += counts.get("held_out", 0)
        report.shards += is_shard
    report.skipped = dict(sorted(skipped.items()))
    return report


def check_state(data: Folder, recipe: Recipe, source: Source, settings: BuildSettings) -> None:
    """A resumed build must chunk the same source the same way, or shards would overlap."""
    state = {
        "recipe": recipe.name,
        "conditioner": recipe.conditioner,
        "source": source.describe(),
        "split": settings.split,
        "shard_size": settings.shard_size,
        "max_samples": settings.max_samples,
        **({"validation_fraction": settings.validation_fraction} if settings.validation_fraction else {}),
    }
    wanted = {settings.split: state}
    if settings.validation_fraction:  # the held-out shards share the chunk indices of the main split's
        wanted[HELD_OUT_SPLIT] = {"held_out_from": settings.split, **state}
    states = json.loads(data.read_text(STATE_FILE)) if data.exists(STATE_FILE) else {}
    for split, expected in wanted.items():
        previous = states.get(split)
        if previous and previous != expected and chunk_records(data, split):
            changed = sorted(k for k in {*expected, *previous} if expected.get(k) != previous.get(k))
            raise BuildSettingsError(
                f"{data} holds a {split!r} build made with other settings "
                f"({', '.join(changed)}); delete its shards or pass --overwrite to start again"
            )
    if any(states.get(split) != expected for split, expected in wanted.items()):
        data.write_text(STATE_FILE, json.dumps({**states, **wanted}, indent=1))


def later_columns(source: Source) -> list[str]:
    """Columns that rows gained after builds had written shards without them (`SIZE_FEATURES`, a
    source's columns such as HaGRID's `bboxes`): a resumed build does without those its shards lack."""
    return [*SIZE_FEATURES, *source.features()]


def written_features(data: Folder, source: Source, recipe: Recipe) -> datasets.Features:
    """The row features of the shards in `data`: `dataset_features`, less the `later_columns` that
    the folder's shards lack when it already holds shards written before rows recorded them.

    Resuming such a build (or adding a split to its folder) keeps the old schema rather than being
    refused: the finished shards stay usable and a trainer can do without the size columns (SDXL's
    default is original = target size, no crop), whereas shards of two schemas in one folder would
    make `load_dataset` fail. A folder emptied of its shards (`--overwrite` of its only split) gets
    the new columns."""
    features = dataset_features(source, recipe)
    shards = data.names("*-*.parquet")
    if not shards:
        return features
    with data.open(shards[0]) as file:  # one suffices: every build into the folder keeps its schema
        columns = set(pq.read_schema(file).names)
    later = set(later_columns(source))
    return datasets.Features({k: v for k, v in features.items() if k in columns or k not in later})


def held_out_from(output: Folder) -> str | None:
    """The split whose build held out the `validation` rows, if they were held out."""
    data = output.sub("data")
    states = json.loads(data.read_text(STATE_FILE)) if data.exists(STATE_FILE) else {}
    return states.get(HELD_OUT_SPLIT, {}).get("held_out_from")


def chunk_records(data: Folder, split: str) -> dict[int, str]:
    """Chunk index -> the file that proves it done: its shard, or its empty-chunk marker."""
    records = {}
    for name in [*data.names(f"{split}-*.parquet"), *data.names(f"{EMPTY_DIR}/{split}-*.json")]:
        records[int(name.rsplit("-", 1)[1].split(".")[0])] = name
    return records


@dataclass
class ChunkPlan:
    """The chunks a build still has to run, found by source id, so that a source that gained items
    (new photos) has exactly those built, whatever their place in its order.

    Chunk i covers the items at positions [i * shard_size, (i + 1) * shard_size) of the source's
    fixed order. Every finished chunk records the source ids it held (`source_ids` in its shard's
    metadata or empty marker). A chunk not yet done runs its items that no finished chunk holds; the
    items at the positions of finished chunks that no finished chunk holds (photos added since)
    become new chunks, numbered after every other. So a build killed at any point, or re-run on a
    grown source, adds each item once. Iterating the plan also counts `missing`: ids the finished
    chunks hold that the source no longer has (their rows stay)."""

    source: Source
    settings: BuildSettings
    data: Folder
    done: dict[int, str]
    missing: int = 0

    def __iter__(self) -> Iterator[Chunk]:
        held = held_source_ids(self.data, self.done)
        size = self.settings.shard_size
        items = itertools.islice(iter(self.source), self.settings.max_samples)
        additions: list[SourceItem] = []
        seen: set[str] = set()
        positions = 0
        for index in itertools.count():
            batch = list(itertools.islice(items, size))
            if not batch:
                break
            positions = index + 1
            seen.update(item.source_id for item in batch)
            new = [item for item in batch if held is None or item.source_id not in held]
            if index in self.done:
                additions += new if held is not None else []
            elif new:
                yield Chunk(index, new)
        first = max([positions, *(i + 1 for i in self.done)])
        for offset in range(0, len(additions), size):
            yield Chunk(first + offset // size, additions[offset : offset + size])
        self.missing = len(held - seen) if held is not None else 0
        if self.missing:
            log.warning(
                "%d items built into %s are no longer in the source; their rows stay (--overwrite starts "
                "again without them)",
                self.missing,
                self.data,
            )


def held_source_ids(data: Folder, done: dict[int, str]) -> set[str] | None:
    """The source ids the finished chunks hold; None when a chunk predates the record (built before
    builds recorded it): such a folder is resumed by position alone, and new items are not found."""
    held: set[str] = set()
    for name in done.values():
        counts = read_counts(data, name) if name.endswith(".parquet") else json.loads(data.read_text(name))
        if "source_ids" not in counts:
            log.warning("%s predates the record of its source ids: new photos are not looked for", name)
            return None
        held.update(counts["source_ids"])
    return held


def _run_here(recipe, features, chunks, data, settings, tick) -> None:
    processor = ChunkProcessor(recipe, features, settings.row_group_size)
    try:
        for chunk in chunks:
            processor.run(chunk, data, settings.splits, tick)
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


def _run_chunk(chunk: Chunk, data: Folder, splits: Splits) -> dict[str, Any]:
    return _processor.run(chunk, data, splits, _progress_queue.put)


def _run_in_pool(recipe, features, chunks, data, settings, tick) -> None:
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
                in_flight.add(pool.submit(_run_chunk, chunk, data, settings.splits))
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
