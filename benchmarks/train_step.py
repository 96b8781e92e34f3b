"""Training speed: the whole loop (input pipeline + step) against the jitted step alone, same run.

    .venv/bin/python benchmarks/train_step.py [--devices 4] [--resolution 64] [--steps 30]

Builds a tiny random Stable Diffusion and a hand_encoded dataset from ../shared/data, then
times (a) the compiled train step fed one batch already on the devices, the upper bound, and
(b) the real loop, each step taking its batch from the threaded, prefetching input pipeline, and
(c) the first step (compilation) in a fresh process, cold and then warm from the persistent
compilation cache (`--compilation_cache_dir`) that the first process filled, and
(d) (a) and (b) again with `--cache_latents`: steps on cached VAE latents and text embeddings, and
(e) a tiny SDXL-shaped model's step on a 4x1 (`data=4`) and a 2x2 (`data=2,fsdp=2`) mesh: steps/s and
the compiled step's memory per device (its parameters split along fsdp below the usual threshold,
`--fsdp_min_elements 1024`, as the tiny model has few large tensors). `--sdxl_only` runs (e) alone.
Prints JSON; `full_over_step_only` near 1 means the devices never wait for data, and
`cached_over_uncached_*` is the steady-state speed-up of --cache_latents. Pass
`--model DIR` to time a real Stable Diffusion folder instead (e.g. on a GPU/TPU machine).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
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
    parser.add_argument("--sdxl_only", action="store_true", help="only the SDXL mesh comparison (e)")
    parser.add_argument("--mesh", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=["cold", "warm", "cached", "mesh"], help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        print(json.dumps(measure(options)))
        return
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    _tiny_dataset(work)
    sdxl = {"sdxl_meshes": sdxl_meshes(options, work)}
    if options.sdxl_only:
        print(json.dumps(sdxl, indent=1))
        return
    model = options.model or str(_tiny_model(work))
    # Two processes share one compilation cache: the first compiles cold, the second reads it.
    forwarded = [a for a in sys.argv[1:] if not a.startswith("--model")] + ["--model", model]
    cold, warm, cached = (_child(forwarded, kind, work) for kind in ("cold", "warm", "cached"))
    report = {
        **{k: v for k, v in cold.items() if k != "compile_s"},
        "compile_cold_s": cold["compile_s"],
        "compile_warm_s": warm["compile_s"],
        "warm_over_cold": round(warm["compile_s"] / cold["compile_s"], 3),
        "cache_latents": {
            "prepass_s": round(cached["build_run_s"] - warm["build_run_s"], 2),  # the start-up it adds
            "step_only_steps_per_s": cached["step_only_steps_per_s"],
            "full_loop_steps_per_s": cached["full_loop_steps_per_s"],
        },
        "cached_over_uncached_step_only": round(
            cached["step_only_steps_per_s"] / cold["step_only_steps_per_s"], 3
        ),
        "cached_over_uncached_full_loop": round(
            cached["full_loop_steps_per_s"] / cold["full_loop_steps_per_s"], 3
        ),
        # The tiny model's VAE is 1/4 of its UNet's width; SD 1.5's encoder is a far larger share.
        "sd15_step_flops": sd15_step_flops(),
        **sdxl,
    }
    print(json.dumps(report, indent=1))


def sdxl_meshes(options: argparse.Namespace, work: Path) -> dict:
    """(e): the same SDXL-shaped step on a 4x1 and a 2x2 mesh, each in its own process."""
    from landmark_controlnet.training.tiny_sd import write_tiny_sd

    model = str(write_tiny_sd(work / "tiny-sdxl", sdxl=True))
    runs = {}
    for mesh in ("data=4", "data=2,fsdp=2"):
        forwarded = ["--model", model, "--mesh", mesh, "--resolution", str(options.resolution)]
        forwarded += ["--steps", str(options.steps), "--devices", str(options.devices)]
        runs[mesh] = _child(forwarded, "mesh", work)
    replicated, sharded = runs["data=4"], runs["data=2,fsdp=2"]
    return {
        "model": "tiny random SDXL (two text encoders, text_time, transformer depths [1, 1, 2])",
        **runs,
        "2x2_over_4x1_steps_per_s": round(
            sharded["step_only_steps_per_s"] / replicated["step_only_steps_per_s"], 3
        ),
        "2x2_over_4x1_state_bytes": round(
            sharded["state_bytes_per_device"] / replicated["state_bytes_per_device"], 3
        ),
        "2x2_over_4x1_compiled_peak": round(
            sharded["compiled_peak_bytes_per_device"] / replicated["compiled_peak_bytes_per_device"], 3
        ),
    }


def _child(forwarded: list[str], kind: str, work: Path) -> dict:
    command = [sys.executable, __file__, *forwarded, "--child", kind, "--work", str(work)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode:
        raise SystemExit(f"{kind} run failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure(options: argparse.Namespace) -> dict:
    """First step (compile + run) time; for the cold run also the steady-state rates."""
    os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={options.devices}")
    import jax

    from landmark_controlnet.training.flags import parse_args
    from landmark_controlnet.training.loop import build_run, setup_runtime

    args = parse_args(
        [
            "--pretrained_model_name_or_path", options.model, "--dataset_name", str(options.work / "builder"),
            "--output_dir", str(options.work / options.child), "--resolution", str(options.resolution),
            "--train_batch_size", str(options.batch), "--mixed_precision", options.mixed_precision,
            "--max_train_steps", str(2 * options.steps + 2), "--validation_steps", "0",
            "--checkpointing_steps", "0", "--compilation_cache_dir", str(options.work / "jax-cache"),
            *(["--cache_latents", "--latent_cache_dir", str(options.work / "latents")]
              if options.child == "cached" else []),
            *(["--mesh", options.mesh, "--fsdp_min_elements", "1024"] if options.child == "mesh" else []),
        ]
    )  # fmt: skip
    setup_runtime(args)
    started = time.perf_counter()
    run = build_run(args)
    built_s = time.perf_counter() - started
    batch, _ = next(run.batches)
    start = time.perf_counter()
    run.state, metrics = run.train_step(run.state, run.frozen, batch)
    jax.block_until_ready(metrics)
    result = {"compile_s": round(time.perf_counter() - start, 2)}
    result["build_run_s"] = round(built_s, 2)
    if options.child == "mesh":
        result.update(_mesh_figures(run, batch, options.steps))
    elif options.child in ("cold", "cached"):
        step_only = _time(lambda: run.train_step(run.state, run.frozen, batch), run, options.steps)
        full = _time(lambda: run.train_step(run.state, run.frozen, next(run.batches)[0]), run, options.steps)
        result.update(
            {
                "backend": jax.default_backend(),
                "devices": jax.device_count(),
                "model": "tiny random SD" if "tiny-sd" in options.model else options.model,
                "resolution": options.resolution,
                "global_batch": options.batch * jax.device_count(),
                "step_only_steps_per_s": round(step_only, 2),
                "full_loop_steps_per_s": round(full, 2),
                "full_over_step_only": round(full / step_only, 3),
                "full_loop_images_per_s": round(full * options.batch * jax.device_count(), 1),
            }
        )
    run.checkpoints.close()
    return result


def _mesh_figures(run, batch, steps: int) -> dict:
    import jax

    from landmark_controlnet.training.dry_run import compiled_memory

    memory = compiled_memory(run.train_step, run.state, run.frozen, batch)
    # Counted before timing: the steps donate (delete) the state they are given.
    state_bytes = sum(x.addressable_shards[0].data.nbytes for x in jax.tree_util.tree_leaves(run.state))
    return {
        "step_only_steps_per_s": round(
            _time(lambda: run.train_step(run.state, run.frozen, batch), run, steps), 2
        ),
        "state_bytes_per_device": state_bytes,
        "compiled_peak_bytes_per_device": memory["compiled_peak"],
        "compiled_activations_bytes_per_device": memory["activations"],
    }


def sd15_step_flops(resolution: int = 512, batch: int = 1) -> dict:
    """XLA's FLOP count of one train step at full SD 1.5 shapes, on pixels and captions and on cached
    latents and embeddings: the step's share that --cache_latents removes, where timing a full-size
    step is out of reach (abstract weights: nothing is allocated, nothing is compiled)."""
    sys.path.append(str(REPO / "benchmarks"))  # last: benchmarks/conditioners.py must not shadow the package
    from full_size_step import CASES, step_flops

    flops = {
        name: step_flops(CASES[case], batch, resolution, scale=1.0)
        for name, case in (("uncached", "sd15"), ("cached", "sd15_cached"))
    }
    return {
        "shapes": f"SD 1.5 UNet, ControlNet, VAE and CLIP text encoder, {resolution} px, batch {batch}",
        "tflops_per_step": {k: round(v / 1e12, 3) for k, v in flops.items()},
        "uncached_over_cached": round(flops["uncached"] / flops["cached"], 3),
    }


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
