"""The train state, the optimiser and the jitted, data-parallel train step.

Sharding is explicit: one `Mesh` over every device of every host with a single "data" axis;
the ControlNet, its optimiser state and the frozen weights are replicated; a batch of shape
(accumulation, global batch, ...) is split along the global-batch axis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from .models import StableDiffusion

SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine")


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array  # raw uint32 key data: checkpoints hold plain arrays


@dataclass(frozen=True)
class LossConfig:
    dtype: Any = jnp.float32
    snr_gamma: float | None = None
    prediction_type: str = "epsilon"


@dataclass(frozen=True)
class Shardings:
    mesh: Mesh
    replicated: NamedSharding
    batch: NamedSharding  # (accumulation, global batch, ...): split along the batch axis

    @classmethod
    def over_all_devices(cls) -> Shardings:
        mesh = Mesh(np.array(jax.devices()), ("data",))
        return cls(mesh, NamedSharding(mesh, P()), NamedSharding(mesh, P(None, "data")))

    def put_batch(self, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """This host's rows -> one global array per key (each host passes only its own part)."""
        return {k: jax.make_array_from_process_local_data(self.batch, v) for k, v in local.items()}

    def replicate(self, tree: Any) -> Any:
        """Host values that are the same on every host -> replicated global arrays."""

        def put(x: Any) -> jax.Array:
            x = np.asarray(x)
            return jax.make_array_from_process_local_data(self.replicated, x, global_shape=x.shape)

        return jax.tree_util.tree_map(put, tree)


def learning_rate_schedule(name: str, peak: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
    warmup = optax.linear_schedule(0.0, peak, max(warmup_steps, 1))
    decay_steps = max(total_steps - warmup_steps, 1)
    if name == "constant":
        return optax.constant_schedule(peak)
    if name == "constant_with_warmup":
        return optax.join_schedules([warmup, optax.constant_schedule(peak)], [warmup_steps])
    if name == "linear":
        return optax.join_schedules([warmup, optax.linear_schedule(peak, 0.0, decay_steps)], [warmup_steps])
    if name == "cosine":
        return optax.join_schedules([warmup, optax.cosine_decay_schedule(peak, decay_steps)], [warmup_steps])
    raise ValueError(f"unknown --lr_scheduler {name!r}: one of {', '.join(SCHEDULES)}")


def make_optimizer(
    schedule: optax.Schedule,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    max_grad_norm: float = 1.0,
) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(max_grad_norm),
        optax.adamw(schedule, b1=betas[0], b2=betas[1], eps=eps, weight_decay=weight_decay),
    )


def init_state(params: Any, optimizer: optax.GradientTransformation, seed: int) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        rng=jax.random.PRNGKey(seed),
    )


def diffusion_loss(
    params: Any,
    frozen: dict[str, Any],
    batch: dict[str, jax.Array],
    rng: jax.Array,
    sd: StableDiffusion,
    controlnet: Any,
    config: LossConfig,
) -> jax.Array:
    """The ControlNet training loss of the diffusers example: noise (or v) MSE, optional min-SNR."""
    sample_rng, noise_rng, time_rng = jax.random.split(rng, 3)
    pixels = batch["pixel_values"].astype(config.dtype)
    posterior = sd.vae.apply({"params": frozen["vae"]}, pixels, deterministic=True, method=sd.vae.encode)
    latents = posterior.latent_dist.sample(sample_rng).transpose(0, 3, 1, 2)  # NHWC -> NCHW
    latents = latents.astype(jnp.float32) * sd.vae.config.scaling_factor
    noise = jax.random.normal(noise_rng, latents.shape)
    timesteps = jax.random.randint(time_rng, (latents.shape[0],), 0, sd.scheduler.config.num_train_timesteps)
    noisy = sd.scheduler.add_noise(frozen["scheduler"], latents, noise, timesteps)
    text = sd.text_encoder(batch["input_ids"], params=frozen["text_encoder"], train=False)[0]
    unet_input = noisy.astype(config.dtype)
    if "mask" in batch:  # an inpainting UNet also sees the mask and the masked photo's latents
        unet_input = inpainting_input(unet_input, batch["mask"], pixels, frozen["vae"], sd)
    down, mid = controlnet.apply(
        {"params": params},
        noisy.astype(config.dtype),
        timesteps,
        text,
        batch["conditioning_pixel_values"].astype(config.dtype),
        train=True,
        return_dict=False,
    )
    prediction = sd.unet.apply(
        {"params": frozen["unet"]},
        unet_input,
        timesteps,
        text,
        down_block_additional_residuals=down,
        mid_block_additional_residual=mid,
        train=False,
    ).sample.astype(jnp.float32)
    if config.prediction_type == "v_prediction":
        target = sd.scheduler.get_velocity(frozen["scheduler"], latents, noise, timesteps)
    else:
        target = noise
    per_example = ((prediction - target) ** 2).mean(axis=(1, 2, 3))
    if config.snr_gamma:
        per_example = per_example * _min_snr_weight(frozen["scheduler"], timesteps, config)
    return per_example.mean()


