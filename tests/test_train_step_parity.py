"""Our train step computes what diffusers' ControlNet training does, with PyTorch autograd as the reference.

For tiny SD 1.5, SD 2.1 (v-prediction) and SDXL models, one cached-latents batch, the step's own random
draws (posterior sample, noise, timesteps: reproduced from its key) and the same ControlNet weights (ours,
perturbed, exported to a diffusers folder), proven against examples/controlnet/train_controlnet.py and
train_controlnet_sdxl.py run in float32 PyTorch:
- `diffusion_loss` is their loss, to 1e-5 relative;
- every ControlNet gradient of `jax.value_and_grad` is `loss.backward()`'s, to 1e-4 of its norm;
- two steps of `make_optimizer` (global-norm clip, AdamW) are `clip_grad_norm_` then `torch.optim.AdamW`
  given the same gradients, to 1e-5 on every parameter.
Each check runs for every `VARIANTS` entry: ModelOptions overrides (attention kernel, remat policy...)
that must not change what the step computes.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from diffusers import AutoencoderKL as TorchAutoencoderKL
from diffusers import ControlNetModel as TorchControlNet
from diffusers import DDPMScheduler
from diffusers import UNet2DConditionModel as TorchUNet
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusion_parity import nchw
from flax import nnx
from step_variants import once_per_variant, variant_id

from landmark_controlnet.diffusion import ControlNetModel, ModelOptions
from landmark_controlnet.diffusion.export import save_pretrained
from landmark_controlnet.diffusion.pipeline import StableDiffusion, load_stable_diffusion
from landmark_controlnet.diffusion.weights import torch_state_dict
from landmark_controlnet.training.models import (
    Graphs,
    controlnet_from_unet,
    controlnet_options,
    split_models,
)
from landmark_controlnet.training.step import LossConfig, diffusion_loss, make_optimizer
from landmark_controlnet.training.tiny_sd import write_tiny_sd

# ModelOptions overrides for the frozen models and the ControlNet alike: none may change the numbers.
# The default scans SDXL's stacked transformer layers; {"scan_layers": False} unrolls them.
VARIANTS: list[dict[str, Any]] = [
    {},
    {"attention": "xla"},
    {"attention": "splash"},  # Pallas splash attention, in interpret mode on CPU
    {"remat": "blocks"},
    {"remat": "layers"},
    {"remat": "dots"},
    {"scan_layers": False},
]
MODELS = {"sd15": {}, "sd21": {"sd2": True}, "sdxl": {"sdxl": True}}  # write_tiny_sd's arguments

LOSS_TOLERANCE = 1e-5  # relative
# Per gradient tensor, ||ours - torch|| / ||torch||: stricter than max |ours - torch| / ||torch|| (no
# element of a difference exceeds its norm). Measured: under 1e-5, as PyTorch float32's from float64's.
GRADIENT_TOLERANCE = 1e-4
# A gradient this small next to the global norm is zero by construction, and float32 rounding noise
# in both: a per-channel shift (conv1's bias, the time embedding) before a GroupNorm with one channel
# per group, which subtracts it again. These must be zero in ours too; they cannot be compared.
ZERO_GRADIENT = 1e-6
ZERO_BY_CONSTRUCTION = re.compile(r"resnets\.\d+\.(conv1\.bias|time_emb_proj\.(weight|bias))$")
PARAMETER_TOLERANCE = 1e-5  # absolute, after each optimiser step (which moves elements by ~ the lr)

# 128 px: the tiny SD's deepest level is then 2x2 latents. At 1x1 (64 px) the mid block's self-attention
# has one token, and GroupNorm over two values is a sign, whose exact gradient is zero: the float32
# rounding it passes back instead made even PyTorch's gradients 1e-4 away from its own float64 ones.
BATCH, PIXELS, TEXT_TOKENS = 2, 128, 77
STEP_KEY = jax.random.PRNGKey(7)
CONTROLNET_SEED, PERTURB_SEED, BATCH_SEED = 0, 1, 2
PERTURBATION = 0.02  # as tiny_models.perturb
SDXL_TIME_IDS = [[64, 64, 0, 0, 128, 128], [160, 96, 8, 4, 128, 128]]  # original size, crop, target
# Unoptimised XLA CPU code (the legacy fusion emitters too) computes the same numbers and compiles the
# backward pass in a third of the time.
FAST_COMPILE = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
    "xla_cpu_use_fusion_emitters": False,
}
OPTIMIZER_STEPS = 2  # Adam's first step is about g / |g| whatever the betas: a second step tells them


@dataclass(frozen=True)
class AdamW:
    """train_controlnet.py's defaults, but a learning rate that makes a step (weight decay included:
    lr x 1e-2 x the weight) stand well above PARAMETER_TOLERANCE, and a gradient norm limit that clips
    the tiny models' gradients (norms 0.2 to 0.7)."""

    learning_rate: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 1e-2
    max_grad_norm: float = 0.1

    def ours(self) -> optax.GradientTransformation:
        schedule = optax.constant_schedule(self.learning_rate)
        return make_optimizer(schedule, self.betas, self.eps, self.weight_decay, self.max_grad_norm)

    def torch(self, parameters: list[torch.nn.Parameter]) -> torch.optim.AdamW:
        return torch.optim.AdamW(
            parameters, lr=self.learning_rate, betas=self.betas, eps=self.eps, weight_decay=self.weight_decay
        )


