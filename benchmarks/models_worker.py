"""One side of benchmarks/models.py: time a jitted ControlNet training step (forward + backward).

    python -I benchmarks/models_worker.py --side ours|diffusers_flax [shape flags]

`ours` runs landmark_controlnet.diffusion (Flax NNX, NHWC) in the project's .venv and never imports
diffusers; `diffusers_flax` runs diffusers 0.39's FlaxUNet2DConditionModel / FlaxControlNetModel
(NCHW) in the reference environment and never imports this project. Both sides build the same
SD 1.5-shaped configs, fill every parameter with small numpy normals (timing only: the values do
not matter, but no side then compiles an init) and feed the same numpy inputs (transposed to NHWC
for ours); the step is the gradient w.r.t. the ControlNet's parameters of the noise MSE of the
frozen UNet's output.
Prints one JSON line: trace+lower and XLA compile times (jax's AOT `lower().compile()`), the
first run, and every timed steady-state step; with `--serve`, the compile report and then one line
per step asked for on stdin.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SIDES = ("ours", "diffusers_flax")
LATENT_CHANNELS = 4
NUM_TRAIN_TIMESTEPS = 1000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", choices=SIDES, required=True)
    add_shape_arguments(parser)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after the first run")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps (without --serve)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--serve", action="store_true", help="time steps on request (see serve)")
    return parser.parse_args(argv)


def add_shape_arguments(parser: argparse.ArgumentParser) -> None:
    """The model and input shape flags; benchmarks/models.py forwards them to both workers."""
    parser.add_argument("--block_out_channels", default="64,128,256,256")
    parser.add_argument("--layers_per_block", type=int, default=2)
    parser.add_argument("--attention_head_dim", type=int, default=8, help="SD 1.5's key: the head count")
    parser.add_argument("--cross_attention_dim", type=int, default=768)
    parser.add_argument("--norm_num_groups", type=int, default=32)
    parser.add_argument("--text_length", type=int, default=77)
    parser.add_argument("--resolution", type=int, default=64, help="pixels; latents are 1/8 of it")
    parser.add_argument("--batch", type=int, default=2)


def unet_config(args: argparse.Namespace) -> dict[str, Any]:
    """SD 1.5's UNet block structure (config.json keys) at the widths asked for."""
    widths = [int(w) for w in args.block_out_channels.split(",")]
    levels = len(widths)
    return {
        "sample_size": args.resolution // 8,
        "in_channels": LATENT_CHANNELS,
        "out_channels": LATENT_CHANNELS,
        "down_block_types": ["CrossAttnDownBlock2D"] * (levels - 1) + ["DownBlock2D"],
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (levels - 1),
        "block_out_channels": widths,
        "layers_per_block": args.layers_per_block,
        "attention_head_dim": args.attention_head_dim,
        "cross_attention_dim": args.cross_attention_dim,
        "norm_num_groups": args.norm_num_groups,
    }


def numpy_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """The step's inputs in PyTorch's NCHW layout, the same on both sides for a given seed."""
    import numpy as np

    rng = np.random.default_rng(args.seed)
    latent = (args.batch, LATENT_CHANNELS, args.resolution // 8, args.resolution // 8)
    return {
        "latents": rng.standard_normal(latent, np.float32),
        "target": rng.standard_normal(latent, np.float32),
        "text": rng.standard_normal((args.batch, args.text_length, args.cross_attention_dim), np.float32),
        "cond": rng.random((args.batch, 3, args.resolution, args.resolution), np.float32),
        "timesteps": rng.integers(0, NUM_TRAIN_TIMESTEPS, (args.batch,)).astype(np.int32),
    }


def random_values(shapes: Any, seed: int, scale: float = 0.02) -> Any:
    """Small normal values for every leaf of a tree of shapes, from numpy: the same scheme on both sides,
    and no jitted init (which would compile a whole forward pass before the timed compile)."""
    import jax
    import numpy as np

    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda s: (rng.standard_normal(s.shape) * scale).astype(s.dtype), shapes)


