"""--dry_run: what each device will hold for this model, mesh and batch, before paying for the devices.

Nothing is materialised: the models are built from their config.json files alone (ShapeDtypeStructs),
the train state's and frozen weights' bytes per device follow from their shapes and the sharding rule,
and the activations come from XLA's memory analysis of the compiled step, compiled for the abstract
inputs on this machine's devices. Run it on the accelerator you will train on: CPU figures (under
`--xla_force_host_platform_device_count`) follow the CPU compiler's fusion and layouts, not a TPU's.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from typing import Any

import jax
import numpy as np

from landmark_controlnet.diffusion.flux_pipeline import Flux
from landmark_controlnet.diffusion.pipeline import StableDiffusion

from .flux_step import CONDITIONING, CONTROL_MODE, LATENTS, MOMENTS, POOLED, PROMPT_EMBEDS
from .models import TOKEN_KEYS, TrainedModels, compute_of, load_models, native_resolution
from .saved import saved_for_backward
from .sharding import per_device_bytes
from .step import Shardings, init_state, make_optimizer

log = logging.getLogger("train_flax_controlnet")
GB = 1e9
NOT_WEIGHTS = ("noise_schedule", "flow_schedule", "ids")  # the frozen inputs that are not a model's


def plan_memory(args: argparse.Namespace, dtype: Any) -> dict[str, Any]:
    """Per-device bytes of parameters, optimiser state, frozen weights and activations; printed as a
    table and returned (the last stdout line is the same figures as JSON)."""
    compute = compute_of(args, dtype)
    models = load_models(args, compute, abstract=True)
    frozen, params = models.frozen, models.params
    if args.cache_latents:  # the step then reads cached embeddings: no text encoder on the devices
        frozen = {name: weights for name, weights in frozen.items() if not name.startswith("text_encoder")}
    shardings = Shardings.over_all_devices(args.mesh, args.fsdp_min_elements)
    optimizer = make_optimizer(optimizer_schedule(args))
    state = jax.eval_shape(lambda p: init_state(p, optimizer, 0), params)
    axes = dict(shardings.mesh.shape)
    plan = {
        "model": args.pretrained_model_name_or_path,
        "model_family": family(models),
        "sdxl": models.is_sdxl,
        "mesh": axes,
        "resolution": args.resolution,
        "batch_per_device": args.train_batch_size,
        "compute_dtype": np.dtype(dtype).name,
        "gradient_checkpointing": {
            _base_name(models): compute.unet_remat,
            "controlnet": compute.controlnet_remat,
        },
        "attention": compute.attention,
        "cache_latents": args.cache_latents,
        "controlnet_parameters": _count(params),
        "frozen_parameters": _count({k: v for k, v in frozen.items() if k not in NOT_WEIGHTS}),
        "bytes_per_device": {
            "parameters": per_device_bytes(state.params, shardings.specs(state.params), axes),
            "optimizer_state": per_device_bytes(state.opt_state, shardings.specs(state.opt_state), axes),
            "frozen_weights": per_device_bytes(frozen, shardings.specs(frozen), axes),
        },
    }
    plan["bytes_per_device"]["saved_for_backward"] = _saved_for_backward(args, models, frozen)
    if args.dry_run == "compile":
        step = models.make_step(
            models.graphs, optimizer, optimizer_schedule(args), models.loss_config, shardings, params, frozen
        )
        inputs = (*_laid_out(shardings, optimizer, state, frozen), _abstract_batch(models, args, shardings))
        plan["bytes_per_device"].update(compiled_memory(step, *inputs))
    print(format_plan(plan))
    print(json.dumps(plan))
    return plan


def family(models: TrainedModels) -> str:
    return "FLUX.1" if models.is_flux else "SDXL" if models.is_sdxl else "SD"


def _base_name(models: TrainedModels) -> str:
    """The frozen denoiser's name, as the remat flags call it."""
    return "transformer" if models.is_flux else "unet"


def _count(tree: Any) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def _saved_for_backward(args: argparse.Namespace, models: TrainedModels, frozen: dict[str, Any]) -> int:
    """What one device's backward pass keeps, counted from shapes with fused attention (as GPUs and
    TPUs run it); unlike the CPU compiler's memory analysis, it honours the remat policy."""
    shapes = batch_shapes(models.base, args.train_batch_size, args)
    micro_batch = {key: jax.ShapeDtypeStruct(shape[1:], kind) for key, (shape, kind) in shapes.items()}
    saved = saved_for_backward(
        models.graphs,
        frozen,
        models.params,
        micro_batch,
        models.loss_config,
        as_gpu=True,
        loss_fn=models.loss_fn,
    )
    return saved.total


def _abstract_batch(models: TrainedModels, args: argparse.Namespace, shardings: Shardings) -> dict[str, Any]:
    shapes = batch_shapes(models.base, args.train_batch_size * jax.device_count(), args)
    batch = shardings.batch
    return {key: jax.ShapeDtypeStruct(shape, kind, sharding=batch) for key, (shape, kind) in shapes.items()}


