"""`builders.rows.open_dataset`, the one way the trainer, `evaluate`, `show` and the fidelity rows
open a dataset at a split: every form of dataset folder, every split, the right rows or one line."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest

from builders.rows import SplitNotFoundError, dataset_splits, open_dataset
from conditioners.locations import NoSuchPathError, local_or_hub, looks_like_path

CLI = Path(sys.executable).with_name("landmark-controlnet")
SPLITS = {"train": ["a", "b", "c"], "validation": ["v"]}


def table(split: str) -> datasets.Dataset:
    return datasets.Dataset.from_dict(
        {"source_id": SPLITS[split], "caption": [f"{split} {i}" for i in SPLITS[split]]}
    )


@pytest.fixture(scope="module")
def forms(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("forms")
    both = datasets.DatasetDict({split: table(split) for split in SPLITS})
    both.save_to_disk(str(root / "saved_dict"))
    datasets.DatasetDict({"train": table("train")}).save_to_disk(str(root / "saved_dict_train_only"))
    table("train").save_to_disk(str(root / "saved_single"))
    for split in SPLITS:  # the Hub's standard shard names, as to_parquet / push_to_hub write them
        (root / "hub_shards/data").mkdir(parents=True, exist_ok=True)
        table(split).to_parquet(str(root / f"hub_shards/data/{split}-00000-of-00001.parquet"))
    (root / "own_shards/data").mkdir(parents=True)
    table("train").to_parquet(str(root / "own_shards/data/train-00000.parquet"))
    return {path.name: path for path in root.iterdir()}


@pytest.mark.parametrize("form", ["saved_dict", "hub_shards"])
@pytest.mark.parametrize("split", list(SPLITS))
def test_each_split_gives_its_own_rows(forms, form, split):
    assert open_dataset(str(forms[form]), split)["source_id"] == SPLITS[split]
    assert sorted(dataset_splits(str(forms[form]))) == sorted(SPLITS)
    streamed = open_dataset(str(forms[form]), split, streaming=True)
    assert [row["source_id"] for row in streamed] == SPLITS[split]


@pytest.mark.parametrize("form", ["saved_dict_train_only", "own_shards"])
def test_a_missing_split_is_refused_with_the_splits_there_are(forms, form):
    assert open_dataset(str(forms[form]), "train")["source_id"] == SPLITS["train"]
    with pytest.raises(SplitNotFoundError, match="no 'validation' split; its splits: train") as raised:
        open_dataset(str(forms[form]), "validation")
    assert "\n" not in str(raised.value)


def test_a_saved_single_dataset_is_train_and_nothing_else(forms):
    assert open_dataset(str(forms["saved_single"]))["source_id"] == SPLITS["train"]
    assert dataset_splits(str(forms["saved_single"])) == ["train"]
    with pytest.raises(SplitNotFoundError, match="single Dataset has no 'validation' split"):
        open_dataset(str(forms["saved_single"]), "validation")


def test_show_lists_every_split_and_refuses_a_missing_one_in_a_line(forms):
    shown = subprocess.run([str(CLI), "show", str(forms["saved_dict"])], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert "train: 3 rows" in shown.stdout and "validation: 1 rows" in shown.stdout
    refused = subprocess.run(
        [str(CLI), "show", str(forms["saved_single"]), "--split", "validation"],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "saved_single" in refused.stderr


def test_evaluate_refuses_a_missing_split_before_loading_any_model(forms, tmp_path):
    args = ["evaluate", "--controlnet", "owner/cn", "--base-model", "owner/sd", "--out", str(tmp_path / "o")]
    result = subprocess.run(
        [str(CLI), *args, "--dataset", str(forms["saved_single"]), "--split", "validation"],
        capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""},
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "no 'validation' split" in result.stderr


def test_a_missing_path_is_never_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    paths = ("runs/nonexist", "./nonexist", "~/nonexist", "/no/such", "a/b/c", "win\\dows", "nothere/")
    for path_like in paths:
        assert looks_like_path(path_like), path_like
        with pytest.raises(NoSuchPathError, match="no such"):
            local_or_hub(path_like)
    assert local_or_hub("owner/name") == "owner/name" and local_or_hub("gpt2") == "gpt2"
    assert local_or_hub("runs") == Path("runs")


def test_refine_hands_fails_at_once_on_a_mistyped_local_controlnet(tmp_path, data_dir):
    (tmp_path / "runs").mkdir()
    photo = data_dir / "images/generated/handrefiner_test_1.jpg"
    started = time.perf_counter()
    result = subprocess.run(
        [str(CLI), "refine-hands", "--image", str(photo), "--prompt", "a hand",
         "--controlnet", "runs/nonexist", "--base-model", "owner/inpainting", "--out", "x.png"],
        capture_output=True, text=True, cwd=tmp_path, env={"HF_ENDPOINT": "http://127.0.0.1:9", "PATH": ""},
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "runs/nonexist: no such model folder" in result.stderr
    assert time.perf_counter() - started < 30  # no Hub retries (they took 52 s); the imports take a few


def test_a_hub_id_offline_fails_fast_in_one_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    started = time.perf_counter()
    result = subprocess.run(
        [str(CLI), "show", "owner/nothing"], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "HF_HUB_OFFLINE" in result.stderr
    assert time.perf_counter() - started < 30


HUB_ID_SPLITS = """
import datasets, json
from builders.rows import SplitNotFoundError, dataset_splits, open_dataset
tables = {split: datasets.Dataset.from_dict({"source_id": ids}) for split, ids in json.loads(SPLITS).items()}
datasets.DatasetDict(tables).push_to_hub("tester/splits")
found = {"splits": sorted(dataset_splits("tester/splits"))}
found |= {split: list(open_dataset("tester/splits", split)["source_id"]) for split in found["splits"]}
try:
    open_dataset("tester/splits", "test")
except SplitNotFoundError as exc:
    found["refused"] = str(exc)
print(json.dumps(found))
"""


def test_a_hub_id_gives_each_split_its_rows_or_one_line(tmp_path):
    import json

    from hub_standin import HubStandIn

    token = "hf_splitsTestToken1234567890"
    with HubStandIn(token=token) as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": token, "HF_HOME": str(tmp_path / "hf"),
               "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}  # fmt: skip
        code = f"SPLITS = {json.dumps(json.dumps(SPLITS))}\n{HUB_ID_SPLITS}"
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
        )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found.pop("splits") == sorted(SPLITS) and "no 'test' split" in found.pop("refused")
    assert found == SPLITS
