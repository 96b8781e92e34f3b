"""Running train_flax_controlnet.py on a tiny random Stable Diffusion and a tiny built dataset."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "train_flax_controlnet.py"
# 64 px, few steps, no validation unless a test asks for it: every run compiles, which is the cost.
FAST = [
    "--resolution", "64",
    "--train_batch_size", "1",
    "--logging_steps", "1",
    "--validation_steps", "0",
    "--checkpointing_steps", "0",
    "--learning_rate", "1e-3",
    "--dataloader_num_workers", "2",
]  # fmt: skip


def train_env(devices: int = 4, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": str(REPO / "tests"),
        **(extra or {}),
    }


def train_command(model: Path | str, dataset: Path, output: Path, *flags: str) -> list[str]:
    return [
        sys.executable,
        str(SCRIPT),
        "--pretrained_model_name_or_path", str(model),
        "--dataset_name", str(dataset),
        "--output_dir", str(output),
        *FAST,
        *flags,
    ]  # fmt: skip


def run_training(
    model: Path | str, dataset: Path, output: Path, *flags: str, devices: int = 4, env=None, timeout=900
):
    result = subprocess.run(
        train_command(model, dataset, output, *flags),
        capture_output=True,
        text=True,
        env=train_env(devices, env),
        timeout=timeout,
    )
    return result


def exported_params(output: Path) -> dict:
    """The exported ControlNet weights, {PyTorch key: array}."""
    from safetensors.numpy import load_file

    return load_file(output / "diffusion_pytorch_model.safetensors")


def logged_steps(output: Path) -> list[int]:
    """Every step a run's metrics.jsonl recorded, line by line: runs into one output_dir append, and
    a step run twice appears twice (`read_metrics` would merge them)."""
    import json

    metrics = output / "logs" / "metrics.jsonl"
    lines = metrics.read_text().splitlines() if metrics.exists() else []
    return [json.loads(line)["step"] for line in lines if line]


def checksums(stdout: str) -> list[str]:
    return [line.split("sum ")[-1] for line in stdout.splitlines() if "ControlNet |params| sum" in line]


def assert_same_params(actual_dir: Path, expected_dir: Path, atol: float) -> None:
    """Two runs exported the same ControlNet: the same keys, every weight within `atol`."""
    import numpy as np

    expected, actual = exported_params(expected_dir), exported_params(actual_dir)
    assert expected.keys() == actual.keys()
    for key in expected:
        np.testing.assert_allclose(actual[key], expected[key], atol=atol, rtol=0, err_msg=key)


def kill_at_first_checkpoint(command: list[str], output: Path, devices: int = 4) -> int:
    """Start a run of `command` into `output`, kill -9 it once its step-2 checkpoint is on disk (before it
    exports), and return the last step it saved."""
    import signal
    import time

    process = subprocess.Popen(
        command, env=train_env(devices), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 600
    while not (output / "checkpoints" / "2").is_dir() and process.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint in 10 minutes"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (output / "diffusion_pytorch_model.safetensors").exists()
    return max(int(p.name) for p in (output / "checkpoints").iterdir() if p.name.isdigit())
