"""`generate --base-model --controlnet --pose --prompt --out-dir`: images from a pose.

A tiny random Stable Diffusion (64 px) and a perturbed ControlNet whose model card names the hand
dataset it was "trained" on, so a photo is detected with that dataset's conditioner. The images are
noise; what is checked is the plumbing: each pose source, the files, seeds, scores and mistakes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_models import tiny_controlnet

from landmark_controlnet.cli import main
from landmark_controlnet.generate import SEEDS_PER_SAMPLE
from landmark_controlnet.training.export import write_model_card
from landmark_controlnet.training.tiny_sd import write_tiny_sd

HAND_PHOTO = "images/hands/mediapipe_gesture_four_15a73593.jpg"
NO_HAND_PHOTO = "images/negatives/fan_grass.jpg"


@pytest.fixture(scope="module")
def models(tmp_path_factory, hand_build):
    root = tmp_path_factory.mktemp("generate")
    _, dataset = hand_build.copy_to(root)
    base = write_tiny_sd(root / "tiny-sd")
    controlnet = tiny_controlnet(base, root / "controlnet", 1)
    write_model_card(controlnet, str(base), str(dataset), {}, None, None)  # as the trainer's export
    bare = tiny_controlnet(base, root / "controlnet-without-card", 2)
    return {"base": base, "controlnet": controlnet, "bare": bare, "dataset": dataset}


def generate(models, out: Path, pose: str, *flags: str, capsys, controlnet: Path | None = None):
    """(exit code, report.json's content or None, stderr)."""
    capsys.readouterr()
    controlnet = controlnet or models["controlnet"]
    code = main(
        ["generate", "--base-model", str(models["base"]), "--controlnet", str(controlnet), "--pose", pose,
         "--prompt", "a hand", "--steps", "2", "--out-dir", str(out), *flags]
    )  # fmt: skip
    captured = capsys.readouterr()
    report = json.loads((out / "report.json").read_text()) if code == 0 else None
    if report is not None:
        assert json.loads(captured.out.strip().splitlines()[-1]) == report
    return code, report, captured.err


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def assert_one_line_error(code: int, err: str, *words: str) -> None:
    assert code == 2, err[-2000:]
    assert err.strip().count("\n") == 0 and err.startswith("error: "), err
    for word in words:
        assert word in err, err


def test_from_a_photo_with_the_cards_conditioner_two_images_scored(models, data_dir, tmp_path, capsys):
    out = tmp_path / "photo"
    photo = data_dir / HAND_PHOTO
    code, report, err = generate(models, out, str(photo), "--num-images", "2", "--score", capsys=capsys)
    assert code == 0, err[-2000:]
    assert report["conditioner"] == "hand_encoded"  # from the card of the dataset the ControlNet names
    assert report["pose"] == str(photo) and report["resolution"] == 64 and report["num_images"] == 2
    assert [image["file"] for image in report["images"]] == ["image_0.png", "image_1.png"]
    assert [image["seed"] for image in report["images"]] == [0, SEEDS_PER_SAMPLE]
    assert sorted(p.name for p in out.glob("image_*.png")) == ["image_0.png", "image_1.png"]
    conditioning = pixels(out / "conditioning.png")
    assert conditioning.shape[:2] == (64, 64) and conditioning.max() > 0  # the hand is drawn
    assert json.loads((out / "pose.json").read_text())["width"] == 64
    assert not np.array_equal(pixels(out / "image_0.png"), pixels(out / "image_1.png"))
    for image in report["images"]:
        fidelity = image["fidelity"]
        assert fidelity["status"] in ("scored", "unreadable") and "pck_0.1" in fidelity
    assert report["fidelity_mean"]["rows"] == 2 and "instance_recall" in report["fidelity_mean"]


def test_a_detection_json_and_its_dataset_row_give_the_same_images(models, tmp_path, capsys):
    """Row 0's stored landmarks, given as a JSON file or as DATASET#0, draw the same conditioning;
    the same seed then gives the very same image, another seed another image."""
    from builders.rows import open_dataset

    detection = tmp_path / "row0.json"
    detection.write_text(open_dataset(str(models["dataset"]), split="train")[0]["landmarks"])
    runs = {
        "json": (str(detection), "--seed", "5"),
        "row": (f"{models['dataset']}#0", "--seed", "5"),
        "other-seed": (f"{models['dataset']}#0", "--seed", "6"),
    }
    for name, (pose, *flags) in runs.items():
        code, report, err = generate(models, tmp_path / name, pose, *flags, capsys=capsys)
        assert code == 0, err[-2000:]
        assert report["conditioner"] == "hand_encoded" and "fidelity_mean" not in report
    json_run, row_run, other = (tmp_path / name for name in runs)
    assert np.array_equal(pixels(json_run / "conditioning.png"), pixels(row_run / "conditioning.png"))
    assert pixels(row_run / "conditioning.png").max() > 0
    assert np.array_equal(pixels(json_run / "image_0.png"), pixels(row_run / "image_0.png"))
    assert not np.array_equal(pixels(row_run / "image_0.png"), pixels(other / "image_0.png"))


def test_a_negative_prompt_reaches_the_sampler(models, tmp_path, capsys):
    pose = f"{models['dataset']}#0"
    plain = tmp_path / "plain"
    negative = tmp_path / "negative"
    assert generate(models, plain, pose, capsys=capsys)[0] == 0
    code, report, _ = generate(models, negative, pose, "--negative-prompt", "blurry", capsys=capsys)
    assert code == 0 and report["negative_prompt"] == "blurry"
    assert not np.array_equal(pixels(plain / "image_0.png"), pixels(negative / "image_0.png"))


def test_an_out_dir_with_a_report_is_never_overwritten(models, tmp_path, capsys):
    out = tmp_path / "once"
    pose = f"{models['dataset']}#1"
    assert generate(models, out, pose, capsys=capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, err = generate(models, out, pose, "--seed", "3", capsys=capsys)
    assert_one_line_error(code, err, "report.json", "never overwrites")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_mistakes_are_one_line_errors(models, data_dir, tmp_path, capsys):
    dataset = str(models["dataset"])
    cases = [
        (str(tmp_path / "missing.jpg"), ("missing.jpg", "no such file")),
        (f"{dataset}#x", ("ROW must be a row number",)),
        (f"{dataset}#", ("ROW must be a row number",)),
        (f"{dataset}#9999", ("row 9999 is out of range",)),
        (f"{tmp_path / 'no-dataset'}#0", ("not a dataset folder",)),
        (str(data_dir / NO_HAND_PHOTO), ("fan_grass.jpg", "hand_encoded found nothing")),
    ]
    for pose, words in cases:
        code, _, err = generate(models, tmp_path / "out", pose, capsys=capsys)
        assert_one_line_error(code, err, *words)
    not_json = tmp_path / "notes.json"
    not_json.write_text("{}")
    code, _, err = generate(models, tmp_path / "out", str(not_json), capsys=capsys)
    assert_one_line_error(code, err, "not a detection JSON")
    photo = str(data_dir / HAND_PHOTO)
    code, _, err = generate(models, tmp_path / "out", photo, capsys=capsys, controlnet=models["bare"])
    assert_one_line_error(code, err, "records no conditioner", "pass --conditioner")
    for flags, words in [(("--num-images", "0"), ("--num-images",)), (("--strength", "3"), ("--strength",))]:
        code, _, err = generate(models, tmp_path / "out", photo, *flags, capsys=capsys)
        assert_one_line_error(code, err, *words)
    assert not (tmp_path / "out").exists()  # every mistake is caught before anything is written


def test_conditioner_flag_overrides_a_card_that_names_none(models, data_dir, tmp_path, capsys):
    """--conditioner detects the photo for a ControlNet whose folder records no conditioner."""
    out = tmp_path / "override"
    code, report, err = generate(
        models, out, str(data_dir / HAND_PHOTO), "--conditioner", "hand_encoded",
        capsys=capsys, controlnet=models["bare"],
    )  # fmt: skip
    assert code == 0, err[-2000:]
    assert report["conditioner"] == "hand_encoded" and (out / "image_0.png").is_file()


def test_generates_with_an_sdxl_base_and_its_controlnet(models, tmp_path, capsys):
    """Both text encoders, the size ids and an encoded negative prompt reach the SDXL sampler."""
    base = write_tiny_sd(tmp_path / "tiny-sdxl", sdxl=True)
    sdxl = {**models, "base": base}
    controlnet = tiny_controlnet(base, tmp_path / "controlnet-sdxl", 3)
    pose = f"{models['dataset']}#0"
    out = tmp_path / "sdxl"
    code, report, err = generate(
        sdxl, out, pose, "--negative-prompt", "blurry", capsys=capsys, controlnet=controlnet
    )
    assert code == 0, err[-2000:]
    assert report["resolution"] == 64 and pixels(out / "image_0.png").std() > 0