def inpainting_input(
    latents: jax.Array, mask: jax.Array, pixels: jax.Array, vae_params: Any, sd: StableDiffusion
) -> jax.Array:
    """The 9-channel UNet input: latents, then `inpainting_channels`."""
    extra = inpainting_channels(mask, pixels, vae_params, sd, latents.shape[2:])
    return jnp.concatenate([latents, extra.astype(latents.dtype)], axis=1)


def inpainting_channels(
    mask: jax.Array, pixels: jax.Array, vae_params: Any, sd: StableDiffusion, latent_hw: tuple[int, int]
) -> jax.Array:
    """The mask at latent size and the masked photo's latents, (B, 5, h, w).

    `mask` is (B, 1, H, W) with 1 = repaint; `pixels` (B, 3, H, W) in [-1, 1]. The masked photo
    keeps the pixels to preserve and zeroes the rest, as Stable Diffusion inpainting was trained."""
    masked = pixels * (mask < 0.5).astype(pixels.dtype)
    posterior = sd.vae.apply({"params": vae_params}, masked, deterministic=True, method=sd.vae.encode)
    masked_latents = posterior.latent_dist.mean.transpose(0, 3, 1, 2) * sd.vae.config.scaling_factor
    small_mask = jax.image.resize(mask, (*mask.shape[:2], *latent_hw), "nearest")
    return jnp.concatenate([small_mask.astype(masked_latents.dtype), masked_latents], axis=1)


def _min_snr_weight(scheduler_state: Any, timesteps: jax.Array, config: LossConfig) -> jax.Array:
    """Min-SNR-gamma weighting (Hang et al. 2023), as in the diffusers examples."""
    alphas_cumprod = scheduler_state.common.alphas_cumprod[timesteps]
    snr = alphas_cumprod / (1.0 - alphas_cumprod)
    clipped = jnp.minimum(snr, config.snr_gamma)
    return clipped / (snr + 1.0) if config.prediction_type == "v_prediction" else clipped / snr


def make_train_step(
    sd: StableDiffusion,
    controlnet: Any,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    config: LossConfig,
    shardings: Shardings,
):
    """`step(state, frozen, batch) -> (state, metrics)`, jitted over the mesh; the state is donated."""
    grad_fn = jax.value_and_grad(diffusion_loss)

    def step(state: TrainState, frozen: dict[str, Any], batch: dict[str, jax.Array]):
        rng = jax.random.fold_in(state.rng, state.step)  # a function of the step: exact resume
        accumulation = batch["input_ids"].shape[0]

        def micro_step(carry, inputs):
            loss_sum, grad_sum = carry
            micro_batch, index = inputs
            loss, grads = grad_fn(
                state.params, frozen, micro_batch, jax.random.fold_in(rng, index), sd, controlnet, config
            )
            return (loss_sum + loss, jax.tree_util.tree_map(jnp.add, grad_sum, grads)), None

        zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
        (loss, grads), _ = jax.lax.scan(micro_step, (0.0, zeros), (batch, jnp.arange(accumulation)))
        loss, grads = loss / accumulation, jax.tree_util.tree_map(lambda g: g / accumulation, grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(loss) & jnp.all(
            jnp.stack([jnp.isfinite(p).all() for p in jax.tree_util.tree_leaves(params)])
        )  # a checkpoint of this state is only "good" when this holds
        metrics = {
            "loss": loss,
            "grad_norm": optax.global_norm(grads),
            "learning_rate": schedule(state.step),
            "finite": finite,
        }
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return jax.jit(
        step,
        in_shardings=(shardings.replicated, shardings.replicated, shardings.batch),
        out_shardings=(shardings.replicated, shardings.replicated),
        donate_argnums=(0,),
    )
