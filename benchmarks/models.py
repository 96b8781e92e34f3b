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
diffusers 0.39.0; no torch). A machine shared with others is noisy, so each of `--rounds` rounds
starts a fresh pair of processes (who goes first alternates), lets them compile one after the
other, then times their steps interleaved (ours, theirs, theirs, ours, ...) so that each pair of
steps sees the same load. speedup = their time / our time: above 1 means ours is faster; the
report gives every round's ratios and their medians. Times are wall clock and process CPU time
(all threads: it leaves out waiting for a core, but counts XLA's threads spinning for work).
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
import tempfile
import time
from pathlib import Path
from typing import Any

from models_worker import SIDES, add_shape_arguments, step_summary, unet_config

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


def lock_digest(lock: Path) -> str:
    """The lock's content and the interpreter version: a change in either means a new environment."""
    digest = hashlib.sha256(lock.read_bytes())
    digest.update(f"python {sys.version_info[:3]}".encode())
    return digest.hexdigest()


def reference_python(venv: Path, rebuild: bool, lock: Path = LOCK) -> Path:
    """The interpreter of a venv holding exactly `lock`, (re)created when its stamp is stale."""
    python, stamp = venv / "bin" / "python", venv / STAMP_NAME
    wanted = lock_digest(lock)
    if not rebuild and python.exists() and stamp.is_file() and stamp.read_text().strip() == wanted:
        return python
    if venv.exists():
        if not (venv / "pyvenv.cfg").is_file():
            raise SystemExit(f"{venv} exists and is not a virtualenv; move it away or pass --reference_venv")
        shutil.rmtree(venv)
    progress(f"creating the reference environment in {venv} from {lock.name} (a few minutes)")
    _run([sys.executable, "-m", "venv", str(venv)])
    (venv / ".gitignore").write_text("*\n")  # keeps git status clean wherever the venv lies
    pip = [str(python), "-m", "pip", "--disable-pip-version-check"]
    # --no-deps + pip check: the lock is the whole closure, and nothing unpinned can slip in.
    _run([*pip, "install", "--quiet", "--no-deps", "-r", str(lock)])
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


class Worker:
    """One side's worker process in --serve mode: it compiles on start, then times a step on request."""

    def __init__(self, python: Path, side: str, forwarded: list[str]):
        # -I: the script's folder and PYTHON* variables stay off sys.path; ours adds the repo itself,
        # the reference side never sees this project.
        command = [str(python), "-I", str(WORKER), "--side", side, "--serve", *forwarded]
        self.side = side
        # stderr to a file, not a pipe, which XLA's banners could fill and block; closed in close().
        self.stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            env=worker_environment(),
            cwd=REPO,
        )
        started = time.perf_counter()
        self.report = self._read()
        ready = time.perf_counter() - started
        progress(f"  {side}: compiled in {self.report['compile_s']} s (ready after {ready:.0f} s)")

    def _read(self) -> dict[str, Any]:
        for line in self.process.stdout:
            if line.startswith("{"):
                return json.loads(line)
        self.process.wait()
        self.stderr.seek(0)
        failure = f"{self.side} worker failed (exit {self.process.returncode})"
        raise SystemExit(f"{failure}:\n{self.stderr.read()[-4000:]}")

    def step(self) -> dict[str, float]:
        self.process.stdin.write("step\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)
        self.stderr.close()


def run_round(pythons: dict[str, Path], order: tuple[str, ...], options, forwarded: list[str]) -> dict:
    """Compile each side in turn (alone on the machine, as far as this script goes), then time their steps
    interleaved, ABBA, so that both see the same load; returns each side's report with its steps."""
    workers = {}
    try:
        for side in order:
            workers[side] = Worker(pythons[side], side, forwarded)
        steps: dict[str, list] = {side: [] for side in SIDES}
        for index in range(options.repeats):
            for side in order if index % 2 == 0 else order[::-1]:
                steps[side].append(workers[side].step())
    finally:
        for worker in workers.values():
            worker.close()
    pairs = [t["wall_ms"] / o["wall_ms"] for o, t in zip(steps["ours"], steps["diffusers_flax"], strict=True)]
    reports = {side: {**workers[side].report, **step_summary(steps[side])} for side in SIDES}
    reports["speedup_step_paired"] = round(statistics.median(pairs), 3)
    for side in order:
        progress(f"  {side}: step {reports[side]['step_ms_median']} ms (median of {options.repeats})")
    return reports


def forwarded_arguments(options: argparse.Namespace) -> list[str]:
    names = ("block_out_channels", "layers_per_block", "attention_head_dim", "cross_attention_dim")
    names += ("norm_num_groups", "text_length", "resolution", "batch", "warmup")
    return [item for name in names for item in (f"--{name}", str(getattr(options, name)))]


def compare_round(index: int, order: tuple[str, ...], reports: dict[str, dict]) -> dict[str, Any]:
    ours, theirs = reports["ours"], reports["diffusers_flax"]
    return {
        "round": index + 1,
        "order": list(order),
        **{side: {key: reports[side][key] for key in KEPT_PER_ROUND} for side in SIDES},
        "speedup_step_paired": reports["speedup_step_paired"],
        **{f"speedup_{name}": round(theirs[key] / ours[key], 3) for name, key in COMPARED.items()},
    }


def summarise(options: argparse.Namespace, rounds: list[dict], first: dict[str, dict], load: list) -> dict:
    medians = {
        name: round(statistics.median(r[name] for r in rounds), 3)
        for name in ("speedup_step_paired", *(f"speedup_{n}" for n in COMPARED))
    }
    per_side_medians = {
        side: {key: round(statistics.median(r[side][key] for r in rounds), 3) for key in COMPARED.values()}
        for side in SIDES
    }
    return {
        "benchmark": "UNet + ControlNet training step (fwd + grad w.r.t. ControlNet), ours (Flax NNX) "
        "vs diffusers 0.39 Flax classes",
        "speedup_definition": "diffusers_flax time / ours time; > 1 means ours is faster. "
        "speedup_step_paired: median over step pairs timed back to back (interleaved ABBA); "
        "speedup_step: ratio of the sides' median steps; compile: the processes compile one after the other",
        "ours_no_slower": medians["speedup_step_paired"] >= 1.0,
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
        reports = run_round(pythons, order, options, forwarded)
        first = first or reports
        rounds.append(compare_round(index, order, reports))
    load.append(round(os.getloadavg()[0], 2))
    report = summarise(options, rounds, first, load)
    if options.record:
        RECORD.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