def optimizer_schedule(args: argparse.Namespace) -> Any:
    return lambda step: args.learning_rate  # the schedule's values do not change the step's memory


def _laid_out(shardings: Shardings, optimizer: Any, state: Any, frozen: dict[str, Any]) -> tuple[Any, Any]:
    """The abstract state and frozen weights with the shardings the trainer gives them."""
    return jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        (state, frozen),
        (shardings.of_state(state.params, optimizer), shardings.of(frozen)),
    )


def compiled_memory(step: Any, *abstract_inputs: Any) -> dict[str, int]:
    """XLA's memory analysis of the jitted `step` compiled for these abstract inputs, bytes per device:
    `activations` is its temporary buffers (what the backward pass keeps, gradients, workspace)."""
    started = time.perf_counter()
    log.info(
        "dry run: compiling the train step for %d devices (minutes for a full-size model)", jax.device_count()
    )
    compiled = step.lower(*abstract_inputs).compile()
    log.info("dry run: compiled in %.0f s", time.perf_counter() - started)
    memory = compiled.memory_analysis()
    arguments, temporary = memory.argument_size_in_bytes, memory.temp_size_in_bytes
    peak = arguments + memory.output_size_in_bytes - memory.alias_size_in_bytes + temporary
    return {"activations": temporary, "compiled_arguments": arguments, "compiled_peak": peak}


def batch_shapes(
    base: StableDiffusion | Flux, global_batch: int, args: argparse.Namespace
) -> dict[str, tuple]:
    """{key: (shape, dtype)} of one step's batch, (accumulation, global batch, ...), as the loader
    makes it for this model and these flags."""
    if isinstance(base, Flux):
        return flux_batch_shapes(base, global_batch, args)
    sd = base
    resolution = args.resolution or native_resolution(sd)
    lead = (args.gradient_accumulation_steps, global_batch)
    image = (*lead, resolution, resolution, 3)
    shapes = {"conditioning_pixel_values": (image, np.uint8)}  # pictures travel as uint8
    tokens = sd.tokenizer.model_max_length
    if args.cache_latents:
        latent = resolution // sd.vae.config.downscale
        shapes["latent_moments"] = ((*lead, latent, latent, 2 * sd.vae.config.latent_channels), np.float32)
        shapes["text_embeddings"] = ((*lead, tokens, sd.unet.config.cross_attention_dim), np.float32)
        if sd.is_sdxl:
            shapes["text_embeds"] = ((*lead, sd.text_encoder_2.config.projection_dim), np.float32)
    else:
        shapes["pixel_values"] = (image, np.uint8)
        for name in sd.text_models():
            shapes[TOKEN_KEYS[name]] = ((*lead, tokens), np.int32)
    if sd.is_sdxl:
        shapes["time_ids"] = ((*lead, 6), np.float32)
    if args.inpainting:
        shapes["mask"] = ((*lead, resolution, resolution, 1), np.uint8)
    return shapes


def flux_batch_shapes(flux: Flux, global_batch: int, args: argparse.Namespace) -> dict[str, tuple]:
    """A FLUX.1 run's cached batch: the photo's and the conditioning image's VAE posteriors, T5's prompt
    embeddings and CLIP's pooled output (and a union ControlNet's mode)."""
    lead = (args.gradient_accumulation_steps, global_batch)
    latent = (args.resolution or native_resolution(flux)) // flux.vae.config.downscale
    moments = ((*lead, latent, latent, 2 * flux.vae.config.latent_channels), np.float32)
    config = flux.transformer.config
    shapes = {
        MOMENTS[LATENTS]: moments,
        MOMENTS[CONDITIONING]: moments,
        PROMPT_EMBEDS: ((*lead, args.max_sequence_length, config.joint_attention_dim), np.float32),
        POOLED: ((*lead, config.pooled_projection_dim), np.float32),
    }
    if args.control_mode is not None:
        shapes[CONTROL_MODE] = (lead, np.int32)
    return shapes


def format_plan(plan: dict[str, Any]) -> str:
    mesh = ", ".join(f"{axis}={size}" for axis, size in plan["mesh"].items())
    lines = [
        f"dry run: {plan['model']} ({plan['model_family']}), ControlNet "
        f"{plan['controlnet_parameters'] / 1e6:.0f} M parameters, mesh {mesh}, "
        f"{plan['batch_per_device']} x {plan['resolution']} px per device, {plan['compute_dtype']} compute"
        f", remat {' '.join(f'{k}={v}' for k, v in plan['gradient_checkpointing'].items())}"
        f"{', cached latents' if plan['cache_latents'] else ''}",
        *(
            f"  {name.replace('_', ' '):<20} {size / GB:9.3f} GB per device"
            for name, size in plan["bytes_per_device"].items()
        ),
    ]
    return "\n".join(lines)
