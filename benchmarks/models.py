"""Our NNX UNet + ControlNet against diffusers 0.39's Flax classes: one jitted training step on CPU.

    .venv/bin/python benchmarks/models.py [--rounds 3] [--repeats 10] [--record]

The step is a ControlNet training step without the optimiser: forward through the ControlNet and
the frozen UNet, then the gradient w.r.t. the ControlNet's parameters of the noise MSE, fp32,
jitted. Both sides get SD 1.5's block structure at the same scaled widths (default 64/128/256/256,
32 groups, 8 heads, cross-attention 768 over 77 tokens, 2 layers per block), 64 px (8x8 latents),
batch 2, and the same numpy inputs (NCHW for diffusers, NHWC for ours).

Each side runs in its own process (benchmarks/models_worker.py): ours in this interpreter's
environment, diffusers' in a reference virtualenv that this script creates and reuses under
.cache/bench-reference-venv from benchmarks/reference_stack.txt (JAX 0.7.1, Flax 0.12.0,
diffusers 0.39.0; no torch). A machine shared with others is noisy, so the sides alternate over
`--rounds` rounds, a fresh pair of processes each round, and the report gives every round's ratio
and their median. speedup = their time / our time: above 1 means ours is faster. Times are wall
clock and process CPU time (all threads); the CPU time does not count waiting for a core.
Prints the report as JSON on the last stdout line; `--record` also writes
benchmarks/results/models_2cpu.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from models_worker import SIDES, add_shape_arguments, unet_config

REPO = Path(__file__).resolve().parent.parent
WORKER = REPO / "benchmarks" / "models_worker.py"
LOCK = REPO / "benchmarks" / "reference_stack.txt"
REFERENCE_VENV = REPO / ".cache" / "bench-reference-venv"
RECORD = REPO / "benchmarks" / "results" / "models_2cpu.json"
STAMP_NAME = "reference_stack.sha256"
# Per-round numbers compared side by side: wall time and process CPU time, of the step and the compile.
COMPARED = {
    "step": "step_ms_median",
    "step_cpu": "step_cpu_ms_median",
    "compile": "compile_s",
    "compile_cpu": "compile_cpu_s",
}
KEPT_PER_ROUND = (
    *COMPARED.values(),
    "trace_lower_s",
    "xla_compile_s",
    "first_run_s",
    "step_ms_min",
    "loss",
    "loss_finite",
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating pairs of fresh processes")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after the first run")
    parser.add_argument("--reference_venv", type=Path, default=REFERENCE_VENV)
    parser.add_argument("--rebuild_reference", action="store_true", help="recreate the reference venv")
    parser.add_argument("--record", action="store_true", help=f"also write {RECORD.relative_to(REPO)}")
    add_shape_arguments(parser)
    return parser.parse_args()


def lock_digest() -> str:
    """The lock's content and the interpreter version: a change in either means a new environment."""
    digest = hashlib.sha256(LOCK.read_bytes())
    digest.update(f"python {sys.version_info[:3]}".encode())
    return digest.hexdigest()


def reference_python(venv: Path, rebuild: bool) -> Path:
    """The reference venv's interpreter, creating (or recreating) the venv when its stamp is stale."""
    python, stamp = venv / "bin" / "python", venv / STAMP_NAME
    wanted = lock_digest()
    if not rebuild and python.exists() and stamp.is_file() and stamp.read_text().strip() == wanted:
        return python
    if venv.exists():
        if not (venv / "pyvenv.cfg").is_file():
            raise SystemExit(f"{venv} exists and is not a virtualenv; move it away or pass --reference_venv")
        shutil.rmtree(venv)
    progress(f"creating the reference environment in {venv} from {LOCK.name} (a few minutes)")
    _run([sys.executable, "-m", "venv", str(venv)])
    (venv / ".gitignore").write_text("*\n")  # keeps git status clean wherever the venv lies
    pip = [str(python), "-m", "pip", "--disable-pip-version-check"]
    # --no-deps + pip check: the lock is the whole closure, and nothing unpinned can slip in.
    _run([*pip, "install", "--quiet", "--no-deps", "-r", str(LOCK)])
    _run([*pip, "check"])
    stamp.write_text(wanted + "\n")
    return python


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode:
        output = result.stdout[-2000:] + result.stderr[-3000:]
        raise SystemExit(f"{' '.join(command[:5])} ... failed:\n{output}")


