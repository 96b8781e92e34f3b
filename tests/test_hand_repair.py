"""Hand repair end to end: `--inpainting` training on `hand_repair` rows and `refine-hands`.

Everything runs on a tiny random inpainting Stable Diffusion (9-channel UNet, see tiny_sd.py), on
rows built from HandRefiner's five generated images. Random weights repaint noise; what is checked is
the plumbing: channels, masks, the composite, the files written.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import builder_fixtures as fx
import numpy as np
import pytest
import train_fixtures as tf
from PIL import Image

import conditioners
from builders import BuildSettings
from builders.run import run_build
from conditioners.images import center_crop_framing, load_image
from landmark_controlnet.refine_hands import composite, working_size
from landmark_controlnet.training.logs import read_metrics
from landmark_controlnet.training.tiny_sd import write_tiny_sd

GENERATED = [f"handrefiner_test_{n}.jpg" for n in range(1, 6)]
PROMPT = "a woman facing the camera, making a hand gesture, indoor"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("hand_repair")
    source = fx.generated_folder(data_dir, root)
    run_build("hand_repair", str(source), BuildSettings(), output=root / "rows", progress=False)
    return {
        "root": root,
        "rows": root / "rows",
        "inpainting": write_tiny_sd(root / "tiny-inpainting", inpainting=True),
        "plain": write_tiny_sd(root / "tiny-sd"),
    }


@pytest.fixture(scope="module")
def inpainting_run(workspace):
    output = workspace["root"] / "run"
    result = tf.run_training(
        workspace["inpainting"], workspace["rows"], output,
        "--inpainting", "--random_flip", "--mask_dilation", "0.1",
        "--max_train_steps", "2", "--validation_steps", "2",
        "--num_validation_images", "1", "--num_inference_steps", "2",
        devices=2,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return output


def test_inpainting_training_trains_a_controlnet_and_validates_by_repainting(inpainting_run):
    losses = [entry["loss"] for entry in read_metrics(inpainting_run / "logs")]
    assert len(losses) == 2 and np.isfinite(losses).all()
    config = json.loads((inpainting_run / "config.json").read_text())
    assert config["in_channels"] == 4, "the ControlNet sees the 4 latent channels, the UNet all 9"
    grid = Image.open(inpainting_run / "validation" / "step-000002.png")
    assert grid.width > 4 * 128, "photo | mask | depth | repainted"
    assert (inpainting_run / "diffusion_pytorch_model.safetensors").exists()
    assert "StableDiffusionControlNetInpaintPipeline" in (inpainting_run / "README.md").read_text()


@pytest.mark.parametrize(
    ("model", "flags", "message"),
    [
        ("plain", ["--inpainting"], "is not an inpainting model"),
        ("inpainting", [], "add --inpainting"),
    ],
)
def test_the_unet_and_the_inpainting_flag_must_agree(workspace, tmp_path, model, flags, message):
    result = tf.run_training(
        workspace[model], workspace["rows"], tmp_path / "run", "--max_train_steps", "1", *flags, devices=1
    )
    assert result.returncode != 0 and message in result.stderr


def test_the_mask_and_masked_photo_reach_the_unet(workspace):
    import jax
    import jax.numpy as jnp

    from landmark_controlnet.diffusion.pipeline import inpainting_channels, load_stable_diffusion

    vae = load_stable_diffusion(str(workspace["inpainting"])).vae
    pixels = jax.random.uniform(jax.random.PRNGKey(0), (1, 64, 64, 3), minval=-1, maxval=1)
    left = jnp.zeros((1, 64, 64, 1)).at[:, :, :32].set(1.0)
    extra = inpainting_channels(vae, left, pixels, (8, 8))
    assert extra.shape == (1, 8, 8, 5)
    np.testing.assert_array_equal(extra[0, :, :, 0], np.repeat([[1.0] * 4 + [0.0] * 4], 8, axis=0))
    # The masked photo's latents do not depend on what is under the mask.
    changed = pixels.at[:, :, :32].set(0.5)
    np.testing.assert_allclose(
        inpainting_channels(vae, left, changed, (8, 8))[..., 1:], extra[..., 1:], atol=1e-5
    )
    assert not np.allclose(inpainting_channels(vae, 1 - left, changed, (8, 8)), extra)


@pytest.fixture(scope="module")
def refiner(workspace, inpainting_run):
    from landmark_controlnet.refine_hands import HandRefiner

    return HandRefiner(str(workspace["inpainting"]), str(inpainting_run), steps=2)


@pytest.mark.parametrize("photo", GENERATED)
def test_refined_images_change_only_inside_the_hand_masks(photo, refiner, data_dir):
    path = data_dir / "images" / "generated" / photo
    repair = refiner(path, PROMPT, strength=0.55, resolution=64)
    original = load_image(path).pixels
    assert repair.hands >= 1 and repair.result.shape == original.shape
    outside, inside = repair.mask == 0, repair.mask > 0
    np.testing.assert_array_equal(repair.result[outside], original[outside])
    assert np.abs(repair.result[inside].astype(int) - original[inside]).mean() > 1, "the hand was repainted"
    assert (repair.depth[inside] > 0).any()


def test_a_non_square_image_is_centre_cropped_to_the_work_size_and_put_back(refiner, data_dir, tmp_path):
    """A portrait crop whose hand reaches into the bottom border that the centre crop to the 64x64
    work size cuts off: repainted inside the framed region only, the input's own pixels elsewhere."""
    path = tmp_path / "portrait.png"
    Image.open(data_dir / "images" / "generated" / GENERATED[1]).crop((130, 0, 410, 440)).save(path)
    repair = refiner(path, PROMPT, strength=0.55, resolution=64)
    original = load_image(path).pixels
    assert repair.hands == 1 and repair.result.shape == original.shape == (440, 280, 3)
    framing = center_crop_framing((280, 440), working_size((280, 440), 64))
    (left, top), (sx, sy), (width, height) = framing.offset, framing.scale, framing.size
    framed = np.zeros(original.shape[:2], bool)
    framed[
        math.ceil(top / sy) : math.floor((top + height) / sy),
        math.ceil(left / sx) : math.floor((left + width) / sx),
    ] = True
    repainted = (repair.mask > 0) & framed
    assert ((repair.mask > 0) & ~framed).any(), "the hand's mask reaches into the cropped-off border"
    np.testing.assert_array_equal(repair.result[~repainted], original[~repainted])
    assert np.abs(repair.result[repainted].astype(int) - original[repainted]).mean() > 1


