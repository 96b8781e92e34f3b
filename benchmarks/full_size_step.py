"""The trainer's ControlNet step at the real model sizes: SD 1.5 at 512 px, SDXL and FLUX.1-dev at 1024 px.

    .venv/bin/python benchmarks/full_size_step.py [--cases sd15,sd15_cached,sdxl_cached] [--steps 20]
    .venv/bin/python benchmarks/full_size_step.py --cases flux_dev_cached --steps 10  # H200 (or fsdp)
    .venv/bin/python benchmarks/full_size_step.py --scale 0.125 --cases sdxl_cached   # CPU smoke run
    .venv/bin/python benchmarks/full_size_step.py --saved_only     # bytes kept for backward, any machine
    .venv/bin/python benchmarks/full_size_step.py --remat_costs    # FLOPs and bytes of each remat policy

For a GPU or TPU. Each case builds the published configs' models (SD 1.5: stable-diffusion-v1-5's
UNet, VAE and CLIP ViT-L/14 text tower; SDXL: stable-diffusion-xl-base-1.0's UNet and VAE) with
random weights made on the devices, so no checkpoint is read, and times `make_train_step`, the
step `train_flax_controlnet.py` runs: bf16 compute, fp32 ControlNet master weights and AdamW
moments, the frozen models in bf16. `sd15` is the plain step (VAE encoder and text encoder inside
it); `*_cached` is the `--cache_latents` step (VAE posteriors and text embeddings precomputed).
SDXL's step adds the pooled text projection and the six size/crop ids. `flux_dev_cached` is FLUX.1-dev's
transformer (frozen, bf16) with a ControlNet of diffusers' default 4 double and 10 single blocks,
trained by `flux_step.make_flux_train_step` on cached posteriors and T5/CLIP embeddings (512 tokens),
one 1024 px image a step with "layers" remat: 59 GB of weights and AdamW state (`benchmarks/dry_run.py
--model flux-dev`) and 37.6 GB saved for backward (`--saved_only`) on one chip, so an H200, not an H100.

Prints one JSON object: per case the steps/s, images/s, first-step (compile) seconds, XLA's FLOP
count of the step, the achieved TFLOP/s, the MFU against the chip's dense bf16 peak (when the chip
is known), and the compiled step's memory. Each case runs with its own remat policy (SDXL's
keeps the step within an 80 GB GPU; `--remat` overrides it), so no program that cannot fit is
ever compiled. `--scale` shrinks every width, for a smoke run on CPU; its figures are not a
measurement.

`--saved_only` counts, from shapes alone, the bytes the backward pass keeps (`training.saved`),
as a Hopper GPU runs the step: cuDNN's fused attention counted as its own residuals. Its last
stdout line is `{"sd15_cached": {"saved_for_backward_gb": ...}, "sdxl_cached": {...}}`.
`--remat_costs` gives, for every remat policy, XLA's FLOP count of the step (on the XLA attention
path, which its cost analysis can count) and the bytes saved for backward.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]
sys.path.insert(0, str(REPO))
sys.path.append(str(REPO / "benchmarks"))  # last: benchmarks/conditioners.py must not shadow the package

from landmark_controlnet.training.published_configs import (  # noqa: E402
    FLUX_DEV_TRANSFORMER_CONFIG,
    SD15_TEXT_CONFIG,
    SD15_UNET_CONFIG,
    SDXL_POOLED,
    SDXL_UNET_CONFIG,
    VAE_CONFIG,
)

# Dense bf16 peak FLOP/s by jax's device_kind (vendors' data sheets).
PEAK_BF16 = {
    "NVIDIA H200": 989e12,
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "TPU v5 lite": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
}

SCHEDULE = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}


@dataclass(frozen=True)
class Case:
    unet: dict
    resolution: int
    cached: bool
    batch: int
    remat: str = "none"  # the policy its device run uses

    @property
    def sdxl(self) -> bool:
        return self.unet.get("addition_embed_type") == "text_time"


@dataclass(frozen=True)
class FluxCase:
    """A FLUX.1 transformer and a ControlNet of `double` and `single` blocks made like it, on cached
    batches (the trainer requires --cache_latents for FLUX.1)."""

    transformer: dict
    resolution: int
    batch: int
    remat: str = "none"
    double: int = 4
    single: int = 10
    text_tokens: int = 512
    cached: bool = True


CASES = {
    "sd15": Case(SD15_UNET_CONFIG, 512, cached=False, batch=16),
    "sd15_cached": Case(SD15_UNET_CONFIG, 512, cached=True, batch=16),
    "sdxl_cached": Case(SDXL_UNET_CONFIG, 1024, cached=True, batch=8, remat="dots"),  # 68 GB kept
    "flux_dev_cached": FluxCase(FLUX_DEV_TRANSFORMER_CONFIG, 1024, batch=1, remat="layers"),  # 97 GB
}
DEFAULT_CASES = "sd15,sd15_cached,sdxl_cached"  # FLUX.1-dev only when named: one H100 cannot hold it


def scaled(config: dict, scale: float) -> dict:
    """Every width (channels, text dims, head dims) times `scale`, group counts kept dividing them."""
    if scale == 1:
        return config
    out = dict(config)
    if "block_out_channels" in config:
        out["block_out_channels"] = [int(c * scale) for c in config["block_out_channels"]]
    for key in (
        "cross_attention_dim",
        "hidden_size",
        "intermediate_size",
        "projection_dim",
        "addition_time_embed_dim",
    ):
        if key in config:
            out[key] = int(config[key] * scale)
    if "num_attention_heads" in config and "attention_head_dim" in config:  # FLUX.1: fewer heads
        out["num_attention_heads"] = max(1, int(config["num_attention_heads"] * scale))
        out["joint_attention_dim"] = int(config["joint_attention_dim"] * scale)
        out["pooled_projection_dim"] = int(config["pooled_projection_dim"] * scale)
    if "norm_num_groups" in config:
        out["norm_num_groups"] = 8
    if "projection_class_embeddings_input_dim" in config:
        out["projection_class_embeddings_input_dim"] = (
            int(SDXL_POOLED * scale) + 6 * out["addition_time_embed_dim"]
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cases", default=None, help=f"default: {DEFAULT_CASES}; sd15_cached,sdxl_cached for --saved_only"
    )
    parser.add_argument("--batch", type=int, default=None, help="global batch (default: per case)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--scale", type=float, default=1.0, help="shrink every width (CPU smoke runs)")
    parser.add_argument("--resolution", type=int, default=None, help="default: the model's own")
    parser.add_argument("--remat", default=None, help="remat policy (default: the case's own)")
    parser.add_argument("--attention", default="auto", help="auto|xla|cudnn|splash")
    parser.add_argument("--flops_only", action="store_true", help="count FLOPs, run nothing (any machine)")
    parser.add_argument("--saved_only", action="store_true", help="count saved bytes, run nothing")
    parser.add_argument("--remat_costs", action="store_true", help="FLOPs and saved bytes per remat policy")
    parser.add_argument(
        "--compile_cost",
        action="store_true",
        help="lowering and compile time, scanned against unrolled layers",
    )
    parser.add_argument("--model_tflop", type=float, default=None, help="the step's FLOPs, if counted before")
    parser.add_argument("--profile_dir", default=None, help="trace 3 timed steps into this folder")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        case = CASES[options.child]
        batch, resolution = options.batch or case.batch, options.resolution or case.resolution
        print(json.dumps(run_case(case, batch, resolution, options)))
        return
    import jax

    report = {
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "devices": jax.device_count(),
        "jax": jax.__version__,
        "scale": options.scale,
        "cases": {},
    }
    cases = options.cases or ("sd15_cached,sdxl_cached" if options.saved_only else DEFAULT_CASES)
    for name in cases.split(","):
        # One process per case: its own peak memory, and a crash costs only that case.
        command = [sys.executable, __file__, *sys.argv[1:], "--child", name]
        print(f"{name} ...", file=sys.stderr, flush=True)
        result = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
        lines = result.stdout.strip().splitlines()
        report["cases"][name] = (
            json.loads(lines[-1])
            if result.returncode == 0 and lines
            else {"error": f"exit status {result.returncode}"}
        )
        print(json.dumps(report["cases"][name]), file=sys.stderr, flush=True)
    print(json.dumps(report["cases"] if options.saved_only else report))


def run_case(case: Case, batch: int, resolution: int, options: argparse.Namespace) -> dict:
    remat = options.remat or case.remat
    if options.saved_only:
        return saved_bytes(case, batch, resolution, options.scale, remat)
    if options.remat_costs:
        return remat_costs(case, batch, resolution, options.scale)
    if options.compile_cost:
        return compile_cost(case, batch, resolution, options.scale, remat)
    return {
        **measure(case, batch, resolution, options, remat),
        "remat": remat,
        "attention": options.attention,
    }


@dataclass
class Step:
    """The trainer's jitted step and its inputs: real arrays, or ShapeDtypeStructs when abstract."""

    step: Any
    state: Any
    frozen: dict
    batch: dict
    parameters_m: dict
    graphs: Any = None
    loss_config: Any = None
    loss_fn: Any = None  # for `training.saved`: the step's loss function (None: SD's)