OPTIMIZER = AdamW()


def frozen_options(overrides: dict[str, Any]) -> ModelOptions:
    """What `load_base_model` gives the frozen models in float32, with `overrides`."""
    return dataclasses.replace(ModelOptions(dtype=jnp.float32, param_dtype=jnp.float32), **overrides)


def trained_options(overrides: dict[str, Any]) -> ModelOptions:
    """What `controlnet_options` gives the ControlNet in float32, with `overrides`."""
    return dataclasses.replace(controlnet_options(jnp.float32), **overrides)


@dataclass
class Ours:
    """Our step's inputs but the batch: the models' graphs, frozen weights and ControlNet weights."""

    sd: StableDiffusion
    controlnet_config: Any
    graphs: Graphs
    frozen: dict[str, Any]
    params: Any


def load_ours(folder: Path) -> Ours:
    """The frozen models and a ControlNet made from their UNet, as the trainer builds them, the
    ControlNet perturbed: its zero-initialised output convolutions would hide everything else."""
    sd = load_stable_diffusion(folder, options=frozen_options({}))
    controlnet = controlnet_from_unet(sd.unet, CONTROLNET_SEED, trained_options({}))
    graphs, frozen, params = split_models(sd, controlnet)
    frozen["noise_schedule"] = sd.noise_schedule
    return Ours(sd, controlnet.config, graphs, frozen, perturbed(params, PERTURB_SEED))


def perturbed(params: Any, seed: int) -> Any:
    """tiny_models.perturb's noise, drawn by numpy: JAX's eager draws compile once per weight shape."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: p + PERTURBATION * rng.standard_normal(p.shape, np.float32), params)


def with_options(ours: Ours, folder: Path, overrides: dict[str, Any]) -> Ours:
    """The same weights in models built with `overrides`: their graphs, from the configs alone."""
    sd = load_stable_diffusion(folder, options=frozen_options(overrides), abstract=True)
    controlnet = ControlNetModel.abstract(ours.controlnet_config, trained_options(overrides))
    graphs, _, _ = split_models(sd, controlnet)
    return dataclasses.replace(ours, graphs=graphs)


def make_batch(sd: StableDiffusion) -> dict[str, jax.Array]:
    """A --cache_latents batch: VAE posterior moments, text embeddings (SDXL: pooled and size ids),
    and the conditioning image as the loader sends it, 8-bit."""
    rng = np.random.default_rng(BATCH_SEED)
    latent_size = PIXELS // sd.vae.config.downscale
    batch = {
        "latent_moments": rng.standard_normal(
            (BATCH, latent_size, latent_size, 2 * sd.vae.config.latent_channels)
        ),
        "text_embeddings": rng.standard_normal((BATCH, TEXT_TOKENS, sd.unet.config.cross_attention_dim)),
    }
    if sd.is_sdxl:
        batch["text_embeds"] = rng.standard_normal((BATCH, sd.text_encoder_2.config.projection_dim))
        batch["time_ids"] = np.asarray(SDXL_TIME_IDS)
    batch = {name: jnp.asarray(value, jnp.float32) for name, value in batch.items()}
    conditioning = rng.integers(0, 256, (BATCH, PIXELS, PIXELS, 3))
    return {**batch, "conditioning_pixel_values": jnp.asarray(conditioning, jnp.uint8)}


@dataclass
class Draws:
    """The step's random draws, as `diffusion_loss` makes them from its key."""

    posterior_noise: np.ndarray  # the standard normal of DiagonalGaussian.sample
    noise: np.ndarray
    timesteps: np.ndarray


