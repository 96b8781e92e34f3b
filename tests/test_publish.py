"""Publishing to a local Hub stand-in over real HTTP, then reading back with load_dataset."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import builder_fixtures as fx
import datasets
import pyarrow.parquet as pq
import pytest
from hub_standin import HubStandIn

from builders import BuildSettings
from builders.run import run_build

CLI = Path(sys.executable).with_name("landmark-controlnet")
TOKEN = "hf_secretTestToken1234567890"

READ_BACK = textwrap.dedent(
    """
    import json, sys
    import datasets
    from builder_fixtures import comparable_rows

    repo = sys.argv[1]
    print(json.dumps({
        "regular": comparable_rows(datasets.load_dataset(repo, split="train")),
        "streaming": comparable_rows(datasets.load_dataset(repo, split="train", streaming=True)),
    }))
    """
)


@pytest.fixture()
def built(tmp_path, data_dir):
    photos = fx.photo_folder(data_dir, tmp_path)
    builder = fx.folder_recipe(tmp_path)
    run_build(str(builder), str(photos), BuildSettings(shard_size=3), progress=False)
    return builder


def hub_env(hub: HubStandIn, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "HF_ENDPOINT": hub.endpoint,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_TOKEN": TOKEN,
        "PYTHONPATH": str(Path(__file__).parent),
    }


def test_publish_then_load_dataset_and_streaming(built, tmp_path):
    with HubStandIn() as hub:
        env = hub_env(hub, tmp_path)
        result = subprocess.run(
            [str(CLI), "publish", str(built), "--repo-id", "tester/hands", "--token", TOKEN],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert TOKEN not in result.stdout + result.stderr
        assert result.stdout.strip().endswith("/datasets/tester/hands")
        files = hub.files("tester/hands")
        assert "README.md" in files and "preview.png" in files
        assert sorted(p for p in files if p.startswith("data/")) == [
            "data/train-00000.parquet",
            "data/train-00001.parquet",
            "data/train-00002.parquet",
        ]
        assert not any("/." in p or p.startswith(".") for p in files)  # build bookkeeping stays local
        read = subprocess.run(
            [sys.executable, "-c", READ_BACK, "tester/hands"],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert read.returncode == 0, read.stderr[-3000:]
    remote = json.loads(read.stdout.strip().splitlines()[-1])
    expected = fx.comparable_rows(datasets.load_dataset(str(built), split="train"))
    assert len(expected) == 6
    assert remote["regular"] == expected
    assert remote["streaming"] == expected


def test_publish_refuses_an_unbuilt_folder(tmp_path):
    builder = fx.folder_recipe(tmp_path)
    result = subprocess.run(
        [str(CLI), "publish", str(builder), "--repo-id", "a/b"], capture_output=True, text=True
    )
    assert result.returncode != 0 and "build it first" in result.stderr


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_build_into_an_fsspec_url_resumes_and_matches_the_local_build(built, tmp_path, engine):
    """`--output hf://datasets/...`: shards go through fsspec (HfFileSystem) to a real HTTP server."""
    photos = tmp_path / "photos"  # the folder the `built` fixture was built from
    url = "hf://datasets/tester/direct"
    command = [str(CLI), "build", str(built), "--source", str(photos), "--output", url]
    command += ["--shard-size", "3", "--num-proc", "2", "--engine", engine]
    with HubStandIn() as hub:
        env = hub_env(hub, tmp_path)
        first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        assert first.returncode == 0, first.stderr[-3000:]
        shards = sorted(p for p in hub.files("tester/direct") if p.startswith("data/train-"))
        assert shards == [f"data/train-0000{i}.parquet" for i in range(3)]

        # Lose a shard as a killed build would, and mark a finished one (same rows, other bytes);
        # building again redoes only the lost chunk and leaves the finished shard alone.
        marked = resaved(hub.files("tester/direct")[shards[0]])
        repo = hub.state.repos["tester/direct"]
        hub.state.commit(
            repo,
            [
                {"key": "deletedFile", "value": {"path": shards[1]}},
                {"key": "file", "value": {"path": shards[0], "content": marked, "encoding": "base64"}},
            ],
        )
        again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
        assert json.loads(again.stdout.strip().splitlines()[-1])["rows"] == 6
        files = hub.files("tester/direct")
        assert base64.b64encode(files[shards[0]]).decode() == marked
        assert {"README.md", "preview.png", "recipe.toml", *shards} <= set(files)
        read = subprocess.run(
            [sys.executable, "-c", READ_BACK, "tester/direct"], capture_output=True, text=True, env=env
        )
        assert read.returncode == 0, read.stderr[-3000:]
    remote = json.loads(read.stdout.strip().splitlines()[-1])
    assert remote["regular"] == fx.comparable_rows(datasets.load_dataset(str(built), split="train"))


def resaved(shard: bytes) -> str:
    """The same rows and metadata written with another codec, base64-encoded for a commit."""
    file = pq.ParquetFile(io.BytesIO(shard))
    metadata = {k: v for k, v in file.metadata.metadata.items() if k != b"ARROW:schema"}
    buffer = io.BytesIO()
    pq.write_table(file.read().replace_schema_metadata(metadata), buffer, compression="snappy")
    assert buffer.getvalue() != shard
    return base64.b64encode(buffer.getvalue()).decode()