def build_step(
    case: Case,
    batch: int,
    resolution: int,
    scale: float,
    remat: str,
    abstract: bool,
    attention: str = "auto",
    scan_layers: bool = True,
) -> Step:
    """Random weights made on the devices (never on the host), or only their shapes when `abstract`."""
    if isinstance(case, FluxCase):
        return build_flux_step(case, batch, resolution, scale, remat, abstract, attention, scan_layers)
    import jax
    import jax.numpy as jnp
    import numpy as np

    from landmark_controlnet.diffusion import (
        AutoencoderKL,
        AutoencoderKLConfig,
        CLIPTextConfig,
        CLIPTextModel,
        ControlNetConfig,
        ControlNetModel,
        NoiseSchedule,
        UNet2DConditionModel,
        UNetConfig,
    )
    from landmark_controlnet.training.models import Compute, Graphs
    from landmark_controlnet.training.step import LossConfig, Shardings, make_train_step

    shardings = Shardings.over_all_devices()
    compute = Compute(jnp.bfloat16, remat, remat, attention, scan_layers)
    unet_config = UNetConfig.from_dict(scaled(case.unet, scale))
    models = {
        "vae": (AutoencoderKL, AutoencoderKLConfig.from_dict(scaled(VAE_CONFIG, scale)), compute.frozen),
        "unet": (UNet2DConditionModel, unet_config, compute.frozen),
        "controlnet": (ControlNetModel, ControlNetConfig.from_unet(unet_config), compute.trained),
    }
    if not case.cached:
        text = CLIPTextConfig.from_dict(scaled(SD15_TEXT_CONFIG, scale))
        models["text_encoder"] = (CLIPTextModel, text, compute.frozen)
    graphs, weights, counts = {"text_encoder": None}, {}, {}
    for name, (cls, config, model_options) in models.items():
        graphs[name], weights[name] = random_weights(cls, config, model_options, shardings, abstract)
        counts[name] = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(weights[name]))
    params = weights.pop("controlnet")
    weights["noise_schedule"] = shardings.replicate(NoiseSchedule.from_config(SCHEDULE))
    host_batch = example_batch(case, unet_config, batch, resolution, scale)
    optimizer, schedule, state, device_batch = optimizer_state_and_batch(
        params, host_batch, shardings, abstract
    )
    config = LossConfig(dtype=jnp.bfloat16)
    step = make_train_step(Graphs(**graphs), optimizer, schedule, config, shardings, params, weights)
    millions = {k: round(v / 1e6, 1) for k, v in counts.items()}
    return Step(step, state, weights, device_batch, millions, Graphs(**graphs), config)


