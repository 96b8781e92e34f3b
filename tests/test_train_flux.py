"""train_flax_controlnet.py on a tiny random FLUX.1 (`write_tiny_flux`) on 4 simulated CPU devices: cached
latents and embeddings, finite losses, a validation grid, an export diffusers' FluxControlNetModel loads
strictly, 2x2 and 4x1 meshes agree, a killed run resumes to the straight run's weights on its own mesh
and onto another, and --dry_run sizes the real FLUX.1-dev from its published configs."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import train_fixtures as tf

from landmark_controlnet.training.logs import read_metrics
from landmark_controlnet.training.published_configs import write_config_folder
from landmark_controlnet.training.tiny_flux import write_tiny_flux

# Mirrored rows, checkpoints every 2 steps, a sharding threshold the tiny model's kernels pass, and an
# Adam epsilon of the gradients' own size, as tests/test_train_sdxl.py explains: two meshes sum the
# gradients in different orders, and a tiny epsilon turns that rounding into full steps of either sign.
FLAGS = (
    "--cache_latents",
    "--adam_epsilon", "1e-3",
    "--max_train_steps", "4",
    "--checkpointing_steps", "2",
    "--random_flip",
    "--fsdp_min_elements", "1024",
)  # fmt: skip
VALIDATION = ("--validation_steps", "4", "--num_validation_images", "1", "--num_inference_steps", "2")
TWO_BY_TWO, FOUR_BY_ONE = "data=2,fsdp=2", "data=4"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, hand_build):
    root = tmp_path_factory.mktemp("train_flux")
    _, dataset = hand_build.copy_to(root)
    model = write_tiny_flux(root / "tiny-flux")
    return {"root": root, "model": model, "dataset": dataset, "cache": root / "jax-cache"}


def _command(workspace, output, *flags: str) -> list[str]:
    return tf.train_command(
        workspace["model"], workspace["dataset"], output, *FLAGS,
        "--compilation_cache_dir", str(workspace["cache"]),
        "--latent_cache_dir", str(workspace["root"] / "latent-cache"),
        *flags,
    )  # fmt: skip


def _train(workspace, name: str, *flags: str):
    output = workspace["root"] / name
    result = subprocess.run(
        _command(workspace, output, *flags), capture_output=True, text=True, env=tf.train_env(4), timeout=900
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return output, result


@pytest.fixture(scope="module")
def straight(workspace):
    """4 steps on a 4x1 mesh, validated at the end."""
    return _train(workspace, "straight", "--mesh", FOUR_BY_ONE, *VALIDATION)


def test_a_flux_run_logs_finite_losses_and_exports_a_diffusers_flux_controlnet(straight, workspace):
    import torch
    from diffusers import FluxControlNetModel

    output, result = straight
    metrics = read_metrics(output / "logs")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert all(np.isfinite(m["loss"]) and m["grad_norm"] > 0 for m in metrics)
    assert "caching conditioning latents" in result.stderr
    [key] = [json.loads(p.read_text()) for p in (workspace["root"] / "latent-cache").glob("*/key.json")]
    assert key["model"] == "flux" and key["text_tokens"] == 512 and key["variants"] == 2
    model, info = FluxControlNetModel.from_pretrained(output, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    config = json.loads((output / "config.json").read_text())
    assert config["_class_name"] == "FluxControlNetModel"
    # diffusers' defaults (from_transformer copies the tiny transformer's 2 + 2 blocks, the rest fresh)
    assert (config["num_layers"], config["num_single_layers"]) == (4, 10)
    assert config["guidance_embeds"]
    trained = sum(float(p.abs().sum()) for p in model.controlnet_blocks.parameters())
    assert trained > 0 and all(torch.isfinite(p).all() for p in model.parameters())  # moved from zero
    assert (output / "validation" / "step-000004.png").is_file()
    card = (output / "README.md").read_text()
    assert "FluxControlNetPipeline" in card


def test_a_flux_run_needs_cached_latents_and_refuses_inpainting(workspace):
    for flags, message in ((("--inpainting",), "FLUX.1"), ((), "needs --cache_latents")):
        command = _command(workspace, workspace["root"] / "refused", *flags)
        command.remove("--cache_latents")
        result = subprocess.run(command, capture_output=True, text=True, env=tf.train_env(1), timeout=300)
        assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
        assert "Traceback" not in result.stderr


def test_a_2x2_and_a_4x1_mesh_train_the_same_flux_controlnet(straight, workspace):
    sharded, result = _train(workspace, "two-by-two", "--mesh", TWO_BY_TWO)
    replicated, _ = straight
    losses = [[m["loss"] for m in read_metrics(out / "logs")] for out in (sharded, replicated)]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    tf.assert_same_params(sharded, replicated, atol=1e-5)
    assert "mesh data=2 fsdp=2" in result.stderr


def test_a_killed_flux_run_resumes_on_its_own_mesh_and_onto_another(straight, workspace):
    killed = workspace["root"] / "killed"
    saved = tf.kill_at_first_checkpoint(_command(workspace, killed, "--mesh", FOUR_BY_ONE), killed)
    shutil.copytree(killed, workspace["root"] / "killed-onto-2x2")

    logged_before = len(tf.logged_steps(killed))
    resume = ("--resume_from_checkpoint", "latest")
    _, result = _train(workspace, "killed", "--mesh", FOUR_BY_ONE, *resume)
    assert f"resumed from {killed / 'checkpoints'}/{saved}" in result.stderr, result.stderr[-4000:]
    assert tf.logged_steps(killed)[logged_before:] == list(range(saved + 1, 5))
    tf.assert_same_params(killed, straight[0], atol=1e-6)
    # Onto a 2x2 mesh: the replicated checkpoint is read into arrays split along fsdp; the steps after
    # it sum their gradients in the 2x2 order, so it agrees as the two meshes do.
    moved, result = _train(workspace, "killed-onto-2x2", "--mesh", TWO_BY_TWO, *resume)
    assert f"resumed from {moved / 'checkpoints'}/{saved}" in result.stderr, result.stderr[-4000:]
    assert "mesh data=2 fsdp=2" in result.stderr
    assert tf.logged_steps(moved)[logged_before:] == list(range(saved + 1, 5))
    tf.assert_same_params(moved, straight[0], atol=1e-5)


def _dry_run(model, *flags: str, devices: int) -> dict:
    command = [*tf.train_command(model, model, model / "unused-output"), "--dry_run", *flags]
    result = subprocess.run(command, capture_output=True, text=True, env=tf.train_env(devices), timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "GB per device" in result.stdout and not (model / "unused-output").exists()
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_dry_run_sizes_flux_1_dev_on_8_devices_from_its_configs(tmp_path):
    """FLUX.1-dev's published configs alone: an 11.9 B transformer, a 4 + 10 block ControlNet; fsdp=8
    holds 1/8 of the state per device."""
    configs = write_config_folder(tmp_path / "flux-configs", "flux-dev")
    flags = (
        "--mixed_precision",
        "bf16",
        "--resolution",
        "1024",
        "--cache_latents",
        "--gradient_checkpointing",
        "dots",
    )
    replicated = _dry_run(configs, "shapes", *flags, "--mesh", "data=8", devices=8)
    sharded = _dry_run(configs, "shapes", *flags, "--mesh", "data=1,fsdp=8", devices=8)
    assert replicated["model_family"] == "FLUX.1" and replicated["resolution"] == 1024
    assert replicated["frozen_parameters"] == pytest.approx(11.9e9, rel=0.01)
    whole, split = replicated["bytes_per_device"], sharded["bytes_per_device"]
    assert whole["parameters"] == pytest.approx(4 * replicated["controlnet_parameters"], rel=1e-6)
    assert whole["frozen_weights"] == pytest.approx(2 * replicated["frozen_parameters"], rel=1e-3)  # bf16
    assert whole["saved_for_backward"] > 0
    for part in ("parameters", "optimizer_state", "frozen_weights"):
        assert 1 / 8 <= split[part] / whole[part] < 1.05 / 8, part


def test_a_flux_run_scores_fidelity_at_each_validation(workspace, data_dir):
    """--fidelity_rows with a FLUX.1 base: the validation split's rows generated by the Flux sampler,
    re-detected and scored, as the SD test in tests/test_evaluation_generate.py checks."""
    import builder_fixtures as fx

    from builders import BuildSettings
    from builders.run import run_build

    root = workspace["root"] / "held-out"
    builder = fx.folder_recipe(root)
    settings = BuildSettings(shard_size=3, validation_fraction=0.7)
    run_build(str(builder), str(fx.photo_folder(data_dir, root)), settings, progress=False)
    output = root / "run"
    result = tf.run_training(
        workspace["model"], builder, output, "--cache_latents", "--max_train_steps", "2",
        "--validation_steps", "2", "--num_validation_images", "1", "--num_inference_steps", "2",
        "--fidelity_rows", "2", "--compilation_cache_dir", str(workspace["cache"]), devices=2,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    logged = [m for m in read_metrics(output / "logs") if any(k.startswith("fidelity/") for k in m)]
    assert [m["step"] for m in logged] == [2] and 0 <= logged[0]["fidelity/instance_recall"] <= 1
    summary = json.loads((output / "fidelity" / "step-000002" / "summary.json").read_text())
    assert summary["rows"] == 2 and summary["conditioner"] == "hand_encoded"
    assert len(list((output / "fidelity" / "step-000002" / "generated").glob("*.png"))) == 2
    assert (output / "validation" / "step-000002.png").is_file()
    assert "## Control fidelity" in (output / "README.md").read_text()


def test_dry_run_compiles_the_flux_step_on_a_2x2_mesh(workspace):
    """`make_flux_train_step` compiled for abstract inputs: XLA's arguments are the state and frozen
    weights the shapes count, plus a one-row batch of cached posteriors and embeddings."""
    flags = ("--cache_latents", "--mesh", TWO_BY_TWO, "--fsdp_min_elements", "1024")
    plan = _dry_run(workspace["model"], *flags, devices=4)
    sizes = plan["bytes_per_device"]
    assert plan["model_family"] == "FLUX.1" and sizes["activations"] > 0 and sizes["saved_for_backward"] > 0
    held = sizes["parameters"] + sizes["optimizer_state"] + sizes["frozen_weights"]
    assert held <= sizes["compiled_arguments"] < 1.2 * held


def test_a_union_flux_controlnet_trains_the_mode_it_is_given(workspace):
    """--controlnet_model_name_or_path a union ControlNet (diffusers', 3 modes) and --control_mode 2: the
    step and the validation sampler both see mode 2, so its embedding alone of the three moves."""
    import torch
    from diffusers import FluxControlNetModel

    from landmark_controlnet.training.tiny_flux import TRANSFORMER

    union = workspace["root"] / "union"
    torch.manual_seed(0)
    layers = {"num_layers": 1, "num_single_layers": 1}
    model = FluxControlNetModel(**{**TRANSFORMER, **layers}, guidance_embeds=True, num_mode=3)
    with torch.no_grad():  # non-zero outputs: gradients reach the mode embedding from the first step
        for parameter in [
            *model.controlnet_blocks.parameters(),
            *model.controlnet_single_blocks.parameters(),
        ]:
            parameter.normal_(0, 0.05)
    model.save_pretrained(union)
    output, _ = _train(
        workspace, "union-run", "--controlnet_model_name_or_path", str(union), "--control_mode", "2",
        "--max_train_steps", "2", "--adam_weight_decay", "0", "--adam_epsilon", "1e-8",
        "--validation_steps", "2", "--num_validation_images", "1", "--num_inference_steps", "2",
    )  # fmt: skip
    before = tf.exported_params(union)["controlnet_mode_embedder.weight"]
    after = tf.exported_params(output)["controlnet_mode_embedder.weight"]
    np.testing.assert_array_equal(after[:2], before[:2])
    assert np.abs(after[2] - before[2]).max() > 1e-4
    assert (output / "validation" / "step-000002.png").is_file()
