"""The FLUX.1 ControlNet training step (flow matching), as diffusers' train_controlnet_flux.py computes it.

The script is `examples/controlnet/train_controlnet_flux.py` in the diffusers repository.

One step of that script, given what the encoders give it (packed latents of the photo and of the
conditioning image, T5 prompt embeddings, CLIP pooled embeddings, text and latent image ids):

    u         ~ compute_density_for_timestep_sampling(--weighting_scheme, --logit_mean, --logit_std,
                                                    --mode_scale)
    sigma     = the scheduler's training table at floor(u N) (FLUX.1's is unshifted: dynamic shifting)
    noisy     = (1 - sigma) latents + sigma noise
    residuals = ControlNet(noisy, conditioning latents, t / 1000, guidance, text)   (conditioning scale 1)
    v         = transformer(noisy, t / 1000, guidance, text, residuals)             (frozen)
    loss      = mean((v - (noise - latents))^2)

with t = 1000 sigma and the guidance `--guidance_scale` (3.5) per example where the model embeds guidance.
The script draws its noise levels by the weighting scheme but does not weight its loss; `weight_loss`
weights it as diffusers' SD3 / Flux DreamBooth scripts do (`compute_loss_weighting_for_sd3`).

`flux_controlnet_loss` takes the noise and the sigmas; `flux_loss_from_key` draws them (and, for cached
VAE posteriors, the latents) from a key; `make_flux_train_step` is `training.step.make_train_step`'s
jitted, sharded, accumulating step over it. Gradients are the ControlNet's alone: the transformer's
weights come in `frozen`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from landmark_controlnet.diffusion.attention import batch_mesh
from landmark_controlnet.diffusion.flow_match import (
    FlowMatchSchedule,
    loss_weighting,
    timestep_density,
    velocity_target,
)
from landmark_controlnet.diffusion.flux import FluxTransformer2DModel
from landmark_controlnet.diffusion.flux_controlnet import FluxControlNetModel
from landmark_controlnet.diffusion.flux_pipeline import PATCH, latent_image_ids, pack_latents, text_ids
from landmark_controlnet.diffusion.vae import DiagonalGaussian

from .step import Shardings, TrainState, accumulate_gradients, apply_gradients

# The batch keys: packed latents (batch, tokens, 4 x latent channels), or the VAE posterior's moments
# (batch, height, width, 2 x latent channels) that the step samples, scales and packs itself.
LATENTS, CONDITIONING = "latents", "conditioning_latents"
MOMENTS = {LATENTS: "latent_moments", CONDITIONING: "conditioning_latent_moments"}
PROMPT_EMBEDS, POOLED = "prompt_embeds", "pooled_prompt_embeds"
CONTROL_MODE = "control_mode"  # union ControlNets: (batch,) mode indices


@dataclass(frozen=True)
class FlowMatchLossConfig:
    """train_controlnet_flux.py's flags (their defaults), the compute dtype, and the VAE's latent scaling
    (FLUX.1: shift 0.1159, scale 0.3611), used only for batches of posterior moments."""

    dtype: Any = jnp.float32
    weighting_scheme: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    guidance_scale: float = 3.5
    weight_loss: bool = False  # the ControlNet script's loss is unweighted
    latent_shift: float = 0.0
    latent_scale: float = 1.0


class FluxIds(NamedTuple):
    """The rotary position ids, (tokens, 3) each: the same for every example of a run's resolution."""

    txt_ids: jax.Array
    img_ids: jax.Array


@dataclass(frozen=True)
class FluxGraphs:
    """The structure of the frozen transformer and the trained ControlNet (static under jit)."""

    transformer: Any
    controlnet: Any

    def merge(
        self, frozen: dict[str, Any], params: Any
    ) -> tuple[FluxTransformer2DModel, FluxControlNetModel]:
        return nnx.merge(self.transformer, frozen["transformer"]), nnx.merge(self.controlnet, params)


