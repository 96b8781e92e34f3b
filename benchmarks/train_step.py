"""Training speed: the whole loop (input pipeline + step) against the jitted step alone, same run.

    .venv/bin/python benchmarks/train_step.py [--devices 4] [--resolution 64] [--steps 30]

Builds a tiny random Stable Diffusion and a hand_encoded dataset from ../shared/data, then
times (a) the compiled train step fed one batch already on the devices, the upper bound, and
(b) the real loop, each step taking its batch from the threaded, prefetching input pipeline.
Prints JSON; `full_over_step_only` near 1 means the devices never wait for data. Pass
`--model DIR` to time a real Stable Diffusion folder instead (e.g. on a GPU/TPU machine).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=4, help="simulated CPU devices (ignored on GPU/TPU)")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1, help="per device")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--mixed_precision", default="no")
    parser.add_argument("--model", default=None, help="a diffusers SD folder (default: tiny random)")
    options = parser.parse_args()
    os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={options.devices}")

    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    model = options.model or str(_tiny_model(work))
    dataset = _tiny_dataset(work)
    import jax

    import train_flax_controlnet
    from landmark_controlnet.training.loop import build_run

    args = train_flax_controlnet.parse_args(
        [
            "--pretrained_model_name_or_path", model, "--dataset_name", str(dataset),
            "--output_dir", str(work / "run"), "--resolution", str(options.resolution),
            "--train_batch_size", str(options.batch), "--mixed_precision", options.mixed_precision,
            "--max_train_steps", str(2 * options.steps + 2), "--validation_steps", "0",
            "--checkpointing_steps", "0",
        ]
    )  # fmt: skip
    run = build_run(args)
    batch, _ = next(run.batches)
    run.state, metrics = run.train_step(run.state, run.frozen, batch)  # compile
    jax.block_until_ready(metrics)

    step_only = _time(lambda: run.train_step(run.state, run.frozen, batch), run, options.steps)
    full = _time(lambda: run.train_step(run.state, run.frozen, next(run.batches)[0]), run, options.steps)
    print(
        json.dumps(
            {
                "backend": jax.default_backend(),
                "devices": jax.device_count(),
                "model": "tiny random SD" if not options.model else options.model,
                "resolution": options.resolution,
                "global_batch": options.batch * jax.device_count(),
                "step_only_steps_per_s": round(step_only, 2),
                "full_loop_steps_per_s": round(full, 2),
                "full_over_step_only": round(full / step_only, 3),
                "full_loop_images_per_s": round(full * options.batch * jax.device_count(), 1),
            },
            indent=1,
        )
    )
    run.checkpoints.close()


def _time(step, run, steps: int) -> float:
    import jax

    start = time.perf_counter()
    for _ in range(steps):
        run.state, metrics = step()
    jax.block_until_ready((run.state, metrics))
    return steps / (time.perf_counter() - start)


def _tiny_model(work: Path) -> Path:
    from landmark_controlnet.training.tiny_sd import write_tiny_sd

    return write_tiny_sd(work / "tiny-sd")


def _tiny_dataset(work: Path) -> Path:
    import builder_fixtures as fx

    from builders import BuildSettings
    from builders.run import run_build

    data = (REPO.parent / "shared" / "data").resolve()
    builder = fx.folder_recipe(work)
    run_build(str(builder), str(fx.photo_folder(data, work)), BuildSettings(), progress=False)
    return builder


if __name__ == "__main__":
    main()
