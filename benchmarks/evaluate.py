"""Scoring throughput of `evaluate` against the conditioner's full path, measured in the same run.

    .venv/bin/python benchmarks/evaluate.py [--rounds 3] [--data ../shared/data] [--conditioner NAME]

Per conditioner, on the shared photos (standing in for generated images):
Each photo is used as `--samples` generated samples (`<stem>_<k>`), so both paths see
photos x samples images:
- full_path: `landmark-controlnet condition` as a function (load the detector, decode, detect,
  draw, write PNGs and JSONs);
- scoring: `landmark-controlnet evaluate --generated --reference` as a function (load the
  detector, decode, re-detect, match, score, write rows, summary and the report picture).
Both start from a fresh detector, as the commands do. Rounds alternate, the medians are reported,
and scoring_ratio = scoring images/s over full-path images/s (target >= 0.9). Prints JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]
sys.path.insert(0, str(REPO))

from landmark_controlnet.condition import run_condition  # noqa: E402
from landmark_controlnet.evaluation.scoring import evaluate_folder  # noqa: E402


def conditioner_benchmark():
    """benchmarks/conditioners.py (its photo sets and weights), loaded by path: its name is the package's."""
    spec = importlib.util.spec_from_file_location(
        "conditioner_benchmark", REPO / "benchmarks" / "conditioners.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench(name: str, paths: list[Path], options: dict, rounds: int, samples: int, work: Path) -> dict:
    reference = work / name / "reference"
    with contextlib.redirect_stdout(sys.stderr):
        run_condition(name, options, [str(p) for p in paths], reference)
    generated = work / name / "generated"
    generated.mkdir()
    for path in paths:
        for sample in range(samples):
            (generated / f"{path.stem}_{sample}{path.suffix}").symlink_to(path)
    inputs = [str(p) for p in paths for _ in range(samples)]
    times: dict[str, list[float]] = {"full_path": [], "scoring": []}
    summary: dict = {}
    for round_index in range(rounds):
        out = work / name / f"round{round_index}"

        def full_path(out: Path = out) -> None:
            run_condition(name, options, inputs, out / "condition")

        def scoring(out: Path = out) -> None:
            summary.update(evaluate_folder(generated, reference, out / "scores", name, options))

        order = [("full_path", full_path), ("scoring", scoring)]
        for mode, fn in order if round_index % 2 == 0 else order[::-1]:
            with contextlib.redirect_stdout(sys.stderr):  # the commands' own JSON lines; ours is last
                times[mode].append(seconds(fn))
    rates = {mode: len(inputs) / statistics.median(values) for mode, values in times.items()}
    return {
        "images": len(inputs),
        "full_path_images_per_s": round(rates["full_path"], 2),
        "scoring_images_per_s": round(rates["scoring"], 2),
        "scoring_ratio": round(rates["scoring"] / rates["full_path"], 3),
        "identity_pck_0.1": summary.get("pck_0.1"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=4, help="generated samples per photo")
    parser.add_argument(
        "--conditioner", action="append", help="default: every conditioner of benchmarks/conditioners.py"
    )
    args = parser.parse_args()
    shared = conditioner_benchmark()
    results = {}
    with tempfile.TemporaryDirectory() as work:
        for name in args.conditioner or list(shared.PHOTO_SETS):
            options, weights = shared.weights_options(name, Path(work))
            paths = shared.photos(args.data, shared.PHOTO_SETS[name])
            results[name] = {
                "weights": weights,
                **bench(name, paths, options, args.rounds, args.samples, Path(work)),
            }
    report = {
        "benchmark": "evaluate",
        "target": "scoring_ratio >= 0.9",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "results": results,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