def split_flux_models(
    transformer: FluxTransformer2DModel,
    controlnet: FluxControlNetModel,
    schedule: FlowMatchSchedule,
    ids: FluxIds,
) -> tuple[FluxGraphs, dict[str, Any], Any]:
    """(graphs, frozen, the ControlNet's weights), weights as pure dicts. `frozen` holds the transformer's
    weights, the `flow_schedule` and the run's position `ids` (one resolution per run): what every step
    reads and none changes, as `training.step`'s frozen models and noise schedule. Build the models with
    `Compute.frozen` and `Compute.trained` options (`training.models`): remat and the attention kernel
    are part of the graphs.

    The ControlNet's weights come in its `param_dtype` (float32 master weights): `from_transformer`
    copies a bfloat16 transformer's weights as they are. Abstract models (`jax.ShapeDtypeStruct`
    leaves, for --dry_run) give shapes in that dtype."""
    transformer_graph, transformer_state = nnx.split(transformer)
    controlnet_graph, controlnet_state = nnx.split(controlnet)
    frozen = {"transformer": nnx.to_pure_dict(transformer_state), "flow_schedule": schedule, "ids": ids}
    master = controlnet.options.param_dtype
    params = jax.tree.map(lambda x: _in_dtype(x, master), nnx.to_pure_dict(controlnet_state))
    return FluxGraphs(transformer_graph, controlnet_graph), frozen, params


def _in_dtype(x: Any, dtype: Any) -> Any:
    """An array cast to `dtype`; a shape given that dtype (ShapeDtypeStructs have no `astype`)."""
    if isinstance(x, jax.ShapeDtypeStruct):
        return x if x.dtype == dtype else jax.ShapeDtypeStruct(x.shape, dtype, sharding=x.sharding)
    return x.astype(dtype)


