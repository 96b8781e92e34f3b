"""A build re-run on a source that gained photos adds exactly those, in new shards; a killed
incremental run resumes; a source that lost photos is reported."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import builder_fixtures as fx
import pyarrow.parquet as pq
import pytest

from builders import BuildSettings
from builders.parquet import read_counts
from builders.rows import open_dataset
from builders.run import run_build
from builders.storage import Folder

CLI = Path(sys.executable).with_name("landmark-controlnet")
FIRST = ["00_a.jpg", "02_b.jpg", "04_c.jpg", "06_d.jpg", "08_e.jpg", "10_f.jpg"]
ADDED = ["01_g.jpg", "05_h.jpg", "12_i.jpg"]  # before, between and after the first ones


def photos(data_dir: Path, folder: Path, names: list[str]) -> None:
    hands = sorted((data_dir / "images/hands").glob("*.jpg"))
    for name in names:
        fx.link(hands[int(name[:2]) % len(hands)], folder / name)


def source_ids(builder: Path) -> list[str]:
    return open_dataset(str(builder))["source_id"]


def items_seen(builder: Path) -> list[str]:
    """Every source id the finished chunks record, kept or skipped."""
    data = Folder(str(builder / "data"))
    names = [*data.names("train-*.parquet"), *data.names(".empty_chunks/train-*.json")]
    held = [read_counts(data, n) if n.endswith(".parquet") else json.loads(data.read_text(n)) for n in names]
    return sorted(i for counts in held for i in counts["source_ids"])


@pytest.fixture
def first_build(tmp_path, data_dir):
    folder = tmp_path / "photos"
    photos(data_dir, folder, FIRST)
    builder = fx.folder_recipe(tmp_path)
    report = run_build(str(builder), str(folder), BuildSettings(shard_size=2), progress=False)
    assert report.items == 6 and items_seen(builder) == sorted(FIRST)
    return folder, builder


def test_a_rerun_adds_exactly_the_new_photos_in_new_shards(first_build, data_dir):
    folder, builder = first_build
    shards = {p.name: p.stat().st_mtime_ns for p in (builder / "data").glob("train-*.parquet")}
    photos(data_dir, folder, ADDED)
    report = run_build(str(builder), str(folder), BuildSettings(shard_size=2), progress=False)
    assert report.items == 9 and report.missing_from_source == 0
    assert items_seen(builder) == sorted(FIRST + ADDED)  # each photo once, kept or skipped
    ids = source_ids(builder)
    assert len(ids) == len(set(ids)) == report.rows
    for name, mtime in shards.items():  # the first build's shards are untouched
        assert (builder / "data" / name).stat().st_mtime_ns == mtime
    assert f"`train`: {len(ids)} rows" in (builder / "README.md").read_text()  # the card follows
    again = run_build(str(builder), str(folder), BuildSettings(shard_size=2), progress=False)
    assert again.items == 9 and items_seen(builder) == sorted(FIRST + ADDED)  # nothing more to do


def test_a_killed_incremental_run_resumes(first_build, data_dir):
    folder, builder = first_build
    before = set((builder / "data").glob("train-*.parquet"))
    photos(data_dir, folder, ADDED + ["13_j.jpg", "14_k.jpg", "15_l.jpg"])
    command = [str(CLI), "build", str(builder), "--source", str(folder), "--shard-size", "2"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and len(set((builder / "data").glob("train-*.parquet")) - before) < 1:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert len(items_seen(builder)) < 12, "the run should have been killed part-way"
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert items_seen(builder) == sorted(FIRST + ADDED + ["13_j.jpg", "14_k.jpg", "15_l.jpg"])
    ids = source_ids(builder)
    assert len(ids) == len(set(ids)) and json.loads(result.stdout.strip().splitlines()[-1])["items"] == 12


def test_photos_gone_from_the_source_are_reported(first_build, caplog):
    folder, builder = first_build
    rows = len(source_ids(builder))
    (folder / FIRST[2]).unlink()
    report = run_build(str(builder), str(folder), BuildSettings(shard_size=2), progress=False)
    assert report.missing_from_source == 1 and report.rows == rows  # reported; its row stays
    assert "no longer in the source" in caplog.text
    result = subprocess.run(
        [str(CLI), "build", str(builder), "--source", str(folder), "--shard-size", "2"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert json.loads(result.stdout.strip().splitlines()[-1])["missing_from_source"] == 1
    overwritten = run_build(
        str(builder), str(folder), BuildSettings(shard_size=2), overwrite=True, progress=False
    )
    assert overwritten.items == 5 and overwritten.missing_from_source == 0
    assert pq.read_schema(next((builder / "data").glob("train-*.parquet"))).names  # loadable shards
