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
import landmark_controlnet
from builders.rows import open_dataset
from landmark_controlnet.demo import HAND_PHOTO_PROMPTS

CLI = Path(sys.executable).with_name("landmark-controlnet")
DEMO_PHOTOS = Path(landmark_controlnet.__file__).parent / "demo_photos"


def run(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)


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
    out = out / "hand_encoded"  # each conditioner writes into its own folder
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
    assert record["extra"]["input"] == str(inputs[0])
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "conditioner": "hand_encoded",
        "out_dir": str(out),
        "inputs": 3,
        "contact_sheets": [str(sheet)],
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
        (
            ["condition", "--conditioner", "hand_standard", "--option", "min_instance_size=abc", "x.jpg"],
            "min_instance_size='abc'",
        ),
        (
            ["condition", "--conditioner", "hand_encoded", "--option", "max_num_hands=two", "x.jpg"],
            "max_num_hands",
        ),
        (
            ["condition", "--conditioner", "hand_encoded,face_pupils", "--option", "colour=red", "x.jpg"],
            "none of hand_encoded, face_pupils takes it",
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
    out = out / "hand_depth_mask"
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
    pngs = sorted((tmp_path / "o" / "hand_standard").glob("*.png"))
    assert len(pngs) == 2 and all(Image.open(p).size == (128, 64) for p in pngs)


def test_draw_redraws_a_stored_detection(tmp_path, data_dir):
    photo = data_dir / "images/hands/hagrid_tile10_heart_two_hands.jpg"
    out = tmp_path / "o"
    assert (
        run("condition", "--conditioner", "hand_encoded", "--out-dir", str(out), str(photo)).returncode == 0
    )
    out = out / "hand_encoded"
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
    # A hang guard, not a speed test: the trainer's first JIT compile takes minutes on busy cores.
    result = run("demo", "--out-dir", str(tmp_path / "demo"), timeout=900)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert Path(summary["contact_sheet"]).exists()
    assert summary["results"]["grace_hopper"]["face_pupils"] == "1 found"
    mediapipe = {"face_pupils", "hand_encoded", "hand_standard", "holistic"}
    assert mediapipe <= set(summary["results"]["astronaut"])
    # The others need weights that are not downloaded here: listed with the reason, not crashed.
    for name in set(conditioners.available()) - mediapipe - set(summary["results"]["astronaut"]):
        assert "not found locally" in summary["unavailable"][name]
    hand_photos = sorted(DEMO_PHOTOS.glob("*.jpg"))
    assert len(hand_photos) >= 2, "the package ships its demo hand photos"
    for photo in hand_photos:
        assert_hands_found(tmp_path / "demo", photo.stem, summary)
    assert_hand_encoded_dataset(Path(summary["dataset"]["folder"]), hand_photos)
    # ...then trains a tiny ControlNet on the demo dataset and writes a validation grid.
    training = summary["training"]
    assert len(training["losses"]) == 6 and all(np.isfinite(training["losses"]))
    grid = Image.open(training["validation_grid"])
    assert grid.width > 3 * 64  # conditioning + 2 generated images
    model = Path(training["model"])
    assert (model / "diffusion_pytorch_model.safetensors").exists()
    assert "controlnet" in (model / "README.md").read_text()


def assert_hands_found(out: Path, stem: str, summary: dict) -> None:
    """MediaPipe's hand conditioners find a hand on a shipped hand photo: in the report, in the
    stored detection, and in hand_depth_mask's mask (drawn beside its depth image)."""
    for name in ("hand_standard", "hand_encoded", "hand_depth_mask"):
        found = summary["hands_found"][stem][name]
        assert found >= 1 and summary["results"][stem][name] == f"{found} found"
        stored = conditioners.Detection.from_json((out / f"{stem}_{name}.json").read_text())
        assert len(stored.instances) == found
    mask = np.asarray(Image.open(out / f"{stem}_hand_depth_mask_mask.png"))
    assert mask.shape == Image.open(out / f"{stem}_hand_depth_mask.png").size[::-1]
    assert 0 < (mask > 0).mean() < 0.5  # a box around the hand, not the whole photo


def assert_hand_encoded_dataset(folder: Path, hand_photos: list[Path]) -> None:
    """The demo dataset has one row per hand photo, each a hand_encoded drawing of its detection."""
    rows = open_dataset(str(folder))
    assert sorted(rows["source_id"]) == [photo.name for photo in hand_photos]
    for row in rows:
        detection = conditioners.Detection.from_json(row["landmarks"])
        assert detection.conditioner == "hand_encoded" and detection.instances
        drawn = conditioners.conditioner_class("hand_encoded").draw(detection, row["conditioning_image"].size)
        np.testing.assert_array_equal(np.asarray(row["conditioning_image"].convert("RGB")), drawn)
        assert row["caption"] == HAND_PHOTO_PROMPTS[row["source_id"]]


def test_demo_photos_are_the_handrefiner_originals_with_their_prompts_and_licence(data_dir):
    generated = data_dir / "images" / "generated"
    lines = (generated / "handrefiner_prompts.jsonl").read_text().splitlines()
    prompt_of = {f"handrefiner_test_{record['img']}": record["txt"] for record in map(json.loads, lines)}
    notice = (DEMO_PHOTOS / "NOTICE.md").read_text()
    assert sorted(HAND_PHOTO_PROMPTS) == sorted(photo.name for photo in DEMO_PHOTOS.glob("*.jpg"))
    for name, prompt in HAND_PHOTO_PROMPTS.items():
        assert (DEMO_PHOTOS / name).read_bytes() == (generated / name).read_bytes()
        assert prompt == prompt_of[name] and name in notice
    assert (data_dir / "licenses" / "wenquanlu+HandRefiner.LICENSE").read_text().strip() in notice
    assert "github.com/wenquanlu/HandRefiner" in notice


def test_train_is_also_a_subcommand():
    result = run("train", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: landmark-controlnet train")
    assert "--pretrained_model_name_or_path" in result.stdout


def test_generate_lists_its_pose_forms_and_needs_its_models():
    result = run("generate", "--help")
    assert result.returncode == 0, result.stderr
    assert all(flag in result.stdout for flag in ("DATASET_DIR#ROW", "--num-images", "--score"))
    result = run("generate", "--pose", "photo.jpg", "--prompt", "a hand", "--out-dir", "out")
    assert result.returncode == 2 and "--base-model" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_same_named_inputs_keep_their_own_outputs(tmp_path, data_dir):
    hands = sorted((data_dir / "images/hands").glob("mmpose_*.jpg"))[:4]
    layout = {
        "a/photo.jpg": hands[0],
        "b/photo.jpg": hands[1],
        "c/photo_1.jpg": hands[2],
        "d/x.jpg": hands[3],
    }
    for name, photo in layout.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).symlink_to(photo)
    Image.open(hands[0]).save(tmp_path / "d/x.png")  # differs from d/x.jpg only by its suffix
    inputs = [*layout, "d/x.png", "a/photo.jpg"]  # and one given twice
    result = run("condition", "--conditioner", "hand_encoded", "--out-dir", "out", *inputs, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out/hand_encoded"
    expected = {
        "a/photo.json": "a/photo.jpg",
        "b/photo.json": "b/photo.jpg",
        "photo_1.json": "c/photo_1.jpg",
        "x.jpg.json": "d/x.jpg",
        "x.png.json": "d/x.png",
    }
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.json"))
    assert written == sorted(expected)
    for name, photo in expected.items():
        assert json.loads((out / name).read_text())["extra"]["input"] == str(tmp_path / photo)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["inputs"] == 5 and report["kept"] + report["skipped"] + report["unreadable"] == len(written)
    assert len(list(out.rglob("*.png"))) == report["kept"] + report["skipped"]
    assert "given twice" in result.stderr


def test_several_conditioners_in_one_call(tmp_path, data_dir):
    photo = data_dir / "images/hands/hagrid_tile10_heart_two_hands.jpg"
    out = tmp_path / "out"
    args = ["condition", "--conditioner", "hand_encoded", "--conditioner", "hand_standard,hand_encoded"]
    result = run(*args, "--option", "max_num_hands=1", "--out-dir", str(out), str(photo))
    assert result.returncode == 0, result.stderr
    reports = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [r["conditioner"] for r in reports] == ["hand_encoded", "hand_standard"]
    for name in ("hand_encoded", "hand_standard"):
        detection = conditioners.Detection.from_json((out / name / f"{photo.stem}.json").read_text())
        assert detection.conditioner == name and len(detection.instances) == 1  # the option reached both
    encoded = np.asarray(Image.open(out / "hand_encoded" / f"{photo.stem}.png").convert("RGB"))
    standard = np.asarray(Image.open(out / "hand_standard" / f"{photo.stem}.png").convert("RGB"))
    assert encoded.shape == standard.shape and not np.array_equal(encoded, standard)


def test_mediapipe_native_logs_are_hidden_unless_verbose(tmp_path, data_dir):
    photo = data_dir / "images/hands/hagrid_tile10_heart_two_hands.jpg"
    native = ("W0000", "Created TensorFlow Lite", "absl::InitializeLog")
    args = [
        "condition",
        "--conditioner",
        "hand_encoded,holistic",
        "--out-dir",
        str(tmp_path / "o"),
        str(photo),
    ]
    quiet = run(*args)
    assert quiet.returncode == 0 and not any(line in quiet.stderr for line in native), quiet.stderr
    assert "hand_encoded" in quiet.stderr  # the progress bar still shows
    verbose = run("--verbose", *args)
    assert verbose.returncode == 0 and any(line in verbose.stderr for line in native), verbose.stderr