def build_ours(config: dict[str, Any], inputs: dict[str, Any]) -> tuple[Callable, tuple]:
    """(loss, (controlnet params, frozen UNet state, batch)) for the project's NNX models."""
    sys.path.insert(0, str(REPO))
    import jax.numpy as jnp
    from flax import nnx

    from landmark_controlnet.diffusion.controlnet import ControlNetConfig, ControlNetModel
    from landmark_controlnet.diffusion.unet import UNet2DConditionModel, UNetConfig

    unet_config = UNetConfig.from_dict(config)
    controlnet_config = ControlNetConfig.from_unet(unet_config)
    unet_graph, unet_shapes = nnx.split(
        nnx.eval_shape(lambda: UNet2DConditionModel(unet_config, rngs=nnx.Rngs(0)))
    )
    controlnet_graph, controlnet_shapes = nnx.split(
        nnx.eval_shape(lambda: ControlNetModel(controlnet_config, rngs=nnx.Rngs(1)))
    )
    unet_state, controlnet_params = random_values(unet_shapes, 0), random_values(controlnet_shapes, 1)
    channels_last = {k: v.transpose(0, 2, 3, 1) if v.ndim == 4 else v for k, v in inputs.items()}

    def loss(controlnet_params, unet_state, batch):
        residuals = nnx.merge(controlnet_graph, controlnet_params)(
            batch["latents"], batch["timesteps"], batch["text"], batch["cond"]
        )
        prediction = nnx.merge(unet_graph, unet_state)(
            batch["latents"],
            batch["timesteps"],
            batch["text"],
            down_block_additional_residuals=residuals.down_block_residuals,
            mid_block_additional_residual=residuals.mid_block_residual,
        )
        return jnp.mean((prediction - batch["target"]) ** 2)

    return loss, (controlnet_params, unet_state, channels_last)


def build_diffusers_flax(config: dict[str, Any], inputs: dict[str, Any]) -> tuple[Callable, tuple]:
    """(loss, (controlnet params, frozen UNet params, batch)) for diffusers' Flax classes, called as the
    project's old trainer (training/step.py) calls them."""
    import jax
    import jax.numpy as jnp
    from diffusers import FlaxControlNetModel, FlaxUNet2DConditionModel

    # diffusers' Flax blocks hard-code 32 groups: other values would not be the same model.
    if config.pop("norm_num_groups") != 32:
        raise SystemExit("diffusers' Flax UNet has GroupNorm(32) only: use --norm_num_groups 32")
    unet = FlaxUNet2DConditionModel(**config, dtype=jnp.float32)
    unet_params = random_values(jax.eval_shape(unet.init_weights, jax.random.PRNGKey(0)), 0)
    shared = ("sample_size", "in_channels", "down_block_types", "block_out_channels", "layers_per_block")
    controlnet = FlaxControlNetModel(
        **{k: config[k] for k in shared},
        attention_head_dim=config["attention_head_dim"],
        cross_attention_dim=config["cross_attention_dim"],
        dtype=jnp.float32,
    )
    controlnet_params = random_values(jax.eval_shape(controlnet.init_weights, jax.random.PRNGKey(1)), 1)

    def loss(controlnet_params, unet_params, batch):
        down, mid = controlnet.apply(
            {"params": controlnet_params},
            batch["latents"],
            batch["timesteps"],
            batch["text"],
            batch["cond"],
            train=True,
            return_dict=False,
        )
        prediction = unet.apply(
            {"params": unet_params},
            batch["latents"],
            batch["timesteps"],
            batch["text"],
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
            train=False,
        ).sample
        return jnp.mean((prediction - batch["target"]) ** 2)

    return loss, (controlnet_params, unet_params, inputs)


def hlo_summary(lowered: Any, compiled: Any) -> dict[str, Any]:
    """What XLA was given and what it made of it: op counts, and the optimised module's FLOPs."""
    stablehlo = Counter(
        line.split("=", 1)[1].split()[0].strip('"')
        for line in lowered.as_text().splitlines()
        if "= stablehlo." in line or '= "stablehlo.' in line
    )
    optimised = Counter(
        line.split("=", 1)[1].split("(")[0].split()[-1]
        for line in compiled.as_text().splitlines()
        if " = " in line and "(" in line and not line.lstrip().startswith(("ROOT %tuple", "//"))
    )
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return {
        "stablehlo_ops": sum(stablehlo.values()),
        "stablehlo_top": dict(stablehlo.most_common(12)),
        "optimised_instructions": sum(optimised.values()),
        "optimised_convolutions": optimised.get("convolution", 0),
        "optimised_dots": optimised.get("dot", 0),
        "optimised_fusions": optimised.get("fusion", 0),
        "gflops": round(float((cost or {}).get("flops", 0.0)) / 1e9, 3),
    }


