"""The `landmark-controlnet` console script, run as a real subprocess from the virtual environment."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import conditioners

CLI = Path(sys.executable).with_name("landmark-controlnet")


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_console_script_is_installed():
    assert CLI.exists(), "install the project (make test does) so that the console script exists"


def test_conditioners_lists_names():
    result = run("conditioners")
    assert result.returncode == 0
    builtins = [
        "animal_pose",
        "face_pupils",
        "hand_depth_mask",
        "hand_encoded",
        "hand_standard",
        "holistic",
        "spiga68",
    ]
    assert result.stdout.split() == sorted(builtins)


def test_condition_writes_png_and_json_and_survives_bad_inputs(tmp_path, data_dir):
    hands = data_dir / "images/hands"
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg at all")
    inputs = [hands / "mmpose_freihand_00000355.jpg", bad, data_dir / "images/negatives/fan_grass.jpg"]
    out = tmp_path / "out"
    sheet = tmp_path / "sheet.png"
    result = run(
        "condition",
        "--conditioner",
        "hand_encoded",
        "--option",
        "min_instance_size=10",
        "--out-dir",
        str(out),
        "--contact-sheet",
        str(sheet),
        *map(str, inputs),
    )
    assert result.returncode == 0, result.stderr
    assert "broken.jpg" in result.stderr and "unreadable" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "broken.json",  # every input is accounted for, unreadable ones too
        "fan_grass.json",
        "fan_grass.png",
        "mmpose_freihand_00000355.json",
        "mmpose_freihand_00000355.png",
    ]
    record = json.loads((out / "mmpose_freihand_00000355.json").read_text())
    assert record["conditioner"] == "hand_encoded" and record["skipped"] is None
    assert record["instances"][0]["kind"] == "right_hand" and len(record["instances"][0]["points"]) == 21
    assert json.loads((out / "fan_grass.json").read_text())["skipped"] == "no_detection"
    unreadable = json.loads((out / "broken.json").read_text())
    assert unreadable["skipped"] == "unreadable" and "not a recognised image" in unreadable["skip_message"]
    conditioning = Image.open(out / "mmpose_freihand_00000355.png")
    assert conditioning.size == (224, 224)
    assert Image.open(sheet).size[0] > 2 * 256
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "conditioner": "hand_encoded",
        "out_dir": str(out),
        "kept": 1,
        "unreadable": 1,
        "skipped": 1,
    }


def test_condition_fails_only_when_nothing_is_readable(tmp_path):
    bad = tmp_path / "a.png"
    bad.write_bytes(b"\x89PNG nope")
    result = run("condition", "--conditioner", "hand_standard", "--out-dir", str(tmp_path / "o"), str(bad))
    assert result.returncode != 0 and "a.png" in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["condition", "--conditioner", "no_such", "x.jpg"], "unknown conditioner 'no_such'"),
        (
            ["condition", "--conditioner", "hand_standard", "--option", "colour=red", "x.jpg"],
            "no option colour",
        ),
        (["build", "no_such_builder", "--source", "."], "no builder 'no_such_builder'"),
        (["build", "hagrid_hand_enc", "--source", "/no/such/folder"], "/no/such/folder"),
        (["draw", "missing.json", "--out", "x.png"], "missing.json"),
    ],
)
def test_known_errors_print_one_line_and_exit_2(tmp_path, args, message):
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_condition_and_draw_write_every_extra_image(tmp_path, data_dir):
    photo = data_dir / "images/generated/handrefiner_test_1.jpg"
    out, sheet = tmp_path / "o", tmp_path / "sheet.png"
    args = [
        "condition",
        "--conditioner",
        "hand_depth_mask",
        "--out-dir",
        str(out),
        "--contact-sheet",
        str(sheet),
    ]
    assert run(*args, str(photo)).returncode == 0
    mask = np.asarray(Image.open(out / f"{photo.stem}_mask.png"))
    assert mask.shape == np.asarray(Image.open(out / f"{photo.stem}.png")).shape[:2] and mask.max() == 255
    assert Image.open(sheet).size[0] >= 3 * 256  # photo, depth and mask
    redrawn = tmp_path / "mask.png"
    result = run("draw", str(out / f"{photo.stem}.json"), "--image", "mask", "--out", str(redrawn))
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(np.asarray(Image.open(redrawn)), mask)
    result = run("draw", str(out / f"{photo.stem}.json"), "--image", "depth", "--out", str(redrawn))
    assert result.returncode == 2 and "conditioning_image, mask" in result.stderr


def test_condition_accepts_folders_and_output_size(tmp_path, data_dir):
    folder = tmp_path / "photos"
    folder.mkdir()
    # Symlinks keep the shared photos in place while giving the CLI a folder to expand.
    for name in ("mmpose_onehand10k_1402.jpg", "mmpose_onehand10k_33.jpg"):
        (folder / name).symlink_to(data_dir / "images/hands" / name)
    result = run(
        "condition",
        "--conditioner",
        "hand_standard",
        "--size",
        "128x64",
        "--out-dir",
        str(tmp_path / "o"),
        str(folder),
    )
    assert result.returncode == 0, result.stderr
    pngs = sorted((tmp_path / "o").glob("*.png"))
    assert len(pngs) == 2 and all(Image.open(p).size == (128, 64) for p in pngs)


def test_draw_redraws_a_stored_detection(tmp_path, data_dir):
    photo = data_dir / "images/hands/hagrid_tile10_heart_two_hands.jpg"
    out = tmp_path / "o"
    assert (
        run("condition", "--conditioner", "hand_encoded", "--out-dir", str(out), str(photo)).returncode == 0
    )
    stored = out / f"{photo.stem}.json"
    redrawn = tmp_path / "redrawn.png"
    result = run("draw", str(stored), "--out", str(redrawn))
    assert result.returncode == 0, result.stderr
    original = np.asarray(Image.open(out / f"{photo.stem}.png").convert("RGB"))
    np.testing.assert_array_equal(np.asarray(Image.open(redrawn).convert("RGB")), original)
    # Another style from the same landmarks, and another size.
    standard = tmp_path / "standard.png"
    assert (
        run(
            "draw", str(stored), "--conditioner", "hand_standard", "--size", "100x50", "--out", str(standard)
        ).returncode
        == 0
    )
    assert Image.open(standard).size == (100, 50)
    assert not np.array_equal(
        np.asarray(Image.open(standard).convert("RGB")),
        np.asarray(Image.open(redrawn).convert("RGB").resize((100, 50))),
    )


def test_demo_writes_a_contact_sheet_a_dataset_and_a_trained_tiny_controlnet(tmp_path):
    result = run("demo", "--out-dir", str(tmp_path / "demo"))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert Path(summary["contact_sheet"]).exists()
    assert summary["results"]["grace_hopper"]["face_pupils"] == "1 found"
    mediapipe = {"face_pupils", "hand_encoded", "hand_standard", "holistic"}
    assert mediapipe <= set(summary["results"]["astronaut"])
    # The others need weights that are not downloaded here: listed with the reason, not crashed.
    for name in set(conditioners.available()) - mediapipe - set(summary["results"]["astronaut"]):
        assert "not found locally" in summary["unavailable"][name]
    # ...then trains a tiny ControlNet on the demo dataset and writes a validation grid.
    training = summary["training"]
    assert len(training["losses"]) == 6 and all(np.isfinite(training["losses"]))
    grid = Image.open(training["validation_grid"])
    assert grid.width > 3 * 64  # conditioning + 2 generated images
    model = Path(training["model"])
    assert (model / "diffusion_pytorch_model.safetensors").exists()
    assert "controlnet" in (model / "README.md").read_text()


def test_train_is_also_a_subcommand():
    result = run("train", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: landmark-controlnet train")
    assert "--pretrained_model_name_or_path" in result.stdout