def flux_ids(latent_height: int, latent_width: int, text_tokens: int) -> FluxIds:
    """FLUX.1's ids for an h x w latent: zeros for the text, [0, row, column] per packed 2x2 patch, as the
    script's `_prepare_latent_image_ids(h // 2, w // 2)`."""
    return FluxIds(text_ids(text_tokens), latent_image_ids(latent_height // PATCH, latent_width // PATCH))


# -- the loss ------------------------------------------------------------------------------------


def sigmas_of_density(schedule: FlowMatchSchedule, u: jax.Array) -> jax.Array:
    """The script's noise levels of density draws u: the table's sigma at floor(u N). It looks the
    timestep up again (`get_sigmas`), which finds the same entry: the table's timesteps are distinct."""
    return schedule.sigmas[schedule.indices(u)]


def flux_controlnet_loss(
    params: Any,
    frozen: dict[str, Any],
    batch: dict[str, jax.Array],
    noise: jax.Array,
    sigmas: jax.Array,
    graphs: FluxGraphs,
    config: FlowMatchLossConfig,
) -> jax.Array:
    """The script's loss for packed `latents` and `conditioning_latents`, `noise` shaped like them and
    (batch,) `sigmas` from the training table."""
    transformer, controlnet = graphs.merge(frozen, params)
    schedule: FlowMatchSchedule = frozen["flow_schedule"]
    ids: FluxIds = frozen["ids"]
    latents = batch[LATENTS].astype(jnp.float32)
    noisy = schedule.add_noise(latents, noise, sigmas).astype(config.dtype)
    # The script passes the table's timestep / 1000 (not sigma: N need not be 1000); the models scale back.
    timestep = sigmas * schedule.num_train_timesteps / 1000
    text = {
        "encoder_hidden_states": batch[PROMPT_EMBEDS].astype(config.dtype),
        "pooled_projections": batch[POOLED].astype(config.dtype),
        "timestep": timestep,
        "txt_ids": ids.txt_ids,
        "img_ids": ids.img_ids,
    }
    control = controlnet(
        noisy,
        batch[CONDITIONING].astype(config.dtype),
        **text,
        guidance=_guidance(controlnet, noisy.shape[0], config),
        controlnet_mode=_control_mode(batch),
    )
    prediction = transformer(
        noisy,
        **text,
        guidance=_guidance(transformer, noisy.shape[0], config),
        controlnet_block_samples=_cast(control.controlnet_block_samples, config.dtype),
        controlnet_single_block_samples=_cast(control.controlnet_single_block_samples, config.dtype),
    )
    error = (prediction.astype(jnp.float32) - velocity_target(latents, noise.astype(jnp.float32))) ** 2
    per_example = error.mean(axis=tuple(range(1, error.ndim)))  # equal sizes: their mean is the mean
    if config.weight_loss:
        per_example = per_example * loss_weighting(config.weighting_scheme, sigmas)
    return per_example.mean()


def _guidance(model: FluxTransformer2DModel | FluxControlNetModel, batch: int, config: FlowMatchLossConfig):
    """--guidance_scale per example for a guidance-distilled model (FLUX.1-dev), else None. The script
    reads the transformer's flag for both models; a ControlNet made from it has the same."""
    if not model.config.guidance_embeds:
        return None
    return jnp.full((batch,), config.guidance_scale, jnp.float32)


def _control_mode(batch: dict[str, jax.Array]) -> jax.Array | None:
    mode = batch.get(CONTROL_MODE)
    return None if mode is None else mode.reshape(-1, 1)


def _cast(samples: tuple[jax.Array, ...] | None, dtype: Any) -> list[jax.Array] | None:
    return None if samples is None else [sample.astype(dtype) for sample in samples]


def flux_loss_from_key(
    params: Any,
    frozen: dict[str, Any],
    batch: dict[str, jax.Array],
    rng: jax.Array,
    graphs: FluxGraphs,
    config: FlowMatchLossConfig,
) -> jax.Array:
    """`flux_controlnet_loss` with the step's random draws made from `rng`: the posterior samples (for
    batches of moments), the noise and the density draw u of `config.weighting_scheme`."""
    latent_key, noise_key, time_key = jax.random.split(rng, 3)
    batch = packed_latents(batch, latent_key, config)
    latents = batch[LATENTS]
    noise = jax.random.normal(noise_key, latents.shape, jnp.float32)
    sigmas = sigmas_of_density(frozen["flow_schedule"], draw_density(time_key, latents.shape[0], config))
    return flux_controlnet_loss(params, frozen, batch, noise, sigmas, graphs, config)


def draw_density(key: jax.Array, batch: int, config: FlowMatchLossConfig) -> jax.Array:
    """(batch,) draws u in [0, 1) of the script's `compute_density_for_timestep_sampling` call."""
    return timestep_density(
        key, batch, config.weighting_scheme, config.logit_mean, config.logit_std, config.mode_scale
    )


def packed_latents(batch: dict[str, jax.Array], key: jax.Array, config: FlowMatchLossConfig) -> dict:
    """`batch` with packed `latents` and `conditioning_latents`: as given, or sampled from the cached
    posterior moments (`latent_moments`, `conditioning_latent_moments`), scaled and packed, as the
    script's `vae.encode(...).latent_dist.sample()` then `_pack_latents` does each step."""
    out = dict(batch)
    for name, key_of_name in zip(MOMENTS, jax.random.split(key, len(MOMENTS)), strict=True):
        if name in batch:
            continue
        posterior = DiagonalGaussian.from_moments(out.pop(MOMENTS[name]).astype(jnp.float32))
        scaled = (posterior.sample(key_of_name) - config.latent_shift) * config.latent_scale
        out[name] = pack_latents(scaled)
    return out


# -- the train step ------------------------------------------------------------------------------


def make_flux_train_step(
    graphs: FluxGraphs,
    optimizer: optax.GradientTransformation,
    lr_schedule: optax.Schedule,
    config: FlowMatchLossConfig,
    shardings: Shardings,
    params: Any,
    frozen: Any,
):
    """`step(state, frozen, batch) -> (state, metrics)`, jitted over the mesh, the state donated: the
    signature of `training.step.make_train_step`'s.

    The batch is (accumulation, global batch, ...) split over the devices as `training.step`'s.
    `params` and `frozen` (arrays or shapes) give the layouts."""
    state_shardings = shardings.of_state(params, optimizer)
    value_and_grad = jax.value_and_grad(flux_loss_from_key)

    def step(state: TrainState, frozen: dict[str, Any], batch: dict[str, jax.Array]):
        def grad_fn(params, micro_batch, key):
            with batch_mesh(shardings.mesh):  # splash attention splits the batch over it (shard_map)
                return value_and_grad(params, frozen, micro_batch, key, graphs, config)

        rng = jax.random.fold_in(state.rng, state.step)  # a function of the step: exact resume
        loss, grads = accumulate_gradients(grad_fn, state.params, batch, rng)
        return apply_gradients(state, loss, grads, optimizer, lr_schedule)

    return jax.jit(
        step,
        in_shardings=(state_shardings, shardings.of(frozen), shardings.batch),
        out_shardings=(state_shardings, shardings.replicated),
        donate_argnums=(0,),
    )
