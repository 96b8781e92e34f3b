"""Dataset folders in the Hub's standard layouts, read by `built_data_files`, the trainer, `show` and
evaluate's split: a `push_to_hub` repo fetched back with `snapshot_download`, `to_parquet` shards
named `data/{split}-00000-of-00001.parquet`, `{split}/` folders, a card whose `configs` map splits
to files of other names, and this project's own `data/{split}-NNNNN.parquet` without a card."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import builder_fixtures as fx
import datasets
import numpy as np
import pytest
import train_fixtures as tf
from hub_standin import HubStandIn

from builders.rows import SplitNotFoundError, UnknownLayoutError, built_data_files, open_dataset
from landmark_controlnet.evaluation.generate import open_split
from landmark_controlnet.training import data as input_data
from landmark_controlnet.training.tiny_sd import write_tiny_sd

CLI = Path(sys.executable).with_name("landmark-controlnet")
TOKEN = "hf_shardNamesTestToken12345"
HELD_OUT = 2  # the build's last rows: the held-out split of every layout

PUSH_AND_FETCH = textwrap.dedent(
    """
    import sys
    import datasets
    from huggingface_hub import snapshot_download

    saved, repo = sys.argv[1:3]
    datasets.load_from_disk(saved).push_to_hub(repo, num_shards={"train": 2, "validation": 1})
    print(snapshot_download(repo, repo_type="dataset"))
    """
)


@dataclass(frozen=True)
class Layout:
    folder: Path
    files: dict[str, list[str]]  # split -> its files, relative to the folder
    held_out: str = "validation"  # the name of the split holding the HELD_OUT rows

    def source(self, split: str) -> str:
        return "held_out" if split == self.held_out else "train"


@pytest.fixture(scope="module")
def rows(hand_build) -> dict[str, datasets.Dataset]:
    """A real build of hand photos (image, conditioning_image, caption, landmarks, source_id), cut in
    two: "train" and "held_out" (its last HELD_OUT rows)."""
    table = open_dataset(str(hand_build.root / "builder"))
    assert len(table) > HELD_OUT + 1
    cut = len(table) - HELD_OUT
    return {"train": table.select(range(cut)), "held_out": table.select(range(cut, len(table)))}


@pytest.fixture(scope="module")
def hub_snapshot(rows, tmp_path_factory) -> Layout:
    """`DatasetDict.push_to_hub` to the local Hub stand-in (2 train shards), then `snapshot_download`:
    the files are links into the Hub cache's blobs, with the card push_to_hub writes."""
    root = tmp_path_factory.mktemp("hub")
    datasets.DatasetDict({"train": rows["train"], "validation": rows["held_out"]}).save_to_disk(
        root / "saved"
    )
    with HubStandIn(token=TOKEN) as hub:
        env = {
            **os.environ,
            "HF_ENDPOINT": hub.endpoint,
            "HF_HUB_DISABLE_XET": "1",
            "HF_HOME": str(root / "hf_home"),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_TOKEN": TOKEN,
        }
        result = subprocess.run(
            [sys.executable, "-c", PUSH_AND_FETCH, str(root / "saved"), "tester/hand-shards"],
            capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        pushed = sorted(hub.files("tester/hand-shards"))
    files = {
        "train": ["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"],
        "validation": ["data/validation-00000-of-00001.parquet"],
    }
    assert pushed == sorted(["README.md", *files["train"], *files["validation"]])
    snapshot = Path(result.stdout.strip().splitlines()[-1])
    assert snapshot.parent.name == "snapshots" and (snapshot / files["train"][0]).is_symlink()
    return Layout(snapshot, files)


@pytest.fixture(scope="module")
def parquet_export(rows, tmp_path_factory) -> Layout:
    """`Dataset.to_parquet` into the Hub's shard names, no card."""
    folder = tmp_path_factory.mktemp("to_parquet")
    files = {
        "train": ["data/train-00000-of-00001.parquet"],
        "validation": ["data/validation-00000-of-00001.parquet"],
    }
    rows["train"].to_parquet(str(folder / files["train"][0]))
    rows["held_out"].to_parquet(str(folder / files["validation"][0]))
    return Layout(folder, files)


@pytest.fixture(scope="module")
def split_folders(rows, tmp_path_factory) -> Layout:
    """`train/` (two files) and `validation/` folders, no card."""
    folder = tmp_path_factory.mktemp("split_folders")
    (folder / "train").mkdir()
    (folder / "validation").mkdir()
    half = len(rows["train"]) // 2
    rows["train"].select(range(half)).to_parquet(str(folder / "train" / "part-a.parquet"))
    rows["train"].select(range(half, len(rows["train"]))).to_parquet(str(folder / "train" / "part-b.parquet"))
    rows["held_out"].to_parquet(str(folder / "validation" / "part-a.parquet"))
    return Layout(
        folder,
        {
            "train": ["train/part-a.parquet", "train/part-b.parquet"],
            "validation": ["validation/part-a.parquet"],
        },
    )


CARD = """---
license: other
configs:
- config_name: default
  data_files:
  - split: train
    path: files/hands_fit.parquet
  - split: heldout
    path: files/hands_kept_back*.parquet
---
# Hands

Two splits, in files of their own names.
"""


@pytest.fixture(scope="module")
def card_configs(rows, tmp_path_factory) -> Layout:
    """A card whose `configs` name the files: names no default pattern would read, a split `heldout`."""
    folder = tmp_path_factory.mktemp("card_configs")
    (folder / "files").mkdir()
    rows["train"].to_parquet(str(folder / "files" / "hands_fit.parquet"))
    rows["held_out"].to_parquet(str(folder / "files" / "hands_kept_back.parquet"))
    (folder / "README.md").write_text(CARD)
    return Layout(
        folder,
        {"train": ["files/hands_fit.parquet"], "heldout": ["files/hands_kept_back.parquet"]},
        "heldout",
    )


@pytest.fixture(scope="module")
def own_shards(rows, tmp_path_factory) -> Layout:
    """This project's shard names, `data/{split}-NNNNN.parquet`, any split name, without a card."""
    folder = tmp_path_factory.mktemp("own_shards")
    (folder / "data").mkdir()
    half = len(rows["train"]) // 2
    rows["train"].select(range(half)).to_parquet(str(folder / "data" / "train-00000.parquet"))
    rows["train"].select(range(half, len(rows["train"]))).to_parquet(
        str(folder / "data" / "train-00001.parquet")
    )
    rows["held_out"].to_parquet(str(folder / "data" / "held_out-00000.parquet"))
    files = {
        "train": ["data/train-00000.parquet", "data/train-00001.parquet"],
        "held_out": ["data/held_out-00000.parquet"],
    }
    return Layout(folder, files, "held_out")


LAYOUTS = ["hub_snapshot", "parquet_export", "split_folders", "card_configs", "own_shards"]


@pytest.fixture(params=LAYOUTS)
def layout(request) -> Layout:
    return request.getfixturevalue(request.param)


def test_built_data_files_gives_each_split_its_files(layout):
    found = built_data_files(layout.folder)
    root = layout.folder.resolve()
    assert {split: sorted(files) for split, files in found.items()} == {
        split: sorted(str(root / name) for name in names) for split, names in layout.files.items()
    }
    for files in found.values():  # absolute, and named as in the folder (a snapshot's links are kept)
        assert all(Path(f).is_absolute() and f.endswith(".parquet") and Path(f).is_file() for f in files)


def test_the_trainer_reads_every_split_row_for_row(layout, rows):
    for split in layout.files:
        expected = fx.comparable_rows(rows[layout.source(split)])
        assert fx.comparable_rows(open_dataset(str(layout.folder), split=split)) == expected
    streamed = open_dataset(str(layout.folder), split="train", streaming=True)
    assert fx.comparable_rows(streamed) == fx.comparable_rows(rows["train"])
    # and the rows become training examples: photo and conditioning image framed, caption kept
    columns = input_data.Columns()
    train = open_dataset(str(layout.folder), split="train")
    columns.check(train)
    first = columns.raw(train)[0]
    example = input_data.prepare_example(
        first, columns, input_data.ExampleOptions(resolution=64), np.random.default_rng(0)
    )
    assert example["pixel_values"].shape == (64, 64, 3) and example["conditioning_pixel_values"].max() > 0
    assert example["caption"] == first["caption"]


def test_evaluate_and_fidelity_read_the_held_out_split(layout, rows):
    """`evaluate --split` and `--fidelity_split` open a split with `open_split`."""
    table = open_split(str(layout.folder), layout.held_out)
    assert sorted(table["landmarks"]) == sorted(rows["held_out"]["landmarks"])
    assert table.column_names == ["conditioning_image", "caption", "landmarks"]


def test_show_summarises_a_hub_snapshot(hub_snapshot, rows):
    result = subprocess.run(
        [str(CLI), "show", str(hub_snapshot.folder), "--split", "validation"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"validation: {HELD_OUT} rows" in result.stdout
    listed = [line for line in result.stdout.splitlines() if line.startswith("- ")]
    assert [line.split(":")[0][2:] for line in listed] == list(rows["held_out"]["source_id"])


def test_an_unknown_layout_is_one_line_naming_the_folder(card_configs, tmp_path):
    without_card = tmp_path / "without_card"
    shutil.copytree(card_configs.folder / "files", without_card / "files")  # its card made it readable
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "README.md").write_text("# Notes\n\nA card without `configs`.\n")
    (loose / "notes.txt").write_text("no split in this name\n")
    for folder in (without_card, loose):
        with pytest.raises(UnknownLayoutError, match="looked for") as raised:
            built_data_files(folder)
        assert str(folder.resolve()) in str(raised.value) and "\n" not in str(raised.value)
        with pytest.raises(UnknownLayoutError, match="looked for"):  # evaluate: not "no such split"
            open_split(str(folder), "validation")
        result = subprocess.run([str(CLI), "show", str(folder)], capture_output=True, text=True, timeout=300)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.strip().startswith("error: ") and str(folder.resolve()) in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_train_flax_controlnet_trains_one_epoch_on_a_hub_snapshot(hub_snapshot, rows, tmp_path):
    """The reported failure: `--dataset_name` a folder of the Hub's shards. One epoch at batch 1 on one
    device is one step per train row (not the validation rows); an unknown layout is one line."""
    model = write_tiny_sd(tmp_path / "tiny-sd")
    output = tmp_path / "run"
    result = tf.run_training(model, hub_snapshot.folder, output, "--num_train_epochs", "1", devices=1)
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = [json.loads(line) for line in (output / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, len(rows["train"]) + 1))
    assert (output / "diffusion_pytorch_model.safetensors").is_file()

    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "README.md").write_text("# a card, no data\n")
    failed = tf.run_training(model, unknown, tmp_path / "run-unknown", devices=1)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr, failed.stderr[-4000:]
    assert f"error: {unknown.resolve()}" in failed.stderr and "looked for" in failed.stderr


def test_a_card_config_named_by_the_trainer_opens_its_splits(card_configs, rows):
    """`--dataset_config_name` on a folder whose card names its configs (datasets reads the card)."""
    held_out = open_dataset(str(card_configs.folder), card_configs.held_out, config="default")
    assert fx.comparable_rows(held_out) == fx.comparable_rows(rows["held_out"])
    with pytest.raises(SplitNotFoundError, match="no 'test' split"):
        open_dataset(str(card_configs.folder), "test", config="default")
