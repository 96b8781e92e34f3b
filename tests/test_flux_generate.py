"""`generate` and `evaluate --controlnet` over a FLUX.1 base with a Flux ControlNet, and its model card.

A tiny random FLUX.1 pipeline (`write_tiny_flux`) and a perturbed Flux ControlNet made from its
transformer, saved as the trainer exports it, with a card naming the hand dataset it was "trained" on.
The images are noise; what is checked is the plumbing: the files, the strength reaching the
ControlNet, scores, FLUX.1's defaults and mistakes, and the card.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from tiny_models import perturb

from landmark_controlnet.cli import main
from landmark_controlnet.diffusion.flux_pipeline import DEFAULT_GUIDANCE
from landmark_controlnet.generate import GenerateRequest, generate
from landmark_controlnet.training.export import write_model_card
from landmark_controlnet.training.tiny_flux import write_tiny_flux

SIZE = "64"  # pixels: 8x8 latents, 4x4 packed tokens


def tiny_flux_controlnet(base: Path, folder: Path, seed: int) -> Path:
    """A perturbed one-block Flux ControlNet from the tiny transformer, saved as the trainer exports."""
    from landmark_controlnet.diffusion.export import save_pretrained
    from landmark_controlnet.diffusion.flux_controlnet import FluxControlNetModel
    from landmark_controlnet.diffusion.flux_pipeline import load_flux

    transformer = load_flux(base).transformer
    controlnet = FluxControlNetModel.from_transformer(transformer, num_layers=1, num_single_layers=1)
    perturb(controlnet, seed, scale=0.05)  # else a no-op: its output layers start at zero
    save_pretrained(controlnet, folder)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory, hand_build):
    root = tmp_path_factory.mktemp("flux_generate")
    _, dataset = hand_build.copy_to(root)
    base = write_tiny_flux(root / "tiny-flux")
    controlnet = tiny_flux_controlnet(base, root / "controlnet", 1)
    write_model_card(controlnet, str(base), str(dataset), {}, None, None, flux=True)
    return {"base": base, "controlnet": controlnet, "dataset": dataset}


def generate_cli(models, out: Path, pose: str, *flags: str, capsys) -> tuple[int, dict | None, str]:
    """(exit code, report.json's content or None, stderr)."""
    capsys.readouterr()
    code = main(
        ["generate", "--base-model", str(models["base"]), "--controlnet", str(models["controlnet"]),
         "--pose", pose, "--prompt", "a hand", "--steps", "2", "--resolution", SIZE, "--out-dir", str(out),
         *flags]
    )  # fmt: skip
    captured = capsys.readouterr()
    report = json.loads((out / "report.json").read_text()) if code == 0 else None
    return code, report, captured.err


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def detection_json(models, folder: Path) -> Path:
    """Row 0's stored landmarks as a detection JSON file."""
    from builders.rows import open_dataset

    path = folder / "row0.json"
    path.write_text(open_dataset(str(models["dataset"]), split="train")[0]["landmarks"])
    return path


def test_generates_from_a_detection_json_scored(models, tmp_path, capsys):
    out = tmp_path / "json"
    pose = str(detection_json(models, tmp_path))
    code, report, err = generate_cli(models, out, pose, "--score", capsys=capsys)
    assert code == 0, err[-2000:]
    assert report["conditioner"] == "hand_encoded" and report["resolution"] == 64
    image = pixels(out / "image_0.png")
    assert image.shape == (64, 64, 3) and image.std() > 0
    assert pixels(out / "conditioning.png").max() > 0 and (out / "pose.json").is_file()
    assert report["images"][0]["fidelity"]["status"] in ("scored", "unreadable")
    assert report["fidelity_mean"]["rows"] == 1


def test_strength_reaches_the_flux_controlnet(models, tmp_path, capsys):
    """From DATASET#0: strength 0 leaves the transformer alone, strength 1 adds the ControlNet."""
    pose = f"{models['dataset']}#0"
    for strength in ("0", "1"):
        code, report, err = generate_cli(
            models, tmp_path / strength, pose, "--strength", strength, "--seed", "4", capsys=capsys
        )
        assert code == 0, err[-2000:]
        assert report["strength"] == float(strength) and (tmp_path / strength / "image_0.png").is_file()
    assert not np.array_equal(pixels(tmp_path / "0" / "image_0.png"), pixels(tmp_path / "1" / "image_0.png"))


def test_the_guidance_scale_defaults_to_flux_distilled_guidance(models, tmp_path):
    request = GenerateRequest(
        base_model=str(models["base"]), controlnet=str(models["controlnet"]),
        pose=f"{models['dataset']}#1", prompt="a hand", out_dir=tmp_path / "default", steps=1, resolution=32,
    )  # fmt: skip
    report = generate(request).report
    assert report["guidance_scale"] == DEFAULT_GUIDANCE == 3.5 and report["resolution"] == 32


def test_flux_mistakes_are_one_line_errors(models, tmp_path, capsys):
    pose = f"{models['dataset']}#0"
    for flags, words in [
        (("--negative-prompt", "blurry"), ("--negative-prompt", "FLUX.1")),
        (("--resolution", "72"), ("--resolution 72", "multiple of 16")),
    ]:
        code, _, err = generate_cli(models, tmp_path / "out", pose, *flags, capsys=capsys)
        assert code == 2, err[-2000:]
        assert err.strip().count("\n") == 0 and err.startswith("error: "), err
        assert all(word in err for word in words), err
    assert not (tmp_path / "out").exists()


def test_evaluate_generates_with_a_flux_base(models, tmp_path, capsys):
    out = tmp_path / "eval"
    capsys.readouterr()
    code = main(
        ["evaluate", "--controlnet", str(models["controlnet"]), "--base-model", str(models["base"]),
         "--dataset", str(models["dataset"]), "--out", str(out), "--split", "train", "--rows", "2",
         "--steps", "2", "--resolution", SIZE, "--batch-size", "2"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows"] == 2 and summary["resolution"] == 64
    generated = out / "controlnet" / "strength_1" / "generated"
    assert len(list(generated.glob("row*_0.png"))) == 2
    assert summary["controlnet"]["strengths"]["1"]["rows"] == 2


def test_the_card_of_a_flux_export_shows_the_flux_controlnet_pipeline(models):
    text = (models["controlnet"] / "README.md").read_text()
    header = yaml.safe_load(text.split("---")[1])
    assert header["license"] == "other" and "FLUX.1-dev" in header["license_link"]
    assert "flux" in header["tags"] and "stable-diffusion" not in header["tags"]
    assert "FluxControlNetPipeline.from_pretrained" in text and "StableDiffusion" not in text
    assert f'"{models["base"]}"' in text
