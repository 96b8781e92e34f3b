"""The train state, the optimiser and the jitted train step on an explicit mesh.

The mesh has MaxDiffusion's two axes (`--mesh data=N,fsdp=M`, see `sharding.py`). A batch of shape
(accumulation, global batch, ...) is split along the global-batch axis over every device; the
ControlNet's parameters, gradients and optimiser moments, and the frozen UNet, VAE and text encoders,
are split along `fsdp` by one rule (`sharding.partition_spec`) and replicated along `data`. With the
default mesh (`data` = every device) everything but the batch is replicated, as plain data parallelism.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from conditioners.errors import OptionError
from landmark_controlnet.diffusion import NoiseSchedule, TextTimeConditioning
from landmark_controlnet.diffusion.attention import batch_mesh
from landmark_controlnet.diffusion.pipeline import controlnet_prediction, inpainting_channels
from landmark_controlnet.diffusion.pixels import conditioning_input, mask_input, photo_input
from landmark_controlnet.diffusion.vae import DiagonalGaussian

from .models import Graphs
from .sharding import BATCH_AXES, MIN_SHARDED_ELEMENTS, MeshShape, tree_shardings, tree_specs

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


@dataclass(frozen=True)
class Shardings:
    mesh: Mesh
    min_elements: int = MIN_SHARDED_ELEMENTS  # smaller tensors stay replicated

    @classmethod
    def over_all_devices(cls, mesh: str | None = None, min_elements: int = MIN_SHARDED_ELEMENTS) -> Shardings:
        """`mesh` is the --mesh text (`data=4,fsdp=2`); None puts every device on `data`."""
        return cls(MeshShape.parse(mesh, jax.device_count()).mesh(), min_elements)

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    @property
    def batch(self) -> NamedSharding:
        """(accumulation, global batch, ...): rows split over every device of the mesh."""
        return NamedSharding(self.mesh, P(None, BATCH_AXES))

    def of(self, tree: Any) -> Any:
        """The sharding of every leaf of `tree` (arrays or shapes), by `partition_spec`."""
        return tree_shardings(tree, self.mesh, self.min_elements)

    def specs(self, tree: Any) -> Any:
        return tree_specs(tree, self.mesh.shape["fsdp"], self.min_elements)

    def of_state(self, params: Any, optimizer: optax.GradientTransformation) -> TrainState:
        """The train state's shardings: the optimiser moments are laid out as their parameters are."""
        return self.of(jax.eval_shape(lambda p: init_state(p, optimizer, 0), params))

    def put_batch(self, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """This host's rows -> one global array per key (each host passes only its own part)."""
        return {k: jax.make_array_from_process_local_data(self.batch, v) for k, v in local.items()}

    def put(self, tree: Any) -> Any:
        """Host values that are the same on every host -> global arrays laid out by `of`: each device
        receives only its own slice, so a sharded model never needs a full copy on one device."""

        def place(x: Any, sharding: NamedSharding) -> jax.Array:
            # A copy: on CPU, device arrays made from a view of a loaded array would keep it alive.
            x = np.array(x, copy=True)
            return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

        return jax.tree_util.tree_map(place, tree, self.of(tree))

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
    raise OptionError(f"unknown --lr_scheduler {name!r}: one of {', '.join(SCHEDULES)}")


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


def init_state_on_devices(
    params: Any, optimizer: optax.GradientTransformation, seed: int, shardings: Shardings
) -> TrainState:
    """`init_state` as one compiled program on the mesh, laid out by `shardings.of_state`: run eagerly,
    the optimiser's init compiles one small program per parameter shape."""
    laid_out = shardings.of_state(params, optimizer)
    build = jax.jit(lambda p: init_state(p, optimizer, seed), out_shardings=laid_out)
    return build(shardings.put(params))


def diffusion_loss(
    params: Any,
    frozen: dict[str, Any],
    batch: dict[str, jax.Array],
    rng: jax.Array,
    graphs: Graphs,
    config: LossConfig,
) -> jax.Array:
    """The ControlNet training loss of the diffusers example: noise (or v) MSE, optional min-SNR.

    `frozen` holds the text encoder's, VAE's and UNet's weights and the `noise_schedule`; `batch`
    the NHWC photo and conditioning image as uint8 (scaled here, on the device, to [-1, 1] and
    [0, 1]), token ids, and for inpainting the mask (uint8, non-zero = repaint). With
    --cache_latents it holds the VAE posterior's `latent_moments` and the `text_embeddings`
    instead of pixels and token ids: the same loss, without running either encoder. An SDXL batch
    adds the pooled `text_embeds` and the six `time_ids`."""
    vae, unet, controlnet = graphs.merge(frozen, params)
    schedule: NoiseSchedule = frozen["noise_schedule"]
    sample_rng, noise_rng, time_rng = jax.random.split(rng, 3)
    latents = vae.to_latents(_posterior(vae, batch, config.dtype), sample_rng).astype(jnp.float32)
    noise = jax.random.normal(noise_rng, latents.shape)
    timesteps = schedule.sample_timesteps(time_rng, latents.shape[0])
    noisy = schedule.add_noise(latents, noise, timesteps).astype(config.dtype)
    text, added = _text_conditioning(graphs, frozen, batch, config.dtype)
    extra = None
    if "mask" in batch:  # an inpainting UNet also sees the mask and the masked photo's latents
        pixels = photo_input(batch["pixel_values"], config.dtype)
        extra = inpainting_channels(vae, mask_input(batch["mask"]), pixels, latents.shape[1:3])
    conditioning = conditioning_input(batch["conditioning_pixel_values"], config.dtype)
    prediction = controlnet_prediction(
        unet, controlnet, noisy, timesteps, text, conditioning, unet_extra=extra, added=added
    )
    target = schedule.training_target(latents, noise, timesteps)
    per_example = ((prediction.astype(jnp.float32) - target) ** 2).mean(axis=(1, 2, 3))
    if config.snr_gamma:
        per_example = per_example * _min_snr_weight(schedule, timesteps, config.snr_gamma)
    return per_example.mean()


def _text_conditioning(
    graphs: Graphs, frozen: dict[str, Any], batch: dict[str, jax.Array], dtype: Any
) -> tuple[jax.Array, TextTimeConditioning | None]:
    """(context, SDXL's added conditioning or None): from the cached embeddings when the batch has
    them, else from the token ids through the frozen encoders. SDXL's pooled projection goes with the
    row's six `time_ids` (original size, crop top-left, target size)."""
    if "text_embeddings" in batch:
        text, pooled = batch["text_embeddings"], batch.get("text_embeds")
    else:
        text, pooled = graphs.encode_text(frozen, batch)
    if pooled is None:
        return text.astype(dtype), None
    return text.astype(dtype), TextTimeConditioning(pooled.astype(dtype), batch["time_ids"])


def _posterior(vae: Any, batch: dict[str, jax.Array], dtype: Any) -> DiagonalGaussian:
    if "latent_moments" in batch:  # cast as the encoder's own output is: the same sample follows
        return DiagonalGaussian.from_moments(batch["latent_moments"].astype(dtype))
    return vae.encode(photo_input(batch["pixel_values"], dtype))


def _min_snr_weight(schedule: NoiseSchedule, timesteps: jax.Array, gamma: float) -> jax.Array:
    """Min-SNR-gamma weighting (Hang et al. 2023), as in the diffusers examples."""
    snr = schedule.snr(timesteps)
    clipped = jnp.minimum(snr, gamma)
    return clipped / (snr + 1.0) if schedule.prediction_type == "v_prediction" else clipped / snr


GradFn = Callable[[Any, dict[str, jax.Array], jax.Array], tuple[jax.Array, Any]]


def accumulate_gradients(
    grad_fn: GradFn, params: Any, batch: dict[str, jax.Array], rng: jax.Array
) -> tuple[jax.Array, Any]:
    """The mean loss and gradients over the batch's leading (accumulation) axis, micro-batch i drawn
    from `fold_in(rng, i)`. One micro-batch runs straight-line, without a loop: XLA compiles it in 2/3
    of the time."""
    accumulation = jax.tree.leaves(batch)[0].shape[0]
    if accumulation == 1:
        return grad_fn(params, jax.tree.map(lambda x: x[0], batch), jax.random.fold_in(rng, 0))

    def micro_step(carry, inputs):
        loss_sum, grad_sum = carry
        micro_batch, index = inputs
        loss, grads = grad_fn(params, micro_batch, jax.random.fold_in(rng, index))
        return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    (loss, grads), _ = jax.lax.scan(micro_step, (0.0, zeros), (batch, jnp.arange(accumulation)))
    return loss / accumulation, jax.tree.map(lambda g: g / accumulation, grads)


def apply_gradients(
    state: TrainState,
    loss: jax.Array,
    grads: Any,
    optimizer: optax.GradientTransformation,
    lr_schedule: optax.Schedule,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser update and the step's metrics: loss, grad_norm, learning_rate, finite."""
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    # Finite gradients, clipped to a finite norm, give AdamW a finite step: checking the norm
    # spares a check per tensor (SDXL's ControlNet has 844), thousands of ops to compile.
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)  # only then is a checkpoint "good"
    metrics = {
        "loss": loss,
        "grad_norm": grad_norm,
        "learning_rate": lr_schedule(state.step),
        "finite": finite,
    }
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def make_train_step(
    graphs: Graphs,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    config: LossConfig,
    shardings: Shardings,
    params: Any,
    frozen: Any,
):
    """`step(state, frozen, batch) -> (state, metrics)`, jitted over the mesh; the state is donated.

    `params` and `frozen` (arrays or shapes) give the layouts; the state keeps its own step after step."""
    state_shardings = shardings.of_state(params, optimizer)
    value_and_grad = jax.value_and_grad(diffusion_loss)

    def step(state: TrainState, frozen: dict[str, Any], batch: dict[str, jax.Array]):
        def grad_fn(params, micro_batch, key):
            with batch_mesh(shardings.mesh):  # splash attention splits the batch over it (shard_map)
                return value_and_grad(params, frozen, micro_batch, key, graphs, config)

        rng = jax.random.fold_in(state.rng, state.step)  # a function of the step: exact resume
        loss, grads = accumulate_gradients(grad_fn, state.params, batch, rng)
        return apply_gradients(state, loss, grads, optimizer, schedule)

    return jax.jit(
        step,
        in_shardings=(state_shardings, shardings.of(frozen), shardings.batch),
        out_shardings=(state_shardings, shardings.replicated),
        donate_argnums=(0,),
    )