class Clock:
    """Wall and process CPU seconds since the previous lap."""

    def __init__(self) -> None:
        self.last = (time.perf_counter(), time.process_time())

    def lap(self) -> tuple[float, float]:
        now = (time.perf_counter(), time.process_time())
        elapsed = (now[0] - self.last[0], now[1] - self.last[1])
        self.last = now
        return elapsed


class CompiledStep:
    """The step compiled ahead of time for its arguments, and what compiling it cost."""

    def __init__(self, args: argparse.Namespace):
        import jax
        import numpy as np

        jax.config.update("jax_enable_compilation_cache", False)  # every process compiles from scratch
        build = build_ours if args.side == "ours" else build_diffusers_flax
        loss, host_args = build(unet_config(args), numpy_inputs(args))
        self.args = jax.device_put(host_args)
        step = jax.jit(jax.value_and_grad(loss))
        # Wall and process CPU time (all threads) of each phase: waiting for a core on a shared
        # machine is not CPU time, but XLA's worker threads spinning for work is.
        clock = Clock()
        lowered = step.lower(*self.args)
        trace_lower = clock.lap()
        self.compiled = lowered.compile()
        xla_compile = clock.lap()
        value, grads = jax.block_until_ready(self.compiled(*self.args))
        first_run = clock.lap()
        for _ in range(args.warmup):
            self.time_one()
        self.report = {
            "side": args.side,
            "trace_lower_s": round(trace_lower[0], 3),
            "xla_compile_s": round(xla_compile[0], 3),
            "compile_s": round(trace_lower[0] + xla_compile[0], 3),
            "compile_cpu_s": round(trace_lower[1] + xla_compile[1], 3),
            "first_run_s": round(first_run[0], 4),
            "loss": float(value),
            "loss_finite": bool(np.isfinite(float(value))),
            "trainable_parameters": int(sum(leaf.size for leaf in jax.tree_util.tree_leaves(grads))),
            "hlo": hlo_summary(lowered, self.compiled),
            "versions": versions(args.side),
            "isolation": isolation(args.side),
            "backend": jax.default_backend(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
        }

    def time_one(self) -> dict[str, float]:
        import jax

        clock = Clock()
        jax.block_until_ready(self.compiled(*self.args))
        wall, cpu = clock.lap()
        return {"wall_ms": round(1e3 * wall, 2), "cpu_ms": round(1e3 * cpu, 2)}


def step_summary(steps: list[dict[str, float]]) -> dict[str, Any]:
    wall = [s["wall_ms"] for s in steps]
    return {
        "step_ms_median": round(statistics.median(wall), 2),
        "step_ms_min": round(min(wall), 2),
        "step_ms_all": wall,
        "step_cpu_ms_median": round(statistics.median(s["cpu_ms"] for s in steps), 2),
    }


def serve(step: CompiledStep) -> None:
    """Compile report first, then one timed step per `step` line on stdin, until `quit` or EOF; the driver
    interleaves two such processes so that both sides' steps share the machine's load of the moment."""
    print(json.dumps(step.report), flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        print(json.dumps(step.time_one()), flush=True)


def main() -> None:
    args = parse_args()
    step = CompiledStep(args)
    if args.serve:
        serve(step)
        return
    print(json.dumps({**step.report, **step_summary([step.time_one() for _ in range(args.repeats)])}))


def versions(side: str) -> dict[str, str]:
    from importlib.metadata import version

    names = ["jax", "jaxlib", "flax", "numpy"] + (["diffusers"] if side == "diffusers_flax" else [])
    return {name: version(name) for name in names}


def isolation(side: str) -> dict[str, bool]:
    """Proof that each side ran only its own stack."""
    foreign = ("diffusers", "torch", "transformers") if side == "ours" else ("landmark_controlnet", "torch")
    imported = {name: name in sys.modules for name in foreign}
    if any(imported.values()):
        raise SystemExit(f"{side} side imported {[n for n, v in imported.items() if v]}")
    return {f"imported_{name}": False for name in foreign}


if __name__ == "__main__":
    main()
