"""train_flax_controlnet.py on a tiny SDXL, on 4 simulated CPU devices: 2x2 and 4x1 meshes agree, a
killed sharded run resumes onto another mesh, the export is an SDXL ControlNet, and --dry_run sizes
the real SDXL from its configs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import train_fixtures as tf

from landmark_controlnet.training.logs import read_metrics
from landmark_controlnet.training.published_configs import write_config_folder
from landmark_controlnet.training.tiny_sd import write_tiny_sd

# Validation at the end (SDXL sampling), checkpoints every 2 steps, mirrored rows, and a sharding
# threshold low enough that the tiny model's kernels are split along fsdp. Two meshes partition the
# convolutions and sum the gradients differently (1e-6 relative); Adam divides each gradient by its
# own scale, so an element whose gradient cancels to almost nothing would turn that rounding into a
# full step of either sign. An epsilon of the gradients' own size (about 1e-3 here) keeps those
# elements' steps proportional to their gradients.
FLAGS = (
    "--adam_epsilon", "1e-3",
    "--max_train_steps", "6",
    "--checkpointing_steps", "2",
    "--random_flip",
    "--validation_steps", "6",
    "--num_validation_images", "1",
    "--num_inference_steps", "2",
    "--fsdp_min_elements", "1024",
)  # fmt: skip
TWO_BY_TWO, FOUR_BY_ONE = "data=2,fsdp=2", "data=4"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, hand_build):
    root = tmp_path_factory.mktemp("train_sdxl")
    _, dataset = hand_build.copy_to(root)
    model = write_tiny_sd(root / "tiny-sdxl", sdxl=True)
    return {"root": root, "model": model, "dataset": dataset, "cache": root / "jax-cache"}


def _command(workspace, output, *flags: str) -> list[str]:
    return tf.train_command(
        workspace["model"], workspace["dataset"], output, *FLAGS,
        "--compilation_cache_dir", str(workspace["cache"]), *flags,
    )  # fmt: skip


def _train(workspace, name: str, *flags: str):
    output = workspace["root"] / name
    result = subprocess.run(
        _command(workspace, output, *flags), capture_output=True, text=True, env=tf.train_env(4), timeout=900
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return output, result


@pytest.fixture(scope="module")
def meshes(workspace):
    return {
        mesh: _train(workspace, mesh.replace(",", "_"), "--mesh", mesh) for mesh in (TWO_BY_TWO, FOUR_BY_ONE)
    }


def _megabytes_per_device(stderr: str) -> float:
    return float(re.search(r"ControlNet .* ([\d.]+) MB per device", stderr).group(1))


def test_a_2x2_and_a_4x1_mesh_train_the_same_sdxl_controlnet(meshes):
    (sharded, sharded_run), (replicated, replicated_run) = meshes[TWO_BY_TWO], meshes[FOUR_BY_ONE]
    losses = [[m["loss"] for m in read_metrics(out / "logs")] for out in (sharded, replicated)]
    assert len(losses[0]) == 6
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    tf.assert_same_params(sharded, replicated, atol=1e-5)
    # The 2x2 run holds its ControlNet split in two along fsdp: about half the bytes per device.
    ratio = _megabytes_per_device(sharded_run.stderr) / _megabytes_per_device(replicated_run.stderr)
    assert 0.5 <= ratio < 0.6, ratio
    assert "mesh data=2 fsdp=2" in sharded_run.stderr


def test_the_sdxl_run_validates_and_exports_an_sdxl_controlnet(meshes):
    output, _ = meshes[TWO_BY_TWO]
    config = json.loads((output / "config.json").read_text())
    assert config["addition_embed_type"] == "text_time" and config["transformer_layers_per_block"] == [
        1,
        1,
        2,
    ]
    assert (output / "validation" / "step-000006.png").is_file()
    assert "StableDiffusionXLControlNetPipeline" in (output / "README.md").read_text()


def test_a_killed_sharded_run_resumes_on_its_own_mesh_and_onto_another(workspace, meshes):
    killed = workspace["root"] / "killed"
    saved = tf.kill_at_first_checkpoint(_command(workspace, killed, "--mesh", TWO_BY_TWO), killed)
    shutil.copytree(killed, workspace["root"] / "killed-onto-4x1")

    straight, _ = meshes[TWO_BY_TWO]
    logged_before = len(tf.logged_steps(killed))
    _, result = _train(workspace, "killed", "--mesh", TWO_BY_TWO, "--resume_from_checkpoint", "latest")
    tf.assert_same_params(killed, straight, atol=1e-6)
    # From the last checkpoint, running only the steps after it (a restart from 0 would export the
    # same parameters: randomness and data order depend on the step alone).
    assert f"resumed from {killed / 'checkpoints'}/{saved}" in result.stderr, result.stderr[-4000:]
    assert tf.logged_steps(killed)[logged_before:] == list(range(saved + 1, 7))
    # Onto a 4x1 mesh: the sharded checkpoint is read into replicated arrays; the steps after it sum
    # their gradients in the 4x1 order, so it agrees as the two meshes do.
    resume = ("--resume_from_checkpoint", "latest")
    moved, result = _train(workspace, "killed-onto-4x1", "--mesh", FOUR_BY_ONE, *resume)
    tf.assert_same_params(moved, straight, atol=1e-5)
    assert f"resumed from {moved / 'checkpoints'}/{saved}" in result.stderr, result.stderr[-4000:]
    assert tf.logged_steps(moved)[logged_before:] == list(range(saved + 1, 7))


def _dry_run(model, *flags: str, devices: int) -> dict:
    command = [*tf.train_command(model, model, model / "unused-output"), "--dry_run", *flags]
    result = subprocess.run(command, capture_output=True, text=True, env=tf.train_env(devices), timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "GB per device" in result.stdout and not (model / "unused-output").exists()
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_dry_run_sizes_the_real_sdxl_on_8_devices_from_its_configs(tmp_path):
    """The published SDXL configs alone (no weight exists): fsdp=8 holds 1/8 of the state per device."""
    configs = write_config_folder(tmp_path / "sdxl-configs", "sdxl")
    flags = ("--mixed_precision", "bf16", "--resolution", "1024")
    replicated = _dry_run(configs, "shapes", *flags, "--mesh", "data=8", devices=8)
    sharded = _dry_run(configs, "shapes", *flags, "--mesh", "data=1,fsdp=8", devices=8)
    assert replicated["sdxl"] and replicated["controlnet_parameters"] == pytest.approx(1.25e9, rel=0.01)
    whole, split = replicated["bytes_per_device"], sharded["bytes_per_device"]
    assert whole["parameters"] == pytest.approx(4 * replicated["controlnet_parameters"], rel=1e-6)
    assert whole["optimizer_state"] == pytest.approx(2 * whole["parameters"], rel=1e-3)  # Adam's moments
    for part in ("parameters", "optimizer_state", "frozen_weights"):
        assert 1 / 8 <= split[part] / whole[part] < 1.05 / 8, part


def test_dry_run_compiles_the_step_and_its_arguments_are_what_the_shapes_say(workspace):
    plan = _dry_run(workspace["model"], "--mesh", TWO_BY_TWO, "--fsdp_min_elements", "1024", devices=4)
    sizes = plan["bytes_per_device"]
    assert sizes["activations"] > 0
    held = sizes["parameters"] + sizes["optimizer_state"] + sizes["frozen_weights"]
    # XLA's own count of the step's inputs: the state and frozen weights, plus a one-row batch, less
    # the weights the step never reads (the VAE's decoder), which jit drops from its arguments.
    assert 0.95 * held <= sizes["compiled_arguments"] < 1.1 * held


def test_an_sdxl_controlnet_is_fine_tuned_from_its_export(workspace, meshes):
    """--controlnet_model_name_or_path reads the exported SDXL ControlNet back: at learning rate 0 the
    run's export is the input, add-embedding included."""
    exported, _ = meshes[FOUR_BY_ONE]
    output, _ = _train(
        workspace, "fine-tuned", "--controlnet_model_name_or_path", str(exported),
        "--learning_rate", "0", "--max_train_steps", "1", "--validation_steps", "0",
    )  # fmt: skip
    tf.assert_same_params(output, exported, atol=0)
