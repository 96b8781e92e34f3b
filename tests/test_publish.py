"""Publishing to a local Hub stand-in over real HTTP, then reading back with load_dataset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import builder_fixtures as fx
import datasets
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