def build_flux_step(
    case: FluxCase,
    batch: int,
    resolution: int,
    scale: float,
    remat: str,
    abstract: bool,
    attention: str = "auto",
    scan_layers: bool = True,
) -> Step:
    """`build_step` for FLUX.1: the transformer and the ControlNet with random weights, the trainer's
    flow-matching step and a cached batch."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from landmark_controlnet.diffusion import (
        FluxControlNetConfig,
        FluxControlNetModel,
        FluxTransformer2DModel,
        FluxTransformerConfig,
    )
    from landmark_controlnet.diffusion.flow_match import FlowMatchSchedule
    from landmark_controlnet.training.flux_step import (
        FlowMatchLossConfig,
        FluxGraphs,
        flux_ids,
        flux_loss_from_key,
        make_flux_train_step,
    )
    from landmark_controlnet.training.models import Compute
    from landmark_controlnet.training.step import Shardings
    from landmark_controlnet.training.tiny_flux import SCHEDULER

    shardings = Shardings.over_all_devices()
    compute = Compute(jnp.bfloat16, remat, remat, attention, scan_layers)
    config = FluxTransformerConfig.from_dict(scaled(case.transformer, scale))
    layers = {"num_layers": case.double, "num_single_layers": case.single}
    controlnet_config = FluxControlNetConfig(**{**config.shared(), **layers})
    graph, transformer = random_weights(FluxTransformer2DModel, config, compute.frozen, shardings, abstract)
    controlnet_graph, params = random_weights(
        FluxControlNetModel, controlnet_config, compute.trained, shardings, abstract
    )
    latent = resolution // 8
    frozen = {
        "transformer": transformer,
        "flow_schedule": shardings.replicate(FlowMatchSchedule.from_config(SCHEDULER)),
        "ids": shardings.replicate(flux_ids(latent, latent, case.text_tokens)),
    }
    host_batch = flux_batch(config, batch, latent, case.text_tokens)
    optimizer, schedule, state, device_batch = optimizer_state_and_batch(
        params, host_batch, shardings, abstract
    )
    loss_config = FlowMatchLossConfig(dtype=jnp.bfloat16, latent_shift=0.1159, latent_scale=0.3611)
    graphs = FluxGraphs(graph, controlnet_graph)
    step = make_flux_train_step(graphs, optimizer, schedule, loss_config, shardings, params, frozen)
    counts = {"transformer": transformer, "controlnet": params}
    millions = {
        name: round(sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree)) / 1e6, 1)
        for name, tree in counts.items()
    }
    return Step(step, state, frozen, device_batch, millions, graphs, loss_config, flux_loss_from_key)


def optimizer_state_and_batch(params: Any, host_batch: dict, shardings: Any, abstract: bool) -> tuple:
    """(optimizer, learning-rate schedule, train state, batch): on the devices, or their shapes."""
    import jax

    from landmark_controlnet.training.step import init_state, learning_rate_schedule, make_optimizer

    schedule = learning_rate_schedule("constant", 1e-5, 0, 1)
    optimizer = make_optimizer(schedule)
    build_state = jax.jit(lambda p: init_state(p, optimizer, 0), out_shardings=shardings.replicated)
    state = jax.eval_shape(build_state, params) if abstract else build_state(params)
    if abstract:
        device_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in host_batch.items()}
    else:
        device_batch = shardings.put_batch(host_batch)
    return optimizer, schedule, state, device_batch


def flux_batch(config: Any, batch: int, latent: int, text_tokens: int) -> dict:
    """Random cached inputs in the trainer's FLUX.1 batch layout: (accumulation 1, global batch, ...)."""
    import numpy as np

    from landmark_controlnet.training.flux_step import CONDITIONING, LATENTS, MOMENTS, POOLED, PROMPT_EMBEDS

    rng = np.random.default_rng(0)
    moments = (1, batch, latent, latent, 2 * 16)  # FLUX.1's VAE: 16 latent channels
    return {
        MOMENTS[LATENTS]: rng.standard_normal(moments, np.float32),
        MOMENTS[CONDITIONING]: rng.standard_normal(moments, np.float32),
        PROMPT_EMBEDS: rng.standard_normal((1, batch, text_tokens, config.joint_attention_dim), np.float32),
        POOLED: rng.standard_normal((1, batch, config.pooled_projection_dim), np.float32),
    }


