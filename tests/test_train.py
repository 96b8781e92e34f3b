"""train_flax_controlnet.py end to end on 4 simulated CPU devices, with a tiny random Stable Diffusion.

Each run is a real subprocess of the script; the runs share JAX's persistent compilation cache
(which also tests `--compilation_cache_dir`).
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
from pathlib import Path

import builder_fixtures as fx
import numpy as np
import pytest
import train_fixtures as tf
from hub_standin import HubStandIn
from PIL import Image

from builders import BuildSettings
from builders.run import run_build
from landmark_controlnet.training.tiny_sd import write_tiny_sd

TOKEN = "hf_trainTestToken0987654321"
BASE_REPO = "tester/tiny-sd"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, data_dir):
    """A tiny Stable Diffusion (PyTorch safetensors) and a hand_encoded dataset of real photos."""
    root = tmp_path_factory.mktemp("train")
    model = write_tiny_sd(root / "tiny-sd")
    sd2 = write_tiny_sd(root / "tiny-sd2", sd2=True)
    photos = fx.photo_folder(data_dir, root)
    builder = fx.folder_recipe(root)
    report = run_build(str(builder), str(photos), BuildSettings(), progress=False)
    assert report.rows == 6
    return {"root": root, "model": model, "sd2": sd2, "dataset": builder, "cache": root / "jax-cache"}


def _train(workspace, output: Path, *flags: str, model: str = "model", **kwargs):
    """`model`: a workspace entry, or else a Hub repo id."""
    flags = ("--compilation_cache_dir", str(workspace["cache"]), *flags)
    return tf.run_training(workspace.get(model, model), workspace["dataset"], output, *flags, **kwargs)


@pytest.fixture(scope="module")
def main_run(workspace):
    """fp32, gradient accumulation, validation, checkpoints, PyTorch export and --push_to_hub, with the
    base model read from a Hub repo (the stand-in) as PyTorch safetensors."""
    output = workspace["root"] / "main-run"
    with HubStandIn(token=TOKEN) as hub:
        for path in sorted(p for p in workspace["model"].rglob("*") if p.is_file()):
            hub.add_model_file(BASE_REPO, path.relative_to(workspace["model"]).as_posix(), path.read_bytes())
        env = {
            "HF_ENDPOINT": hub.endpoint,
            "HF_HUB_DISABLE_XET": "1",
            "HF_HOME": str(workspace["root"] / "hf_home"),
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }
        result = _train(
            workspace, output,
            "--max_train_steps", "4",
            "--gradient_accumulation_steps", "2",
            "--checkpointing_steps", "2",
            "--validation_steps", "4",
            "--num_validation_images", "2",
            "--num_inference_steps", "2",
            "--lr_scheduler", "cosine",
            "--lr_warmup_steps", "1",
            "--push_to_hub", "--hub_model_id", "tester/tiny-controlnet", "--hub_token", TOKEN,
            env=env, model=BASE_REPO,
        )  # fmt: skip
        pushed = hub.files("tester/tiny-controlnet") if result.returncode == 0 else {}
    assert result.returncode == 0, result.stderr[-4000:]
    return {"output": output, "result": result, "pushed": pushed}


def test_training_writes_diffusers_layout_logs_checkpoints_and_validation(main_run, workspace):
    output, result = main_run["output"], main_run["result"]
    assert TOKEN not in result.stdout + result.stderr
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        assert (output / name).is_file(), name
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == ["2", "4"]
    metrics = [json.loads(line) for line in (output / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert all(np.isfinite(m["loss"]) for m in metrics)
    # cosine with one warmup step: 0 at step 0, the peak at step 1, then decaying
    rates = [m["learning_rate"] for m in metrics]
    assert rates[0] == 0.0 and rates[1] == pytest.approx(1e-3) and rates[1] > rates[2] > rates[3] > 0
    assert list((output / "logs").glob("events.out.tfevents.*"))
    grid = Image.open(output / "validation" / "step-000004.png")
    assert grid.width > 3 * 64  # conditioning + 2 generated images side by side
    card = (output / "README.md").read_text()
    assert f"base_model: {BASE_REPO}" in card
    assert "jax-diffusers-event" in card and "controlnet" in card and "validation/step-000004.png" in card
    assert any(workspace["cache"].iterdir()), "--compilation_cache_dir wrote no cache entries"
    start_up = re.search(r"start-up: base model [\d.]+ s, ControlNet [\d.]+ s, dataset .*", result.stderr)
    assert start_up and "imports: " in result.stderr and "first step" in result.stderr, result.stderr[-2000:]


def test_push_to_hub_uploads_the_model_without_checkpoints(main_run):
    pushed = main_run["pushed"]
    assert {"config.json", "diffusion_pytorch_model.safetensors", "README.md"} <= set(pushed)
    assert "validation/step-000004.png" in pushed
    assert not any(p.startswith(("checkpoints/", "logs/")) for p in pushed)
    assert (
        pushed["diffusion_pytorch_model.safetensors"]
        == (main_run["output"] / "diffusion_pytorch_model.safetensors").read_bytes()
    )


def test_pytorch_export_matches_the_trained_model(main_run, tmp_path):
    """Today's PyTorch ControlNetModel loads the export strictly and computes what our model computes.

    Trained for a few steps and then perturbed, so that the zero-initialised output convolutions
    are non-zero and the comparison means something."""
    import jax
    import torch
    from diffusers import ControlNetModel as TorchControlNet
    from flax import nnx

    from landmark_controlnet.diffusion import ControlNetModel, from_pretrained
    from landmark_controlnet.training.export import save_controlnet

    graph, params = nnx.split(from_pretrained(ControlNetModel, main_run["output"]))
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(lambda p: p + 0.02 * rng.standard_normal(p.shape).astype(p.dtype), params)
    controlnet = nnx.merge(graph, params)
    save_controlnet(controlnet, tmp_path)

    torch_model, info = TorchControlNet.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    sample = rng.standard_normal((2, 32, 32, 4)).astype(np.float32)  # the mid block sees 4x4, not 1x1
    timesteps = np.array([10, 500], np.int32)
    text = rng.standard_normal((2, 77, 32)).astype(np.float32)
    cond = rng.random((2, 256, 256, 3)).astype(np.float32)
    ours = controlnet(sample, timesteps, text, cond)
    nchw = [torch.from_numpy(a.transpose(0, 3, 1, 2).copy()) for a in (sample, cond)]
    with torch.no_grad():
        torch_down, torch_mid = torch_model.eval()(
            nchw[0], torch.from_numpy(timesteps), torch.from_numpy(text), nchw[1], return_dict=False
        )
    assert float(np.abs(np.asarray(ours.mid_block_residual)).max()) > 1e-2  # not the vacuous 0 == 0
    ours_all = [*ours.down_block_residuals, ours.mid_block_residual]
    for t, f in zip([*torch_down, torch_mid], ours_all, strict=True):
        np.testing.assert_allclose(t.numpy(), np.asarray(f).transpose(0, 3, 1, 2), atol=2e-4, rtol=1e-3)

    # and the export of the run itself holds exactly the trained weights
    trained = TorchControlNet.from_pretrained(main_run["output"])
    assert trained.controlnet_mid_block.weight.abs().sum() > 0


def test_bf16_streaming_with_random_flip_on_an_sd2_model(workspace):
    """SD 2.1-shaped (v-prediction, linear projections, per-block heads, upcast attention)."""
    output = workspace["root"] / "bf16-stream"
    result = _train(
        workspace, output,
        "--mixed_precision", "bf16", "--streaming", "--random_flip", "--max_train_steps", "3",
        "--profile_steps", "1:3", "--profile_memory", "--from_pt",
        model="sd2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = [json.loads(line) for line in (output / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3] and all(np.isfinite(m["loss"]) for m in metrics)
    assert (output / "diffusion_pytorch_model.safetensors").is_file()
    traces = list((output / "profile").glob("plugins/profile/*/*.xplane.pb"))  # as TensorBoard reads them
    assert traces and "profile of steps 1:3" in result.stderr  # --profile_steps
    assert (output / "memory.prof").is_file()  # --profile_memory
    config = json.loads((output / "config.json").read_text())
    assert config["use_linear_projection"] and config["attention_head_dim"] == [1, 2, 2, 2]


def test_overfitting_one_batch_on_cached_latents_lowers_the_loss(workspace):
    """With --cache_latents (the cached step's loss equals the uncached one: test_latent_cache)."""
    output, cache = workspace["root"] / "overfit", workspace["root"] / "latent-cache"
    result = _train(
        workspace, output, "--max_train_samples", "4", "--max_train_steps", "40", "--learning_rate", "3e-3",
        "--cache_latents", "--latent_cache_dir", str(cache),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    [key] = [json.loads(p.read_text()) for p in cache.glob("*/key.json")]
    assert key["resolution"] == 64 and key["variants"] == 1
    losses = [
        json.loads(line)["loss"] for line in (output / "logs" / "metrics.jsonl").read_text().splitlines()
    ]
    first, last = np.mean(losses[:8]), np.mean(losses[-8:])
    assert last < 0.7 * first, (first, last)


def test_a_killed_run_resumes_to_the_same_parameters(workspace):
    flags = (
        "--max_train_steps",
        "8",
        "--checkpointing_steps",
        "2",
        "--random_flip",
        "--proportion_empty_prompts",
        "0.5",
    )
    straight = workspace["root"] / "straight"
    result = _train(workspace, straight, *flags)
    assert result.returncode == 0, result.stderr[-4000:]

    killed = workspace["root"] / "killed"
    command = tf.train_command(
        workspace["model"],
        workspace["dataset"],
        killed,
        *flags,
        "--compilation_cache_dir",
        str(workspace["cache"]),
    )
    saved = tf.kill_at_first_checkpoint(command, killed)
    logged_before = len(tf.logged_steps(killed))
    resumed = _train(workspace, killed, *flags, "--resume_from_checkpoint", "latest")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    # It resumed from the last checkpoint the killed run saved, and ran only the steps after it:
    # randomness and data order depend on the step alone, so a restart from 0 would export the same.
    assert f"resumed from {killed / 'checkpoints'}/{saved}" in resumed.stderr, resumed.stderr[-4000:]
    assert tf.logged_steps(killed)[logged_before:] == list(range(saved + 1, 9))
    tf.assert_same_params(killed, straight, atol=1e-6)


def test_a_diverging_run_stops_and_names_the_last_good_checkpoint(workspace):
    output = workspace["root"] / "diverging"
    result = _train(
        workspace, output, "--max_train_steps", "30", "--checkpointing_steps", "1", "--learning_rate", "1e35",
        "--max_grad_norm", "1e30", "--adam_weight_decay", "0",
    )  # fmt: skip
    assert result.returncode == 3, result.stderr[-4000:]
    assert "training stopped" in result.stderr and "last good checkpoint" in result.stderr
    named = re.search(r"The last good checkpoint: (\S+?)\. ", result.stderr).group(1)
    assert Path(named).is_dir() and Path(named).parent == (output / "checkpoints").resolve()
    assert not (output / "diffusion_pytorch_model.safetensors").exists()


@pytest.mark.parametrize("mesh", [None, "data=2,fsdp=2"], ids=["data", "fsdp"])
def test_two_hosts_train_together_and_agree(workspace, mesh):
    """Two processes x 2 CPU devices, jax.distributed with a local coordinator, one output folder; with
    `fsdp` the weights are split within each host, and gathering them for the export is a collective."""
    output = workspace["root"] / f"two-hosts-{mesh or 'data'}"
    sharded = ["--mesh", mesh, "--fsdp_min_elements", "1024"] if mesh else []
    # Adam's epsilon at 1 makes an update proportional to its gradient: with the default, a weight
    # whose gradient is ~0 moves by +-lr on the sign of rounding noise, which no two layouts share.
    steps = ["--max_train_steps", "3", "--checkpointing_steps", "2", "--adam_epsilon", "1"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    processes = [
        subprocess.Popen(
            tf.train_command(
                workspace["model"], workspace["dataset"], output,
                *steps, *sharded,
                "--coordinator_address", f"127.0.0.1:{port}", "--num_processes", "2", "--process_id", str(i),
            ),
            env=tf.train_env(devices=2),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]  # fmt: skip
    outputs = [p.communicate(timeout=900) for p in processes]
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr[-4000:]
    sums = [tf.checksums(stdout) for stdout, _ in outputs]
    assert len(sums[0]) == len(sums[1]) == 1 and sums[0] == sums[1]
    assert (output / "checkpoints" / "2").is_dir() and (
        output / "diffusion_pytorch_model.safetensors"
    ).is_file()
    assert len((output / "logs" / "metrics.jsonl").read_text().splitlines()) == 3  # process 0 alone logs
    if mesh:
        assert "mesh data=2 fsdp=2" in outputs[0][1]
    # Agreeing is what multi-process JAX gives by construction; being right is training as one process
    # with the same 4 devices and global batch (each host reads its half of the same batches). It must
    # be far closer to that than a run on other batches (another seed) is.
    runs = {}
    for name, extra in (("one-host", []), ("other-seed", ["--seed", "1"])):
        runs[name] = workspace["root"] / f"{name}-{mesh or 'data'}"
        result = _train(workspace, runs[name], *steps, *sharded, *extra)
        assert result.returncode == 0, result.stderr[-4000:]
    together, alone, other = (tf.exported_params(p) for p in (output, runs["one-host"], runs["other-seed"]))
    assert together.keys() == alone.keys() == other.keys()
    assert distance(together, alone) < 0.01 * distance(alone, other), (
        distance(together, alone),
        distance(alone, other),
    )


def distance(a: dict, b: dict) -> float:
    """The Euclidean distance between two sets of the same parameters."""
    return float(np.sqrt(sum(np.sum((a[k].astype(np.float64) - b[k]) ** 2) for k in a)))
