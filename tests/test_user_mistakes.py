"""Every user mistake is one line: exit 2, the flag or file named on stderr, no traceback, through
`landmark-controlnet`, `landmark-controlnet train` and train_flax_controlnet.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import train_fixtures as tf

from landmark_controlnet.training.tiny_sd import write_tiny_sd

CLI = Path(sys.executable).with_name("landmark-controlnet")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, hand_build):
    root = tmp_path_factory.mktemp("mistakes")
    return {"root": root, "model": write_tiny_sd(root / "tiny-sd"), "dataset": hand_build.root / "builder"}


def one_line_error(result: subprocess.CompletedProcess, names: str) -> None:
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and names in errors[0], result.stderr[-2000:]


TRAINER_MISTAKES = [
    (["--caption_column", "words"], "--caption_column 'words'"),
    (["--train_batch_size", "500"], "--train_batch_size"),
    (["--inpainting"], "inpainting"),
    (["--fidelity_rows", "2", "--validation_steps", "1"], "no 'validation' split"),
    (["--gradient_checkpointing", "everything"], "--gradient_checkpointing 'everything'"),
    (["--attention", "flash"], "--attention 'flash'"),
    (["--resume_from_checkpoint", "/no/such/checkpoint"], "--resume_from_checkpoint"),
    (["--lr_scheduler", "sometimes"], "--lr_scheduler"),
    (["--resolution", "100"], "--resolution"),
    (["--profile_steps", "5:3"], "--profile_steps: expected A:B"),
]


@pytest.mark.parametrize(("flags", "names"), TRAINER_MISTAKES, ids=[m[1] for m in TRAINER_MISTAKES])
def test_train_flax_controlnet_mistakes_are_one_line(workspace, flags, names):
    output = workspace["root"] / "out"
    one_line_error(
        tf.run_training(workspace["model"], workspace["dataset"], output, *flags, devices=1), names
    )


def test_train_subcommand_mistakes_are_one_line(workspace, tmp_path):
    (tmp_path / "runs").mkdir()
    args = ["train", "--pretrained_model_name_or_path", str(workspace["model"]), "--output_dir", "o"]
    result = subprocess.run(
        [str(CLI), *args, "--dataset_name", "runs/nonexist"],
        capture_output=True, text=True, cwd=tmp_path, env=tf.train_env(1),
    )  # fmt: skip
    one_line_error(result, "runs/nonexist: no such dataset folder")


CLI_MISTAKES = [
    (["draw", "notes.txt", "--out", "x.png"], "notes.txt"),
    (["condition"], "--conditioner"),
    (["show", "runs/nonexist"], "runs/nonexist"),
    (["evaluate", "--generated", "nowhere", "--reference", "nowhere", "--out", "o"], "nowhere"),
    (
        ["generate", "--base-model=b", "--controlnet=c", "--pose=nowhere.jpg", "--prompt=p", "--out-dir=o"],
        "nowhere.jpg",
    ),
]


@pytest.mark.parametrize(("args", "names"), CLI_MISTAKES, ids=[m[1] for m in CLI_MISTAKES])
def test_cli_mistakes_are_one_line(tmp_path, args, names):
    (tmp_path / "notes.txt").write_text("my notes, not a detection\n")
    (tmp_path / "runs").mkdir()
    one_line_error(subprocess.run([str(CLI), *args], capture_output=True, text=True, cwd=tmp_path), names)


def test_draw_mistakes_are_one_line(tmp_path):
    import numpy as np

    from conditioners import Detection, Instance

    points = np.column_stack([np.linspace(10, 50, 21), np.linspace(10, 50, 21)])
    (tmp_path / "hand.json").write_text(
        Detection("hand_encoded", 64, 64, [Instance("left_hand", points)]).to_json()
    )
    for args, names in [
        (["--out", "hand.jpg"], "hand.jpg: draw writes PNG"),
        (["--conditioner", "face_pupils", "--out", "hand.png"], "face_pupils draws none of"),
    ]:
        result = subprocess.run(
            [str(CLI), "draw", "hand.json", *args], capture_output=True, text=True, cwd=tmp_path
        )
        one_line_error(result, names)
    assert not (tmp_path / "hand.png").exists() and not (tmp_path / "hand.jpg").exists()


def test_a_rebuild_with_other_settings_is_one_line(hand_build, tmp_path):
    photos, builder = hand_build.copy_to(tmp_path)
    result = subprocess.run(
        [str(CLI), "build", str(builder), "--source", str(photos), "--shard-size", "7"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    one_line_error(result, "shard_size")