def step_draws(sd: StableDiffusion, batch: dict[str, jax.Array], key: jax.Array) -> Draws:
    sample_key, noise_key, time_key = jax.random.split(key, 3)
    latent_shape = (*batch["latent_moments"].shape[:-1], sd.vae.config.latent_channels)
    return Draws(
        posterior_noise=np.asarray(jax.random.normal(sample_key, latent_shape)),
        noise=np.asarray(jax.random.normal(noise_key, latent_shape)),
        timesteps=np.asarray(sd.noise_schedule.sample_timesteps(time_key, BATCH)),
    )


# --------------------------------------------------------------------------------------------------
# PyTorch: diffusers' training computation


def load_in_diffusers(torch_class, folder: Path) -> torch.nn.Module:
    """The float32 PyTorch model, every key of the file matched (test_diffusion_export's check; that
    module imports `tests.` paths, which resolve only under `python -m pytest`)."""
    model, info = torch_class.from_pretrained(folder, torch_dtype=torch.float32, output_loading_info=True)
    unmatched = {kind: keys for kind, keys in info.items() if keys}
    assert not unmatched, f"{folder}: diffusers reports {unmatched}"
    return model


def to_torch(array: Any, channels_first: bool = False) -> torch.Tensor:
    """A PyTorch tensor of a JAX or numpy array; `channels_first`: NHWC -> NCHW."""
    return torch.from_numpy(np.array(nchw(array) if channels_first else array))


@dataclass
class Reference:
    """diffusers' step: its loss, the loss against the noise (differs for v-prediction), the ControlNet's
    weights and gradients by PyTorch key."""

    loss: float
    epsilon_target_loss: float
    prediction_type: str
    weights: dict[str, np.ndarray]
    gradients: dict[str, np.ndarray]

    @property
    def global_norm(self) -> float:
        return float(np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in self.gradients.values())))

    def zero_gradients(self) -> list[str]:
        """The keys of the gradients that are zero by construction (see ZERO_GRADIENT)."""
        limit = ZERO_GRADIENT * self.global_norm
        return [key for key, gradient in self.gradients.items() if np.linalg.norm(gradient) < limit]


def diffusers_step(folder: Path, controlnet_folder: Path, batch: dict, draws: Draws) -> Reference:
    """train_controlnet(_sdxl).py's loss in float32: the latents sampled from the posterior and scaled,
    noised by the DDPM scheduler, the ControlNet's residuals added in the UNet, MSE against the noise or
    the velocity; then `loss.backward()`."""
    unet = load_in_diffusers(TorchUNet, folder / "unet").requires_grad_(False)
    controlnet = load_in_diffusers(TorchControlNet, controlnet_folder).train()
    scheduler = DDPMScheduler.from_pretrained(folder / "scheduler")
    scaling_factor = TorchAutoencoderKL.load_config(folder / "vae")["scaling_factor"]
    posterior = DiagonalGaussianDistribution(to_torch(batch["latent_moments"], channels_first=True))
    latents = (posterior.mean + posterior.std * to_torch(draws.posterior_noise, True)) * scaling_factor
    noise, timesteps = to_torch(draws.noise, True), to_torch(draws.timesteps).long()
    noisy_latents = scheduler.add_noise(latents, noise, timesteps)
    text = to_torch(batch["text_embeddings"])
    added = None
    if "time_ids" in batch:
        added = {"text_embeds": to_torch(batch["text_embeds"]), "time_ids": to_torch(batch["time_ids"])}
    # transforms.ToTensor() of the 8-bit conditioning image: [0, 1].
    conditioning = to_torch(batch["conditioning_pixel_values"], True).to(torch.get_default_dtype()) / 255
    down_residuals, mid_residual = controlnet(
        noisy_latents,
        timesteps,
        encoder_hidden_states=text,
        controlnet_cond=conditioning,
        added_cond_kwargs=added,
        return_dict=False,
    )
    prediction = unet(
        noisy_latents,
        timesteps,
        encoder_hidden_states=text,
        added_cond_kwargs=added,
        down_block_additional_residuals=down_residuals,
        mid_block_additional_residual=mid_residual,
        return_dict=False,
    )[0]
    prediction_type = scheduler.config.prediction_type
    target = scheduler.get_velocity(latents, noise, timesteps) if prediction_type == "v_prediction" else noise
    loss = torch.nn.functional.mse_loss(prediction.float(), target.float(), reduction="mean")
    epsilon_target_loss = torch.nn.functional.mse_loss(prediction.float(), noise.float(), reduction="mean")
    weights = tensors(controlnet, lambda p: p)
    loss.backward()
    gradients = tensors(controlnet, lambda p: p.grad)
    return Reference(loss.item(), epsilon_target_loss.item(), prediction_type, weights, gradients)


