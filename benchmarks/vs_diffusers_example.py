"""train_flax_controlnet.py against the diffusers Flax ControlNet example, same model, data and flags.

    .venv/bin/python benchmarks/vs_diffusers_example.py --example PATH/train_controlnet_flax.py

The example is not part of this project: pass its file from a diffusers 0.39 checkout
(`examples/controlnet/train_controlnet_flax.py`). Its Flax classes are gone from today's diffusers,
so it runs in a reference environment built from the lock before the move to today's stack
(`benchmarks/reference_example_stack.txt`: JAX 0.7.1, diffusers 0.39, transformers 4.57, torch
2.13), in a venv kept at .cache/bench-example-venv (rebuilt when that file changes; see
benchmarks/models.py). Ours runs on this venv's stack. The
example runs unmodified, in a wrapper that supplies what it lacks on these machines:
`jax.tree_map` (gone in JAX 0.6; aliased to `jax.tree_util.tree_map`) and a torchvision that
imports beside a CPU torch (our import guard).

Both train a tiny random Stable Diffusion (SD 1.5 shape, 32/32/64/64 channels) given as PyTorch
weights, with `--from_pt`, on a hand_encoded dataset built from ../shared/data, at 64 px, batch 1
per device on 4 simulated CPU devices. Each runs twice, for SHORT and LONG steps; steady-state
steps/s is (LONG - SHORT) / (wall difference), which cancels start-up, compilation and saving.
Prints JSON with both and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GUARD = REPO / "conditioners" / "torchvision_guard.py"
EXAMPLE_STACK = REPO / "benchmarks" / "reference_example_stack.txt"
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
sys.path.append(str(REPO / "benchmarks"))  # last: benchmarks/conditioners.py must not shadow the package

COMMON = [
    "--from_pt", "--resolution", "64", "--train_batch_size", "1", "--learning_rate", "1e-4",
    "--checkpointing_steps", "1000000", "--logging_steps", "1000000", "--seed", "0",
    "--caption_column", "caption", "--dataloader_num_workers", "2",
]  # fmt: skip
# Cold compiles on both sides: ours would otherwise read the 10-step run's compiled step at 60.
OURS = ["--validation_steps", "0", "--checkpointing_steps", "0", "--compilation_cache_dir", "none"]
STARTUP_LINES = r"\d\d:\d\d:\d\d ((?:imports|start-up|first step).*)"
EXAMPLE_ONLY = ["--report_to", "tensorboard"]  # its default, wandb, is not installed
# Both scripts run in the reference environment, with argv[1] our torchvision import guard's file
# (not the package, which needs cv2): the PyPI torchvision does not import beside a CPU torch there.
INSTALL_GUARD = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("guard", sys.argv[1])
guard = importlib.util.module_from_spec(spec)
spec.loader.exec_module(guard)
guard.install_import_guard()
sys.argv = sys.argv[2:]  # the script's own arguments, from argv[0]
"""
RUN_EXAMPLE = (
    INSTALL_GUARD
    + """
import runpy
import jax
jax.tree_map = jax.tree_util.tree_map  # removed in JAX 0.6; the example still calls it
runpy.run_path(sys.argv[0], run_name="__main__")
"""
)
# What the example's Flax classes need beyond a PyTorch-safetensors folder, written by the reference
# environment's own torch and transformers: a `diffusion_pytorch_model.bin` beside each diffusers
# weights file (Flax `from_pretrained(..., from_pt=True)` reads only that name; real SD 1.5 repos ship
# both) and a feature extractor (its Flax pipeline requires one). Ours reads the folder as it is.
PREPARE_FOR_THE_EXAMPLE = (
    INSTALL_GUARD
    + """
import json
from pathlib import Path
import torch
from safetensors.torch import load_file
from transformers import CLIPImageProcessor
model = Path(sys.argv[0])
for weights in model.glob("*/diffusion_pytorch_model.safetensors"):
    torch.save(load_file(weights), weights.with_suffix(".bin"))
CLIPImageProcessor(crop_size=224, size={"shortest_edge": 224}).save_pretrained(model / "feature_extractor")
index = json.loads((model / "model_index.json").read_text())
index["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
(model / "model_index.json").write_text(json.dumps(index, indent=2) + "\\n")
"""
)


