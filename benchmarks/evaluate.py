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
and scoring_ratio = scoring images/s over full-path images/s (target >= 0.9).

With --generation, also the overhead of scoring against generating: a tiny random SD and ControlNet
generate one image per row of a hand_encoded build of the shared hand photos (DDIM, --steps, 64 px,
compiled before timing), then `evaluate` scores them; scoring_over_generation is the ratio of their
times. Prints JSON.
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
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]
sys.path.insert(0, str(REPO))

from landmark_controlnet.condition import ConditionRequest, run_condition  # noqa: E402
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
    with contextlib.redirect_stdout(sys.stderr):
        run_condition(ConditionRequest((name,), tuple(map(str, paths)), work / name / "reference", options))
    reference = work / name / "reference" / name
    generated = work / name / "generated"
    generated.mkdir()
    for path in paths:
        for sample in range(samples):
            (generated / f"{path.stem}_{sample}{path.suffix}").symlink_to(path)
    inputs = tuple(str(p) for p in sorted(generated.iterdir()))  # each photo `samples` times
    times: dict[str, list[float]] = {"full_path": [], "scoring": []}
    summary: dict = {}
    for round_index in range(rounds):
        out = work / name / f"round{round_index}"

        def full_path(out: Path = out) -> None:
            run_condition(ConditionRequest((name,), inputs, out / "condition", options))

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


def generation_overhead(data: Path, work: Path, rounds: int, steps: int) -> dict:
    """Generate with a tiny random SD and ControlNet, then score: their times, same run."""
    import jax.numpy as jnp
    from flax import nnx

    from builders import BuildSettings
    from builders.run import run_build
    from landmark_controlnet.diffusion.pipeline import ControlNetGenerator
    from landmark_controlnet.evaluation.generate import load_rows, open_split, write_references, write_samples
    from landmark_controlnet.training.models import controlnet_from_unet, controlnet_options, load_base_model
    from landmark_controlnet.training.tiny_sd import write_tiny_sd

    sys.path.insert(0, str(REPO / "tests"))
    import builder_fixtures as fx

    root = work / "generation"
    builder = fx.folder_recipe(root)
    with contextlib.redirect_stdout(sys.stderr):
        run_build(str(builder), str(fx.photo_folder(data, root)), BuildSettings(), progress=False)
    sd = load_base_model(str(write_tiny_sd(root / "tiny-sd")))
    graph, params = nnx.split(controlnet_from_unet(sd.unet, 0, controlnet_options(jnp.float32)))
    sampler, params = ControlNetGenerator(sd, graph, steps), nnx.to_pure_dict(params)
    rows = load_rows(open_split(str(builder), "train"), 64, 64)
    write_references(rows, root / "references")
    batch, samples = len(rows), 4  # one batch shape, compiled once
    generate = partial(write_samples, sampler, params, rows, samples=samples, batch_size=batch)
    generate(root / "warm-up")  # compiles
    times: dict[str, list[float]] = {"generation": [], "scoring": []}
    for index in range(rounds):
        generated = root / f"generated{index}"
        times["generation"].append(seconds(partial(generate, generated)))
        score = partial(evaluate_folder, generated, root / "references", root / f"scores{index}")
        with contextlib.redirect_stdout(sys.stderr):
            times["scoring"].append(seconds(score))
    medians = {mode: statistics.median(values) for mode, values in times.items()}
    images = batch * samples
    return {
        "images": images,
        "steps": steps,
        "resolution": 64,
        "generation_images_per_s": round(images / medians["generation"], 2),
        "scoring_images_per_s": round(images / medians["scoring"], 2),
        "scoring_over_generation": round(medians["scoring"] / medians["generation"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=4, help="generated samples per photo")
    parser.add_argument(
        "--conditioner", action="append", help="default: every conditioner of benchmarks/conditioners.py"
    )
    parser.add_argument("--generation", action="store_true", help="also scoring against generation")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps of --generation")
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
        if args.generation:
            generation = generation_overhead(args.data, Path(work), args.rounds, args.steps)
    report = {
        "benchmark": "evaluate",
        "target": "scoring_ratio >= 0.9",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "results": results,
        **({"generation": generation} if args.generation else {}),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