def tensors(model: torch.nn.Module, of) -> dict[str, np.ndarray]:
    return {name: of(p).detach().numpy().copy() for name, p in model.named_parameters()}


def torch_adamw(start: dict[str, np.ndarray], gradients: list[dict[str, np.ndarray]]) -> list[dict]:
    """The parameters after each step of train_controlnet.py's optimisation, fed `gradients`:
    `clip_grad_norm_` then `AdamW.step()`."""
    parameters = {key: torch.nn.Parameter(torch.from_numpy(value.copy())) for key, value in start.items()}
    optimizer = OPTIMIZER.torch(list(parameters.values()))
    after = []
    for step_gradients in gradients:
        for key, parameter in parameters.items():
            parameter.grad = torch.from_numpy(step_gradients[key].copy())
        norm = torch.nn.utils.clip_grad_norm_(list(parameters.values()), OPTIMIZER.max_grad_norm)
        assert norm > OPTIMIZER.max_grad_norm, f"gradient norm {norm:.3g}: the clipping is not exercised"
        optimizer.step()
        optimizer.zero_grad()
        after.append({key: parameter.detach().numpy().copy() for key, parameter in parameters.items()})
    return after


# --------------------------------------------------------------------------------------------------
# Ours


@dataclass
class OurSteps:
    """`OPTIMIZER_STEPS` steps of ours on one batch, by PyTorch key in PyTorch layout (the export's
    mapping): the first step's loss, each step's gradients, the parameters before and after each."""

    loss: float
    gradients: list[dict[str, np.ndarray]]
    parameters: list[dict[str, np.ndarray]]


def run_our_steps(ours: Ours, batch: dict[str, jax.Array], seen: dict[str, OurSteps]) -> OurSteps:
    """`seen`: results by program text. A variant that lowers to a program already run on the same
    inputs (on CPU every attention kernel is XLA's) computes the same numbers: it is not run again."""
    optimizer = OPTIMIZER.ours()

    def train_step(params, opt_state, frozen, batch):
        loss, gradients = jax.value_and_grad(diffusion_loss)(
            params, frozen, batch, STEP_KEY, ours.graphs, LossConfig()
        )
        updates, opt_state = optimizer.update(gradients, opt_state, params)
        return loss, gradients, optax.apply_updates(params, updates), opt_state

    params, opt_state = ours.params, optimizer.init(ours.params)
    with jax.default_matmul_precision("float32"):  # no TF32 / bf16 passes on an accelerator
        lowered = jax.jit(train_step).lower(params, opt_state, ours.frozen, batch)
    program = lowered.as_text()
    if program in seen:
        return seen[program]
    compiled = lowered.compile(FAST_COMPILE)
    losses, gradients, parameters = [], [], [as_torch_tensors(ours, params)]
    for _ in range(OPTIMIZER_STEPS):
        loss, step_gradients, params, opt_state = compiled(params, opt_state, ours.frozen, batch)
        losses.append(float(loss))
        gradients.append(as_torch_tensors(ours, step_gradients))
        parameters.append(as_torch_tensors(ours, params))
    seen[program] = OurSteps(losses[0], gradients, parameters)
    return seen[program]


def as_torch_tensors(ours: Ours, controlnet_tree: Any) -> dict[str, np.ndarray]:
    """A tree shaped like the ControlNet's weights, under the keys and in the layouts the export writes."""
    return torch_state_dict(nnx.merge(ours.graphs.controlnet, controlnet_tree))


# --------------------------------------------------------------------------------------------------
# Fixtures and tests


@dataclass
class Case:
    """One tiny model: its folder, our step's inputs, the batch and diffusers' step on them."""

    folder: Path
    ours: Ours
    batch: dict[str, jax.Array]
    reference: Reference