def step_flops(case: Case, batch: int, resolution: int, scale: float, remat: str = "none") -> float:
    """XLA's FLOP count of one step, lowered on abstract weights (nothing allocated or compiled).

    On the XLA attention path and unscanned: XLA's cost analysis counts neither cuDNN's fused
    attention nor a Pallas kernel, and a scan's body only once."""
    built = build_step(
        case, batch, resolution, scale, remat, abstract=True, attention="xla", scan_layers=False
    )
    return float(built.step.lower(built.state, built.frozen, built.batch).cost_analysis()["flops"])


def saved_bytes(
    case: Case, batch: int, resolution: int, scale: float, remat: str, as_gpu: bool = True
) -> dict:
    """The bytes the backward pass keeps, counted from shapes (`training.saved`); `as_gpu`: as a
    Hopper GPU runs it, else on the XLA attention path."""
    import jax

    from landmark_controlnet.training.saved import saved_for_backward

    attention = "auto" if as_gpu else "xla"
    built = build_step(case, batch, resolution, scale, remat, abstract=True, attention=attention)
    micro_batch = {k: jax.ShapeDtypeStruct(v.shape[1:], v.dtype) for k, v in built.batch.items()}
    more = {"loss_fn": built.loss_fn} if built.loss_fn else {}
    saved = saved_for_backward(
        built.graphs, built.frozen, built.state.params, micro_batch, built.loss_config, as_gpu=as_gpu, **more
    )
    return {"global_batch": batch, "resolution": resolution, "remat": remat, **saved.as_dict()}