def worker_environment() -> dict[str, str]:
    """The same for both sides: CPU only, no inherited XLA/JAX flags (e.g. simulated device counts)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_", "PYTHON"))}
    env["JAX_PLATFORMS"] = "cpu"
    return env


def run_worker(python: Path, side: str, forwarded: list[str]) -> dict[str, Any]:
    # -I: the script's folder and PYTHON* variables stay off sys.path; ours adds the repo itself,
    # the reference side never sees this project.
    command = [str(python), "-I", str(WORKER), "--side", side, *forwarded]
    started = time.perf_counter()
    result = subprocess.run(
        command, capture_output=True, text=True, env=worker_environment(), cwd=REPO, check=False
    )
    if result.returncode:
        raise SystemExit(f"{side} worker failed:\n{result.stderr[-4000:]}")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    progress(
        f"  {side}: step {report['step_ms_median']} ms, compile {report['compile_s']} s "
        f"(process {time.perf_counter() - started:.0f} s)"
    )
    return report


def forwarded_arguments(options: argparse.Namespace) -> list[str]:
    names = ("block_out_channels", "layers_per_block", "attention_head_dim", "cross_attention_dim")
    names += ("norm_num_groups", "text_length", "resolution", "batch", "repeats", "warmup")
    return [item for name in names for item in (f"--{name}", str(getattr(options, name)))]


def compare_round(index: int, order: tuple[str, ...], reports: dict[str, dict]) -> dict[str, Any]:
    ours, theirs = reports["ours"], reports["diffusers_flax"]
    return {
        "round": index + 1,
        "order": list(order),
        **{side: {key: reports[side][key] for key in KEPT_PER_ROUND} for side in SIDES},
        **{f"speedup_{name}": round(theirs[key] / ours[key], 3) for name, key in COMPARED.items()},
    }


def summarise(options: argparse.Namespace, rounds: list[dict], first: dict[str, dict], load: list) -> dict:
    medians = {
        f"speedup_{name}": round(statistics.median(r[f"speedup_{name}"] for r in rounds), 3)
        for name in COMPARED
    }
    per_side_medians = {
        side: {key: round(statistics.median(r[side][key] for r in rounds), 3) for key in COMPARED.values()}
        for side in SIDES
    }
    return {
        "benchmark": "UNet + ControlNet training step (fwd + grad w.r.t. ControlNet), ours (Flax NNX) "
        "vs diffusers 0.39 Flax classes",
        "speedup_definition": "diffusers_flax time / ours time; > 1 means ours is faster",
        "ours_no_slower": medians["speedup_step"] >= 1.0,
        "median": medians,
        "median_per_side": per_side_medians,
        "rounds": rounds,
        "setup": {
            "unet_config": unet_config(options),
            "controlnet": "from the UNet's down path, conditioning_embedding_out_channels 16/32/96/256",
            "batch": options.batch,
            "image_px": options.resolution,
            "latent_px": options.resolution // 8,
            "text_tokens": options.text_length,
            "dtype": "float32",
            "backend": first["ours"]["backend"],
            "cpu_count": first["ours"]["cpu_count"],
            "rounds": options.rounds,
            "timed_steps_per_process": options.repeats,
            "warmup_steps": options.warmup,
            "load_average_before_after": load,
        },
        "trainable_parameters": {side: first[side]["trainable_parameters"] for side in SIDES},
        "loss_finite_every_round": {side: all(r[side]["loss_finite"] for r in rounds) for side in SIDES},
        "hlo_round_1": {side: first[side]["hlo"] for side in SIDES},
        "versions": {side: first[side]["versions"] for side in SIDES},
        "isolation": {side: first[side]["isolation"] for side in SIDES},
    }


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> None:
    options = parse_args()
    pythons = {
        "ours": Path(sys.executable),
        "diffusers_flax": reference_python(options.reference_venv, options.rebuild_reference),
    }
    forwarded = forwarded_arguments(options)
    load = [round(os.getloadavg()[0], 2)]
    rounds, first = [], {}
    for index in range(options.rounds):
        order = SIDES if index % 2 == 0 else SIDES[::-1]  # alternate who goes first: drift hits both
        progress(f"round {index + 1}/{options.rounds}")
        reports = {side: run_worker(pythons[side], side, forwarded) for side in order}
        first = first or reports
        rounds.append(compare_round(index, order, reports))
    load.append(round(os.getloadavg()[0], 2))
    report = summarise(options, rounds, first, load)
    if options.record:
        RECORD.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