def stack(python: Path | str) -> dict[str, str]:
    query = "import jax, flax, numpy; print(jax.__version__, flax.__version__, numpy.__version__)"
    versions = subprocess.run(
        [python, "-c", query], capture_output=True, text=True, check=True
    ).stdout.split()
    return dict(zip(("jax", "flax", "numpy"), versions, strict=True))


def wall_time(command: list[str], devices: int) -> tuple[float, str]:
    """(seconds, stderr) of one run."""
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": str(REPO),
    }
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    elapsed = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(f"{command[:4]} failed:\n{result.stderr[-4000:]}")
    return elapsed, result.stderr


def commands(
    example: Path, reference: Path, model: Path, dataset: Path, out: Path, steps: int
) -> dict[str, list[str]]:
    shared = [
        "--pretrained_model_name_or_path", str(model), "--dataset_name", str(dataset),
        "--max_train_steps", str(steps), *COMMON,
    ]  # fmt: skip
    return {
        "ours": [
            sys.executable, str(REPO / "train_flax_controlnet.py"), *shared, *OURS,
            "--output_dir", str(out / f"ours-{steps}"),
        ],
        "diffusers_example": [
            str(reference), "-c", RUN_EXAMPLE, str(GUARD), str(example), *shared, *EXAMPLE_ONLY,
            "--output_dir", str(out / f"example-{steps}"),
        ],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--example", type=Path, required=True, help="diffusers' train_controlnet_flax.py")
    parser.add_argument("--reference_venv", type=Path, default=REPO / ".cache" / "bench-example-venv")
    parser.add_argument("--rebuild_reference", action="store_true", help="recreate the reference venv")
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--short", type=int, default=10)
    parser.add_argument("--long", type=int, default=60)
    options = parser.parse_args()
    from models import reference_python
    from train_step import _tiny_dataset, _tiny_model

    work = Path(tempfile.mkdtemp(prefix="bench-vs-example-"))
    reference = reference_python(options.reference_venv, options.rebuild_reference, EXAMPLE_STACK)
    model, dataset = _tiny_model(work), _tiny_dataset(work)
    subprocess.run([reference, "-c", PREPARE_FOR_THE_EXAMPLE, GUARD, model], check=True)
    walls: dict[str, dict[int, float]] = {"ours": {}, "diffusers_example": {}}
    for steps in (options.short, options.long):  # alternate, so drift on a shared machine hits both
        for name, command in commands(options.example, reference, model, dataset, work, steps).items():
            walls[name][steps], stderr = wall_time(command, options.devices)
            if name == "ours":  # the trainer's own account of where its start-up went
                start_up = [m.group(1) for m in re.finditer(STARTUP_LINES, stderr)]
    extra = options.long - options.short
    results = {
        name: {
            f"wall_s_{options.short}_steps": round(times[options.short], 1),
            f"wall_s_{options.long}_steps": round(times[options.long], 1),
            "steady_steps_per_s": round(extra / (times[options.long] - times[options.short]), 2),
        }
        for name, times in walls.items()
    }
    ours, theirs = results["ours"], results["diffusers_example"]
    report = {
        "benchmark": "train_flax_controlnet.py vs diffusers examples/controlnet/train_controlnet_flax.py",
        "setup": f"tiny random SD 1.5-shaped UNet, 64 px, batch 1 x {options.devices} simulated CPU devices",
        "stacks": {"ours": stack(sys.executable), "diffusers_example": stack(reference)},
        "results": results,
        "steady_ratio_ours_over_example": round(ours["steady_steps_per_s"] / theirs["steady_steps_per_s"], 3),
        f"wall_ratio_{options.long}_steps_ours_over_example": round(
            ours[f"wall_s_{options.long}_steps"] / theirs[f"wall_s_{options.long}_steps"], 3
        ),
        f"ours_start_up_{options.long}_steps": start_up,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