def refine(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "landmark_controlnet.cli", "refine-hands", *args]
    return subprocess.run(command, capture_output=True, text=True, env=tf.train_env(1), timeout=600)


def test_refine_hands_cli_writes_the_repair_and_a_preview(workspace, inpainting_run, data_dir, tmp_path):
    image = data_dir / "images" / "generated" / GENERATED[1]
    out, preview = tmp_path / "fixed.png", tmp_path / "preview.png"
    result = refine(
        "--image", str(image), "--prompt", PROMPT, "--controlnet", str(inpainting_run),
        "--base-model", str(workspace["inpainting"]), "--strength", "0.55", "--out", str(out),
        "--preview", str(preview), "--resolution", "64", "--steps", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["hands"] == 1 and summary["strength"] == 0.55 and 0 < summary["masked_fraction"] < 0.5
    fixed, original = np.asarray(Image.open(out)), load_image(image).pixels
    detection = conditioners.get("hand_depth_mask").detect(image)
    mask = conditioners.conditioner_class("hand_depth_mask").render_extra("mask", detection)
    np.testing.assert_array_equal(fixed[mask == 0], original[mask == 0])
    assert Image.open(preview).width > 4 * 256


def test_refine_hands_leaves_an_image_without_hands_alone_and_names_bad_files(workspace, data_dir, tmp_path):
    common = ["--prompt", "x", "--controlnet", "unused", "--base-model", "unused", "--out"]
    negative = data_dir / "images" / "negatives" / "fan_grass.jpg"
    result = refine("--image", str(negative), *common, str(tmp_path / "same.png"))
    assert result.returncode == 0 and "no hand found" in result.stderr
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "same.png")), load_image(negative).pixels)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    result = refine("--image", str(broken), *common, str(tmp_path / "x.png"))
    assert result.returncode == 2 and "broken.jpg" in result.stderr and "Traceback" not in result.stderr


def test_composite_is_exact_outside_the_mask_and_feathers_inside():
    rng = np.random.default_rng(0)
    photo, generated = (rng.integers(0, 256, (40, 50, 3), dtype=np.uint8) for _ in range(2))
    mask = np.zeros((40, 50), np.uint8)
    mask[10:30, 10:40] = 255
    result = composite(photo, generated, mask, feather=4)
    np.testing.assert_array_equal(result[mask == 0], photo[mask == 0])
    np.testing.assert_array_equal(result[20, 25], generated[20, 25])  # deep inside: all generated
    edge = result[10, 25].astype(int)
    assert not np.array_equal(edge, generated[10, 25]), "blended at the mask's edge"
    assert working_size((512, 512), 512) == (512, 512) and working_size((1000, 600), 512) == (512, 320)