@pytest.fixture(scope="module", params=list(MODELS))
def case(request, tmp_path_factory) -> Case:
    name = request.param
    folder = write_tiny_sd(tmp_path_factory.mktemp(name) / f"tiny-{name}", **MODELS[name])
    ours = load_ours(folder)
    batch = make_batch(ours.sd)
    controlnet_folder = folder.parent / "controlnet"
    save_pretrained(nnx.merge(ours.graphs.controlnet, ours.params), controlnet_folder)
    reference = diffusers_step(folder, controlnet_folder, batch, step_draws(ours.sd, batch, STEP_KEY))
    return Case(folder, ours, batch, reference)


@pytest.fixture(scope="module")
def our_steps():
    """`our_steps(case, overrides)`: our steps for that model and variant, run once for every test."""
    seen: dict[Path, dict[str, OurSteps]] = {}

    def run(case: Case, overrides: dict[str, Any]) -> OurSteps:
        ours = with_options(case.ours, case.folder, overrides)
        return run_our_steps(ours, case.batch, seen.setdefault(case.folder, {}))

    return once_per_variant(run)


@pytest.mark.parametrize("overrides", VARIANTS, ids=variant_id)
def test_loss_is_diffusers_loss(case, our_steps, overrides):
    ours = our_steps(case, overrides)
    assert ours.loss == pytest.approx(case.reference.loss, rel=LOSS_TOLERANCE)


@pytest.mark.parametrize("overrides", VARIANTS, ids=variant_id)
def test_controlnet_gradients_are_pytorch_autograd(case, our_steps, overrides):
    ours, theirs = our_steps(case, overrides), case.reference
    assert sorted(ours.parameters[0]) == sorted(theirs.weights), "the export's keys are not diffusers'"
    for key, weight in theirs.weights.items():  # what diffusers loaded is what we differentiate
        np.testing.assert_array_equal(ours.parameters[0][key], weight, err_msg=key)
    zero = theirs.zero_gradients()
    unexplained = [key for key in zero if not ZERO_BY_CONSTRUCTION.search(key)]
    assert not unexplained, f"zero gradients, the comparison would prove nothing for them: {unexplained}"
    for key in zero:
        assert np.linalg.norm(ours.gradients[0][key]) < ZERO_GRADIENT * theirs.global_norm, key
    errors = {
        key: np.linalg.norm(ours.gradients[0][key] - reference) / np.linalg.norm(reference)
        for key, reference in theirs.gradients.items()
        if key not in zero
    }
    failing = {key: f"{error:.3g}" for key, error in errors.items() if error > GRADIENT_TOLERANCE}
    assert not failing, f"||ours - torch|| / ||torch|| > {GRADIENT_TOLERANCE}: {failing}"


@pytest.mark.parametrize("overrides", VARIANTS, ids=variant_id)
def test_optimizer_steps_are_clip_grad_norm_then_torch_adamw(case, our_steps, overrides):
    ours = our_steps(case, overrides)
    theirs = torch_adamw(ours.parameters[0], ours.gradients)
    for step, (mine, reference) in enumerate(zip(ours.parameters[1:], theirs, strict=True), 1):
        errors = {key: np.abs(mine[key] - value).max() for key, value in reference.items()}
        failing = {key: f"{error:.3g}" for key, error in errors.items() if error > PARAMETER_TOLERANCE}
        assert not failing, f"step {step}: max |ours - torch| > {PARAMETER_TOLERANCE}: {failing}"
    # Adam moves each element by about the learning rate, but where the gradient is below its eps.
    moved = {key: np.abs(value - ours.parameters[0][key]).max() for key, value in theirs[0].items()}
    zero = case.reference.zero_gradients()
    barely = [key for key, change in moved.items() if change < 10 * PARAMETER_TOLERANCE and key not in zero]
    assert not barely, f"a step barely moved these, the comparison would prove little: {barely}"


def test_the_loss_target_is_the_one_the_scheduler_names(case):
    """So that the loss comparison can fail: for SD 2.1 the noise would give another loss."""
    reference = case.reference
    if reference.prediction_type == "epsilon":
        assert reference.loss == reference.epsilon_target_loss
    else:
        assert reference.prediction_type == "v_prediction"
        difference = abs(reference.loss - reference.epsilon_target_loss)
        assert difference > 1e-2 * reference.loss, "the noise target would pass too"