def remat_costs(case: Case, batch: int, resolution: int, scale: float) -> dict:
    """For each remat policy: FLOPs of the step and their ratio to no remat, and the bytes saved
    for backward with GPU attention (cuDNN) and with XLA's."""
    from landmark_controlnet.diffusion.options import REMAT_POLICIES

    costs = {}
    for policy in REMAT_POLICIES:
        flops = step_flops(case, batch, resolution, scale, policy)
        costs[policy] = {
            "tflop_per_step": round(flops / 1e12, 2),
            "saved_gb_gpu_attention": saved_bytes(case, batch, resolution, scale, policy)[
                "saved_for_backward_gb"
            ],
            "saved_gb_xla_attention": saved_bytes(case, batch, resolution, scale, policy, as_gpu=False)[
                "saved_for_backward_gb"
            ],
        }
        costs[policy]["flops_ratio"] = round(flops / 1e12 / costs["none"]["tflop_per_step"], 3)
        print(f"  {policy}: {costs[policy]}", file=sys.stderr, flush=True)
    return {"global_batch": batch, "resolution": resolution, "policies": costs}


def compile_cost(case: Case, batch: int, resolution: int, scale: float, remat: str) -> dict:
    """Seconds to lower and to compile the step on abstract weights (for this backend), and the
    lowered program's StableHLO op count: unrolled transformer layers, then scanned ones."""
    costs = {}
    for name, scan in (("unrolled", False), ("scanned", True)):
        built = build_step(case, batch, resolution, scale, remat, abstract=True, scan_layers=scan)
        started = time.perf_counter()
        lowered = built.step.lower(built.state, built.frozen, built.batch)
        lower_s = time.perf_counter() - started
        ops = sum(1 for line in lowered.as_text().splitlines() if " = " in line)
        started = time.perf_counter()
        lowered.compile()
        compile_s = time.perf_counter() - started
        costs[name] = {"lower_s": round(lower_s, 1), "compile_s": round(compile_s, 1), "stablehlo_ops": ops}
        print(f"  {name}: {costs[name]}", file=sys.stderr, flush=True)
    total = {name: c["lower_s"] + c["compile_s"] for name, c in costs.items()}
    ratio = round(total["scanned"] / total["unrolled"], 3)
    return {
        "global_batch": batch,
        "resolution": resolution,
        "remat": remat,
        **costs,
        "scanned_over_unrolled": ratio,
    }


