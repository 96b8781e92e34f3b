"""`evaluate --controlnet --base-model --dataset`: generate with the project's sampler, then score.

A tiny random Stable Diffusion and ControlNets on rows built from the shared hand photos. Random
models draw noise, so the scores are low; what is checked is the plumbing: every strength and model
generated and scored on the same rows and seeds, the files, the summary and the comparison table.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from tiny_models import perturb

from landmark_controlnet.cli import main
from landmark_controlnet.diffusion.export import save_pretrained
from landmark_controlnet.evaluation.generate import parse_strengths
from landmark_controlnet.training.models import controlnet_from_unet, controlnet_options, load_base_model
from landmark_controlnet.training.tiny_sd import write_tiny_sd

FIGURES = ("instance_recall", "pck_0.05", "pck_0.1", "pck_0.2", "mean_error")


@pytest.fixture(scope="module")
def models(tmp_path_factory, hand_build):
    root = tmp_path_factory.mktemp("evaluate_generate")
    _, builder = hand_build.copy_to(root)
    base = write_tiny_sd(root / "tiny-sd")
    unet = load_base_model(str(base)).unet
    controlnets = []
    for seed in (1, 2):
        controlnet = controlnet_from_unet(unet, seed, controlnet_options(jnp.float32))
        perturb(controlnet, seed, scale=0.05)  # else a no-op: its output convolutions start at zero
        save_pretrained(controlnet, root / f"controlnet-{seed}")
        controlnets.append(root / f"controlnet-{seed}")
    return {"root": root, "dataset": builder, "base": base, "controlnets": controlnets}


def evaluate(models, out: Path, *flags: str, capsys) -> tuple[int, list[str], str]:
    capsys.readouterr()
    code = main(
        ["evaluate", "--controlnet", str(models["controlnets"][0]), "--base-model", str(models["base"]),
         "--dataset", str(models["dataset"]), "--out", str(out), "--steps", "2", *flags]
    )  # fmt: skip
    captured = capsys.readouterr()
    return code, captured.out.strip().splitlines(), captured.err


def pixels(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path))


def test_generate_then_score_every_strength_and_a_compared_controlnet(models, tmp_path, capsys):
    out = tmp_path / "eval"
    code, lines, err = evaluate(
        models, out, "--split", "train", "--rows", "3", "--samples-per-row", "2", "--strength", "0.5,1.0",
        "--batch-size", "2", "--compare", str(models["controlnets"][1]), capsys=capsys,
    )  # fmt: skip
    assert code == 0, err[-2000:]
    summary = json.loads(lines[-1])
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["rows"] == 3 and summary["samples_per_row"] == 2 and summary["resolution"] == 64
    assert sorted((out / "references").glob("*.json")) and len(list((out / "references").glob("*.json"))) == 3
    for label in ("controlnet", "compare"):
        assert set(summary[label]["strengths"]) == {"0.5", "1"}
        for strength, scores in summary[label]["strengths"].items():
            folder = out / label / f"strength_{strength}"
            assert len(list((folder / "generated").glob("row*_[01].png"))) == 6
            assert len((folder / "rows.jsonl").read_text().splitlines()) == 6
            assert (folder / "report.png").stat().st_size > 0
            assert scores["rows"] == 6 and scores["missing"] == 0 and scores["unreadable"] == 0
            assert all(scores[f] is None or 0 <= scores[f] <= 1 for f in FIGURES if f != "mean_error")
    table = "\n".join(lines[:-1])
    assert "compare" in table and "pck_0.1" in table and table.count("instance_recall") == 2
    # Strength reaches the sampler, and the samples of one row differ (their own seeds).
    half, full = (out / "controlnet" / f"strength_{s}" / "generated" for s in ("0.5", "1"))
    assert not np.array_equal(pixels(half / "row00000_0.png"), pixels(full / "row00000_0.png"))
    assert not np.array_equal(pixels(full / "row00000_0.png"), pixels(full / "row00000_1.png"))


def test_the_compared_controlnet_gets_the_same_rows_and_seeds(models, tmp_path, capsys):
    """Comparing a ControlNet with itself must give the very same images and scores."""
    out = tmp_path / "self"
    code, lines, _ = evaluate(
        models,
        out,
        "--split",
        "train",
        "--rows",
        "2",
        "--compare",
        str(models["controlnets"][0]),
        capsys=capsys,
    )
    assert code == 0
    summary = json.loads(lines[-1])
    assert summary["controlnet"]["strengths"] == summary["compare"]["strengths"]
    for ours in sorted((out / "controlnet" / "strength_1" / "generated").glob("*.png")):
        theirs = out / "compare" / "strength_1" / "generated" / ours.name
        assert np.array_equal(pixels(ours), pixels(theirs))


def test_a_missing_split_or_base_model_is_a_clear_error(models, tmp_path, capsys):
    code = main(
        ["evaluate", "--controlnet", "x", "--dataset", str(models["dataset"]), "--out", str(tmp_path)]
    )
    assert code == 2 and "--base-model" in capsys.readouterr().err
    code, _, err = evaluate(models, tmp_path / "no-split", capsys=capsys)  # default split: validation
    assert code == 2 and "'validation'" in err and "--validation-fraction" in err


@pytest.mark.parametrize("text", ["", "0", "a,b", "0.5,3"])
def test_strength_lists_are_checked(text):
    from conditioners.errors import UserError

    with pytest.raises(UserError):
        parse_strengths(text)
    assert parse_strengths("0.4, 0.6,1") == (0.4, 0.6, 1.0)


def test_training_scores_fidelity_at_each_validation(models, tmp_path, data_dir):
    import builder_fixtures as fx
    import datasets
    import train_fixtures as tf

    from builders import BuildSettings
    from builders.run import run_build
    from landmark_controlnet.training.logs import read_metrics

    builder = fx.folder_recipe(tmp_path)
    settings = BuildSettings(shard_size=3, validation_fraction=0.7)
    run_build(str(builder), str(fx.photo_folder(data_dir, tmp_path)), settings, progress=False)
    held_out = len(datasets.load_dataset(str(builder), split="validation"))
    assert held_out >= 2
    output = tmp_path / "run"
    result = tf.run_training(
        models["base"], builder, output, "--max_train_steps", "2", "--validation_steps", "2",
        "--num_validation_images", "1", "--num_inference_steps", "2", "--fidelity_rows", "2", devices=2,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    logged = [m for m in read_metrics(output / "logs") if any(k.startswith("fidelity/") for k in m)]
    assert [m["step"] for m in logged] == [2]
    assert 0 <= logged[0]["fidelity/instance_recall"] <= 1 and "fidelity/pck_0.1" in logged[0]
    summary = json.loads((output / "fidelity" / "step-000002" / "summary.json").read_text())
    assert summary["rows"] == 2 and summary["conditioner"] == "hand_encoded"
    assert len(list((output / "fidelity" / "references").glob("row*.json"))) == 2
    card = (output / "README.md").read_text()
    assert "## Control fidelity" in card and "`validation` split" in card


def test_evaluate_generates_with_an_sdxl_base_and_its_controlnet(models, tmp_path, capsys):
    """The same command on a tiny SDXL: both text encoders and the size ids reach the sampler."""
    base = write_tiny_sd(tmp_path / "tiny-sdxl", sdxl=True)
    controlnet = controlnet_from_unet(load_base_model(str(base)).unet, 3, controlnet_options(jnp.float32))
    perturb(controlnet, 3, scale=0.05)
    save_pretrained(controlnet, tmp_path / "controlnet-sdxl")
    sdxl = {**models, "base": base, "controlnets": [tmp_path / "controlnet-sdxl"]}
    out = tmp_path / "eval-sdxl"
    code, lines, err = evaluate(
        sdxl, out, "--split", "train", "--rows", "2", "--samples-per-row", "1", capsys=capsys
    )
    assert code == 0, err[-2000:]
    summary = json.loads(lines[-1])
    assert summary["rows"] == 2 and summary["resolution"] == 64  # the tiny SDXL's own size
    generated = sorted((out / "controlnet" / "strength_1" / "generated").glob("*.png"))
    assert len(generated) == 2 and pixels(generated[0]).std() > 0