def measure(case: Case, batch: int, resolution: int, options: argparse.Namespace, remat: str) -> dict:
    import jax

    from landmark_controlnet.diffusion.attention import attention_report, reset_attention_report

    # Model FLOPs, without remat's recompute: MFU counts the work the step must do.
    flops = (
        options.model_tflop * 1e12
        if options.model_tflop
        else step_flops(case, batch, resolution, options.scale)
    )
    result = {"global_batch": batch, "resolution": resolution, "cached": case.cached}
    result["model_tflop_per_step"] = round(flops / 1e12, 2)
    if options.flops_only:
        return result
    built = build_step(
        case, batch, resolution, options.scale, remat, abstract=False, attention=options.attention
    )
    state, frozen, device_batch = built.state, built.frozen, built.batch
    reset_attention_report()
    started = time.perf_counter()
    compiled = built.step.lower(state, frozen, device_batch).compile()
    compile_s = time.perf_counter() - started
    result["attention_kernels"] = attention_report()
    state, metrics = compiled(state, frozen, device_batch)
    jax.block_until_ready(metrics)
    first_step_s = time.perf_counter() - started
    state, metrics = compiled(state, frozen, device_batch)  # one more warm-up
    jax.block_until_ready(metrics)
    started = time.perf_counter()
    for _ in range(options.steps):
        state, metrics = compiled(state, frozen, device_batch)
    jax.block_until_ready((state, metrics))
    seconds = (time.perf_counter() - started) / options.steps
    if options.profile_dir:
        jax.profiler.start_trace(options.profile_dir)
        for _ in range(3):
            state, metrics = compiled(state, frozen, device_batch)
        jax.block_until_ready((state, metrics))
        jax.profiler.stop_trace()

    peak = PEAK_BF16.get(jax.devices()[0].device_kind)
    achieved = flops / seconds / jax.device_count()
    result.update(
        {
            "parameters_m": built.parameters_m,
            "compile_s": round(compile_s, 1),
            "first_step_s": round(first_step_s, 1),
            "step_s": round(seconds, 4),
            "steps_per_s": round(1 / seconds, 3),
            "images_per_s": round(batch / seconds, 2),
            "loss_finite": bool(metrics["finite"]),
            "achieved_tflops_per_device": round(achieved / 1e12, 1),
            "mfu": round(achieved / peak, 3) if peak else None,
        }
    )
    memory = compiled.memory_analysis()
    if memory is not None:
        result["compiled_memory_gb"] = {
            "arguments": round(memory.argument_size_in_bytes / 1e9, 2),
            "temporaries": round(memory.temp_size_in_bytes / 1e9, 2),
        }
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        result["peak_device_memory_gb"] = round(stats["peak_bytes_in_use"] / 1e9, 2)
    return result


def random_weights(cls, config, model_options, shardings, abstract: bool):
    """(graph, weights): random weights made on the devices in one program, or their shapes."""
    import jax
    from flax import nnx

    from landmark_controlnet.diffusion.pretrained import InitKeys

    graph, _ = nnx.split(cls.abstract(config, model_options))

    def build():
        return nnx.to_pure_dict(nnx.state(cls(config, model_options, rngs=InitKeys(0))))

    build = jax.jit(build, out_shardings=shardings.replicated)
    return graph, jax.eval_shape(build) if abstract else build()


def example_batch(case: Case, unet_config, batch: int, resolution: int, scale: float) -> dict:
    """Random inputs in the trainer's batch layout: (accumulation 1, global batch, ...)."""
    import numpy as np

    rng = np.random.default_rng(0)
    latent = resolution // 8
    image = (batch, resolution, resolution, 3)
    rows = {"conditioning_pixel_values": rng.integers(0, 256, image, np.uint8)}  # pictures travel as uint8
    if case.cached:
        rows["latent_moments"] = rng.standard_normal((batch, latent, latent, 8))
        rows["text_embeddings"] = rng.standard_normal((batch, 77, unet_config.cross_attention_dim))
    else:
        rows["pixel_values"] = rng.integers(0, 256, image, np.uint8)
        rows["input_ids"] = rng.integers(0, 49408, (batch, 77))
    if case.sdxl:
        rows["text_embeds"] = rng.standard_normal((batch, int(SDXL_POOLED * scale)))
        rows["time_ids"] = np.tile(
            np.array([[resolution, resolution, 0, 0, resolution, resolution]]), (batch, 1)
        )
    return {
        k: (v if v.dtype == np.uint8 else v.astype(np.int32 if v.dtype.kind == "i" else np.float32))[None]
        for k, v in rows.items()
    }


if __name__ == "__main__":
    main()
