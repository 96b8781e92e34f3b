"""Noise schedules and samplers of Stable Diffusion, in JAX: the project's own DDPM/DDIM/DPM-Solver++.

They are read from a diffusers `scheduler/scheduler_config.json` dict and match diffusers' PyTorch
`DDPMScheduler` (training), `DDIMScheduler` and `DPMSolverMultistepScheduler` (sampling) step for step.

Training::

    schedule = NoiseSchedule.from_config(config)           # a pytree: pass it through jax.jit
    noisy = schedule.add_noise(latents, noise, timesteps)  # timesteps: (batch,) ints
    loss = ((model(noisy, timesteps) - schedule.training_target(latents, noise, timesteps)) ** 2).mean()

Sampling. A sampler is built from the config once; `plan(num_steps)` computes, in numpy, the timesteps
and every per-step coefficient; `plan.step` is a pure function of (state, model output, step index,
latents) that jits, and runs in a Python loop or in `jax.lax.scan` (the index may be traced)::

    plan = DDIMSampler.from_config(config).plan(50)        # or DPMSolverMultistepSampler
    latents = noise * plan.init_noise_sigma
    state = plan.init(latents)                             # DDIM with eta > 0: plan.init(latents, key)
    for i, t in enumerate(plan.timesteps):
        latents, state = plan.step(state, unet(latents, t), i, latents)

or `sample(plan, denoise_fn, latents)`, which is that loop (`use_scan=True`: the same in `lax.scan`).
The model input is the latents themselves (both samplers' `scale_model_input` is the identity).

Config keys each consumer reads are validated: a value that would change the math in a way this
module does not implement (say `thresholding: true` or `beta_schedule: "nonsense"`) raises
`SchedulerConfigError` (a `ValueError`) naming the key; so does a key no diffusers DDPM-family
scheduler has. Keys of other schedulers that cannot change these (PNDM's `skip_prk_steps`, a DPM key
given to DDIM) are ignored, as diffusers' `from_config` ignores them. One deliberate difference:
DDIM's `clip_sample` defaults to False here (True in diffusers), because clipping predicted latents to
[-1, 1] breaks latent diffusion; Stable Diffusion's configs all say `clip_sample: false` anyway.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from landmark_controlnet.diffusion.config import UnsupportedConfigError

__all__ = [
    "DDIMPlan",
    "DDIMSampler",
    "DDIMState",
    "DPMSolverMultistepSampler",
    "DPMSolverPlan",
    "DPMSolverState",
    "NoiseSchedule",
    "SamplingPlan",
    "SchedulerConfigError",
    "sample",
]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
KARRAS_RHO = 7.0  # Karras et al. 2022, eq. 5


class SchedulerConfigError(UnsupportedConfigError, ValueError):
    """A scheduler config key holds a value this module does not implement."""


# ---------------------------------------------------------------------------------------------------
# Config reading


@dataclasses.dataclass(frozen=True)
class _Key:
    """One config key: its default and, when only some values are implemented, those values."""

    default: Any
    allowed: tuple[Any, ...] | None = None


_SCHEDULE_KEYS: dict[str, _Key] = {
    "num_train_timesteps": _Key(1000),
    "beta_start": _Key(0.0001),
    "beta_end": _Key(0.02),
    "beta_schedule": _Key("linear", ("linear", "scaled_linear", "squaredcos_cap_v2")),
    "trained_betas": _Key(None),
    "prediction_type": _Key("epsilon", PREDICTION_TYPES),
    "rescale_betas_zero_snr": _Key(False, (False,)),
    # DDPM's own sampling variance; "learned" would mean a UNet that also predicts it (2x channels).
    "variance_type": _Key(None, (None, "fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log")),
}
_DDIM_KEYS: dict[str, _Key] = {
    **_SCHEDULE_KEYS,
    "clip_sample": _Key(False, (False, True)),
    "clip_sample_range": _Key(1.0),
    "set_alpha_to_one": _Key(True, (False, True)),
    "steps_offset": _Key(0),
    "timestep_spacing": _Key("leading", TIMESTEP_SPACINGS),
    "thresholding": _Key(False, (False,)),
}
_DPM_KEYS: dict[str, _Key] = {
    **_SCHEDULE_KEYS,
    "solver_order": _Key(2, (1, 2)),
    "algorithm_type": _Key("dpmsolver++", ("dpmsolver++",)),
    "solver_type": _Key("midpoint", ("midpoint", "heun")),
    "lower_order_final": _Key(True, (False, True)),
    "euler_at_final": _Key(False, (False, True)),
    "use_karras_sigmas": _Key(False, (False, True)),
    "use_exponential_sigmas": _Key(False, (False,)),
    "use_beta_sigmas": _Key(False, (False,)),
    "use_lu_lambdas": _Key(False, (False,)),
    "use_flow_sigmas": _Key(False, (False,)),
    "use_dynamic_shifting": _Key(False, (False,)),
    "final_sigmas_type": _Key("zero", ("zero", "sigma_min")),
    "lambda_min_clipped": _Key(-math.inf),
    "steps_offset": _Key(0),
    "timestep_spacing": _Key("linspace", TIMESTEP_SPACINGS),
    "thresholding": _Key(False, (False,)),
}
# Keys that cannot change these schedules: bookkeeping, other schedulers' sampling options, and
# options that only act together with a flag validated above (thresholding, flow sigmas).
_IGNORED_KEYS = frozenset(
    {
        "_class_name",
        "_diffusers_version",
        "skip_prk_steps",
        "interpolation_type",
        "timestep_type",
        "sigma_min",
        "sigma_max",
        "dynamic_thresholding_ratio",
        "sample_max_value",
        "flow_shift",
        "time_shift_type",
    }
)
_ALL_KEYS = frozenset(_SCHEDULE_KEYS) | frozenset(_DDIM_KEYS) | frozenset(_DPM_KEYS) | _IGNORED_KEYS


def _read_config(config: Mapping[str, Any], keys: Mapping[str, _Key]) -> dict[str, Any]:
    """The values of `keys` in `config` (defaults where absent), validated."""
    for key in config:
        if key not in _ALL_KEYS:
            raise SchedulerConfigError(f"scheduler config key {key!r} is not a key this project understands")
    values = {name: config.get(name, spec.default) for name, spec in keys.items()}
    for name, spec in keys.items():
        if spec.allowed is not None and values[name] not in spec.allowed:
            raise SchedulerConfigError(
                f"scheduler config {name}={values[name]!r} is not supported (supported: {list(spec.allowed)})"
            )
    if values["num_train_timesteps"] < 1:
        raise SchedulerConfigError(f"scheduler config num_train_timesteps={values['num_train_timesteps']!r}")
    return values


def _cosine_betas(num_train_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """The "squaredcos_cap_v2" betas (Nichol & Dhariwal 2021): alpha_bar is a squared cosine."""

    def alpha_bar(t: np.ndarray) -> np.ndarray:
        return np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2

    t = np.arange(num_train_timesteps, dtype=np.float64) / num_train_timesteps
    ratio = alpha_bar(t + 1.0 / num_train_timesteps) / alpha_bar(t)
    return np.minimum(1.0 - ratio, max_beta)


def _betas(values: Mapping[str, Any]) -> np.ndarray:
    """The training betas in float64."""
    count = int(values["num_train_timesteps"])
    if values["trained_betas"] is not None:
        betas = np.asarray(values["trained_betas"], dtype=np.float64)
        if betas.shape != (count,):
            raise SchedulerConfigError(f"scheduler config trained_betas: shape {betas.shape}, not ({count},)")
        return betas
    start, end = float(values["beta_start"]), float(values["beta_end"])
    if values["beta_schedule"] == "linear":
        return np.linspace(start, end, count, dtype=np.float64)
    if values["beta_schedule"] == "scaled_linear":  # linear in sqrt(beta): Stable Diffusion's
        return np.linspace(start**0.5, end**0.5, count, dtype=np.float64) ** 2
    return _cosine_betas(count)


def _alphas_cumprod(values: Mapping[str, Any]) -> np.ndarray:
    """alpha_bar_t = prod_{s <= t} (1 - beta_s), rounded to float32 and returned as float64.

    Models are trained at float32 noise levels (diffusers' and `NoiseSchedule`'s; the two agree to
    ~5e-7), so the samplers start from those values; the rest of their arithmetic is float64.
    """
    return np.cumprod(1.0 - _betas(values)).astype(np.float32).astype(np.float64)


def _broadcast_to(coefficient: jax.Array, x: jax.Array) -> jax.Array:
    """Per-example coefficients (batch,) -> (batch, 1, ..., 1), to scale latents of any rank."""
    return coefficient.reshape(coefficient.shape + (1,) * (x.ndim - coefficient.ndim))


# ---------------------------------------------------------------------------------------------------
# Training


@dataclasses.dataclass(frozen=True)
class NoiseSchedule:
    """The forward (noising) process of DDPM training: x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) noise.

    A pytree (betas and alphas_cumprod are leaves, the rest static), so it can be a jit argument.
    Timesteps are ints in [0, num_train_timesteps): one per example, (batch,), or a scalar for all.
    """

    betas: jax.Array
    alphas_cumprod: jax.Array
    num_train_timesteps: int
    prediction_type: str

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> NoiseSchedule:
        values = _read_config(config, _SCHEDULE_KEYS)
        betas = _betas(values)
        return cls(
            betas=jnp.asarray(betas, jnp.float32),
            alphas_cumprod=jnp.asarray(_alphas_cumprod(values), jnp.float32),
            num_train_timesteps=int(values["num_train_timesteps"]),
            prediction_type=values["prediction_type"],
        )

    def signal_and_noise_scales(self, timesteps: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(sqrt(a_t), sqrt(1 - a_t)), shaped like `timesteps`."""
        alpha_bar = self.alphas_cumprod[jnp.asarray(timesteps)]
        return jnp.sqrt(alpha_bar), jnp.sqrt(1.0 - alpha_bar)

    def _mix(self, x0: jax.Array, noise: jax.Array, timesteps: jax.Array, sign: float) -> jax.Array:
        """sqrt(a_t) x0 + sign sqrt(1 - a_t) noise, in float32 at least, cast to x0's dtype."""
        signal, noise_scale = self.signal_and_noise_scales(timesteps)
        mixed = _broadcast_to(signal, x0) * x0 + sign * _broadcast_to(noise_scale, x0) * noise
        return mixed.astype(x0.dtype)

    def add_noise(self, x0: jax.Array, noise: jax.Array, timesteps: jax.Array) -> jax.Array:
        """x_t: the clean latents noised to `timesteps`."""
        return self._mix(x0, noise, timesteps, 1.0)

    def velocity(self, x0: jax.Array, noise: jax.Array, timesteps: jax.Array) -> jax.Array:
        """v = sqrt(a_t) noise - sqrt(1 - a_t) x_0 (Salimans & Ho 2022), the v-prediction target."""
        return self._mix(noise, x0, timesteps, -1.0)

    def training_target(self, x0: jax.Array, noise: jax.Array, timesteps: jax.Array) -> jax.Array:
        """What the model learns to predict: the noise, the velocity, or x_0, per `prediction_type`."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "v_prediction":
            return self.velocity(x0, noise, timesteps)
        return x0

    def snr(self, timesteps: jax.Array) -> jax.Array:
        """Signal-to-noise ratio a_t / (1 - a_t), e.g. for min-SNR loss weighting."""
        alpha_bar = self.alphas_cumprod[jnp.asarray(timesteps)]
        return alpha_bar / (1.0 - alpha_bar)

    def sample_timesteps(self, key: jax.Array, batch_size: int) -> jax.Array:
        """Uniform random training timesteps, (batch_size,) int32."""
        return jax.random.randint(key, (batch_size,), 0, self.num_train_timesteps)


jax.tree_util.register_dataclass(
    NoiseSchedule,
    data_fields=["betas", "alphas_cumprod"],
    meta_fields=["num_train_timesteps", "prediction_type"],
)


# ---------------------------------------------------------------------------------------------------
# Sampling: shared pieces


def _predict_x0(
    prediction_type: str, model_output: jax.Array, x: jax.Array, alpha: jax.Array, sigma: jax.Array
) -> jax.Array:
    """The model's clean-sample estimate at a point x = alpha x_0 + sigma eps."""
    if prediction_type == "epsilon":
        return (x - sigma * model_output) / alpha
    if prediction_type == "v_prediction":
        return alpha * x - sigma * model_output
    return model_output


def _predict_epsilon(
    prediction_type: str, model_output: jax.Array, x: jax.Array, alpha: jax.Array, sigma: jax.Array
) -> jax.Array:
    """The model's noise estimate at a point x = alpha x_0 + sigma eps."""
    if prediction_type == "epsilon":
        return model_output
    if prediction_type == "v_prediction":
        return alpha * model_output + sigma * x
    return (x - alpha * model_output) / sigma


def _at(table: np.ndarray | jax.Array, index: int | jax.Array) -> jax.Array:
    """One step's coefficient; `index` may be a tracer (inside lax.scan)."""
    return jnp.asarray(table)[index]


def _check_steps(num_inference_steps: int, num_train_timesteps: int) -> None:
    if not 1 <= num_inference_steps <= num_train_timesteps:
        raise ValueError(f"num_inference_steps={num_inference_steps} must be in [1, {num_train_timesteps}]")


class SamplingPlan(Protocol):
    """What `sample` and pipelines use of a plan (DDIMPlan, DPMSolverPlan)."""

    timesteps: np.ndarray
    init_noise_sigma: float

    def init(self, latents: jax.Array, key: jax.Array | None = None) -> Any: ...

    def step(
        self, state: Any, model_output: jax.Array, index: int | jax.Array, latents: jax.Array
    ) -> tuple[jax.Array, Any]: ...


def sample(
    plan: SamplingPlan,
    denoise_fn: Callable[[jax.Array, jax.Array], jax.Array],
    latents: jax.Array,
    *,
    key: jax.Array | None = None,
    use_scan: bool = False,
) -> jax.Array:
    """Run every step of `plan` from `latents` (already scaled by init_noise_sigma).

    `denoise_fn(latents, timestep)` returns the model output (classifier-free guidance included);
    the timestep is an int32 scalar array. `use_scan` runs the loop in `jax.lax.scan` (one trace of
    denoise_fn, which must then be traceable); otherwise a Python loop calls denoise_fn as it is
    (jitted or not) and a jitted step, compiled once for every step (the index is traced).
    """
    state = plan.init(latents, key)
    timesteps = jnp.asarray(plan.timesteps, jnp.int32)
    if not use_scan:
        step = jax.jit(plan.step)
        for index in range(len(plan.timesteps)):
            output = denoise_fn(latents, timesteps[index])
            latents, state = step(state, output, jnp.asarray(index, jnp.int32), latents)
        return latents

    def body(carry: tuple[jax.Array, Any], index: jax.Array) -> tuple[tuple[jax.Array, Any], None]:
        x, carried = carry
        return plan.step(carried, denoise_fn(x, timesteps[index]), index, x), None

    (latents, _), _ = jax.lax.scan(body, (latents, state), jnp.arange(len(plan.timesteps)))
    return latents


def _register_plan(cls: type, meta_fields: Sequence[str]) -> type:
    """A plan is a pytree: its coefficient tables are leaves, its options static."""
    data = [f.name for f in dataclasses.fields(cls) if f.name not in meta_fields]
    return jax.tree_util.register_dataclass(cls, data_fields=data, meta_fields=list(meta_fields))


# ---------------------------------------------------------------------------------------------------
# DDIM


class DDIMState(NamedTuple):
    """DDIM carries nothing between steps but, when eta > 0, the random key of its fresh noise."""

    key: jax.Array | None = None


@dataclasses.dataclass(frozen=True, eq=False)  # holds arrays: identity, not ==
class DDIMPlan:
    """DDIM (Song et al. 2021) over fixed timesteps; per-step tables, index i = step i.

    x_prev = alpha_prev x0_hat + direction eps_hat + noise_std z, where (alpha, sigma) are the signal
    and noise scales at timesteps[i] and alpha_prev the signal scale at the step DDIM goes to.
    """

    timesteps: np.ndarray
    alpha: np.ndarray
    sigma: np.ndarray
    alpha_prev: np.ndarray
    direction: np.ndarray
    noise_std: np.ndarray
    prediction_type: str
    clip_sample: bool
    clip_sample_range: float
    stochastic: bool
    init_noise_sigma: float = 1.0

    def init(self, latents: jax.Array, key: jax.Array | None = None) -> DDIMState:
        if self.stochastic and key is None:
            raise ValueError("DDIM with eta > 0 draws noise: pass a PRNG key to init")
        return DDIMState(key if self.stochastic else None)

    def update(
        self,
        model_output: jax.Array,
        index: int | jax.Array,
        latents: jax.Array,
        noise: jax.Array | None = None,
    ) -> jax.Array:
        """One DDIM step; `noise` is scaled by noise_std, which is 0 when eta = 0."""
        alpha, sigma = _at(self.alpha, index), _at(self.sigma, index)
        x0 = _predict_x0(self.prediction_type, model_output, latents, alpha, sigma)
        epsilon = _predict_epsilon(self.prediction_type, model_output, latents, alpha, sigma)
        if self.clip_sample:  # epsilon stays the model's, as in diffusers without use_clipped_model_output
            x0 = jnp.clip(x0, -self.clip_sample_range, self.clip_sample_range)
        previous = _at(self.alpha_prev, index) * x0 + _at(self.direction, index) * epsilon
        if noise is not None:  # None: the step's mean
            previous = previous + _at(self.noise_std, index) * noise
        return previous.astype(latents.dtype)

    def step(
        self, state: DDIMState, model_output: jax.Array, index: int | jax.Array, latents: jax.Array
    ) -> tuple[jax.Array, DDIMState]:
        if not self.stochastic:
            return self.update(model_output, index, latents), state
        key, noise_key = jax.random.split(state.key)
        noise = jax.random.normal(noise_key, latents.shape, jnp.float32)
        return self.update(model_output, index, latents, noise), DDIMState(key)


_register_plan(
    DDIMPlan, ["prediction_type", "clip_sample", "clip_sample_range", "stochastic", "init_noise_sigma"]
)


def _ddim_timesteps(spacing: str, num_steps: int, num_train: int, steps_offset: int) -> np.ndarray:
    """diffusers' DDIMScheduler.set_timesteps (the spacings: Lin et al. 2023, table 2)."""
    if spacing == "linspace":
        return np.linspace(0, num_train - 1, num_steps).round()[::-1].astype(np.int64)
    if spacing == "leading":
        return np.arange(num_steps, dtype=np.int64)[::-1] * (num_train // num_steps) + steps_offset
    return np.round(np.arange(num_train, 0, -num_train / num_steps)).astype(np.int64) - 1


@dataclasses.dataclass(frozen=True, eq=False)  # holds arrays: identity, not ==
class DDIMSampler:
    """diffusers' DDIMScheduler: `DDIMSampler.from_config(config).plan(num_steps, eta)`."""

    alphas_cumprod: np.ndarray
    prediction_type: str
    clip_sample: bool
    clip_sample_range: float
    set_alpha_to_one: bool
    steps_offset: int
    timestep_spacing: str
    init_noise_sigma: float = 1.0

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> DDIMSampler:
        values = _read_config(config, _DDIM_KEYS)
        return cls(
            alphas_cumprod=_alphas_cumprod(values),
            prediction_type=values["prediction_type"],
            clip_sample=bool(values["clip_sample"]),
            clip_sample_range=float(values["clip_sample_range"]),
            set_alpha_to_one=bool(values["set_alpha_to_one"]),
            steps_offset=int(values["steps_offset"]),
            timestep_spacing=values["timestep_spacing"],
        )

    def plan(self, num_inference_steps: int, eta: float = 0.0) -> DDIMPlan:
        """The timesteps and coefficients of `num_inference_steps` steps; eta=0 is deterministic DDIM."""
        num_train = len(self.alphas_cumprod)
        _check_steps(num_inference_steps, num_train)
        timesteps = _ddim_timesteps(self.timestep_spacing, num_inference_steps, num_train, self.steps_offset)
        # diffusers always steps back by num_train // num_steps, whatever the spacing.
        previous = timesteps - num_train // num_inference_steps
        final = 1.0 if self.set_alpha_to_one else self.alphas_cumprod[0]
        alpha_bar = self.alphas_cumprod[timesteps]
        alpha_bar_prev = np.where(previous >= 0, self.alphas_cumprod[np.maximum(previous, 0)], final)
        variance = (1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)
        noise_std = eta * np.sqrt(variance)
        as_f32 = np.float32
        return DDIMPlan(
            timesteps=timesteps,
            alpha=np.sqrt(alpha_bar).astype(as_f32),
            sigma=np.sqrt(1 - alpha_bar).astype(as_f32),
            alpha_prev=np.sqrt(alpha_bar_prev).astype(as_f32),
            direction=np.sqrt(np.maximum(1 - alpha_bar_prev - noise_std**2, 0.0)).astype(as_f32),
            noise_std=noise_std.astype(as_f32),
            prediction_type=self.prediction_type,
            clip_sample=self.clip_sample,
            clip_sample_range=self.clip_sample_range,
            stochastic=eta > 0,
        )


# ---------------------------------------------------------------------------------------------------
# DPM-Solver++ (multistep, data prediction)


class DPMSolverState(NamedTuple):
    """The previous step's x_0 estimate (zeros before the first step), for the 2nd-order update."""

    previous_x0: jax.Array


@dataclasses.dataclass(frozen=True, eq=False)  # holds arrays: identity, not ==
class DPMSolverPlan:
    """DPM-Solver++ (Lu et al. 2022) over fixed timesteps; per-step tables, index i = step i.

    The model output at step i becomes x0_i (with the scales alpha[i], sigma[i]), then
    x_next = sample_coef x + x0_coef x0_i + previous_x0_coef x0_{i-1}; a first-order step has
    previous_x0_coef = 0. Folding the solver's branches into tables keeps `step` branch-free.
    """

    timesteps: np.ndarray
    alpha: np.ndarray
    sigma: np.ndarray
    sample_coef: np.ndarray
    x0_coef: np.ndarray
    previous_x0_coef: np.ndarray
    order: np.ndarray
    prediction_type: str
    init_noise_sigma: float = 1.0

    def init(self, latents: jax.Array, key: jax.Array | None = None) -> DPMSolverState:
        return DPMSolverState(jnp.zeros(latents.shape, jnp.float32))

    def step(
        self, state: DPMSolverState, model_output: jax.Array, index: int | jax.Array, latents: jax.Array
    ) -> tuple[jax.Array, DPMSolverState]:
        x = latents.astype(jnp.float32)
        alpha, sigma = _at(self.alpha, index), _at(self.sigma, index)
        x0 = _predict_x0(self.prediction_type, model_output, x, alpha, sigma).astype(jnp.float32)
        following = (
            _at(self.sample_coef, index) * x
            + _at(self.x0_coef, index) * x0
            + _at(self.previous_x0_coef, index) * state.previous_x0
        )
        return following.astype(latents.dtype), DPMSolverState(x0)


_register_plan(DPMSolverPlan, ["prediction_type", "init_noise_sigma"])


def _dpm_timesteps(spacing: str, num_steps: int, num_train: int, last: int, steps_offset: int) -> np.ndarray:
    """diffusers' DPMSolverMultistepScheduler.set_timesteps; `last` excludes lambda-clipped timesteps."""
    if spacing == "linspace":
        return np.linspace(0, last - 1, num_steps + 1).round()[::-1][:-1].astype(np.int64)
    if spacing == "leading":
        return np.arange(num_steps + 1, dtype=np.int64)[::-1][:-1] * (last // (num_steps + 1)) + steps_offset
    return np.arange(last, 0, -num_train / num_steps).round().astype(np.int64) - 1


def _karras_sigmas(sigma_min: float, sigma_max: float, num_steps: int) -> np.ndarray:
    """Karras et al. 2022, eq. 5: uniform steps in sigma^(1/rho), from sigma_max down to sigma_min."""
    ramp = np.linspace(0.0, 1.0, num_steps)
    low, high = sigma_min ** (1 / KARRAS_RHO), sigma_max ** (1 / KARRAS_RHO)
    return (high + ramp * (low - high)) ** KARRAS_RHO


def _solver_orders(
    num_steps: int, solver_order: int, lower_order_final: bool, final_first_order: bool
) -> np.ndarray:
    """Which update each step uses: 1st order at the start and (per the options) at the end."""
    orders = np.full(num_steps, solver_order)
    orders[0] = 1
    # Few steps: the final step falls back to first order, which is steadier there.
    if final_first_order or (lower_order_final and num_steps < 15):
        orders[-1] = 1
    return orders


@dataclasses.dataclass(frozen=True, eq=False)  # holds arrays: identity, not ==
class DPMSolverMultistepSampler:
    """diffusers' DPMSolverMultistepScheduler with algorithm_type="dpmsolver++" (DPM-Solver++ 2M)."""

    alphas_cumprod: np.ndarray
    beta_schedule: str
    prediction_type: str
    solver_order: int
    solver_type: str
    lower_order_final: bool
    euler_at_final: bool
    use_karras_sigmas: bool
    final_sigmas_type: str
    lambda_min_clipped: float
    steps_offset: int
    timestep_spacing: str
    init_noise_sigma: float = 1.0

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> DPMSolverMultistepSampler:
        values = _read_config(config, _DPM_KEYS)
        return cls(
            alphas_cumprod=_alphas_cumprod(values),
            beta_schedule=values["beta_schedule"],
            prediction_type=values["prediction_type"],
            solver_order=int(values["solver_order"]),
            solver_type=values["solver_type"],
            lower_order_final=bool(values["lower_order_final"]),
            euler_at_final=bool(values["euler_at_final"]),
            use_karras_sigmas=bool(values["use_karras_sigmas"]),
            final_sigmas_type=values["final_sigmas_type"],
            lambda_min_clipped=float(values["lambda_min_clipped"]),
            steps_offset=int(values["steps_offset"]),
            timestep_spacing=values["timestep_spacing"],
        )

    def _timesteps_and_sigmas(self, num_steps: int) -> tuple[np.ndarray, np.ndarray]:
        """The timesteps, and their sigmas = sqrt((1 - a) / a) (noise-to-signal) then the final sigma."""
        num_train = len(self.alphas_cumprod)
        train_sigmas = np.sqrt((1 - self.alphas_cumprod) / self.alphas_cumprod)
        half_log_snr = -np.log(train_sigmas)  # lambda_t, decreasing in t
        clipped = int(np.searchsorted(half_log_snr[::-1], self.lambda_min_clipped))
        timesteps = _dpm_timesteps(
            self.timestep_spacing, num_steps, num_train, num_train - clipped, self.steps_offset
        )
        if self.use_karras_sigmas:
            sigmas = _karras_sigmas(train_sigmas[0], train_sigmas[-1], num_steps)
            # The (fractional) training timestep of each sigma, by interpolation in log sigma.
            fractional = np.interp(np.log(sigmas), np.log(train_sigmas), np.arange(num_train, dtype=float))
            if self.beta_schedule != "squaredcos_cap_v2":  # diffusers truncates the cosine schedule's
                fractional = fractional.round()
            timesteps = fractional.astype(np.int64)
        else:  # "leading" with steps_offset can reach num_train; diffusers' np.interp clamps it
            sigmas = train_sigmas[np.minimum(timesteps, num_train - 1)]
        final = train_sigmas[0] if self.final_sigmas_type == "sigma_min" else 0.0
        # diffusers keeps sigmas in float32; rounding the same way keeps the coefficients alike.
        return timesteps, np.append(sigmas, final).astype(np.float32).astype(np.float64)

    def plan(self, num_inference_steps: int) -> DPMSolverPlan:
        """The timesteps and update coefficients of `num_inference_steps` steps."""
        _check_steps(num_inference_steps, len(self.alphas_cumprod))
        timesteps, sigmas = self._timesteps_and_sigmas(num_inference_steps)
        count = len(timesteps)
        alphas = 1 / np.sqrt(sigmas**2 + 1)  # the signal scale sqrt(a) of each sigma
        orders = _solver_orders(
            count,
            self.solver_order,
            self.lower_order_final,
            self.euler_at_final or self.final_sigmas_type == "zero",
        )
        # "leading" with steps_offset and >= 500 steps clamps two timesteps to one sigma: the next step's
        # r0 would be 0 (diffusers divides by it and yields NaN); that step is first order here instead.
        orders[1:][sigmas[1:count] == sigmas[: count - 1]] = 1
        sample_coef, x0_coef, previous_coef = np.zeros(count), np.zeros(count), np.zeros(count)
        for i in range(count):
            sample_coef[i], x0_coef[i], previous_coef[i] = self._update_coefficients(
                sigmas, alphas, i, int(orders[i])
            )
        as_f32 = np.float32
        return DPMSolverPlan(
            timesteps=timesteps,
            alpha=alphas[:-1].astype(as_f32),
            sigma=(sigmas * alphas)[:-1].astype(as_f32),
            sample_coef=sample_coef.astype(as_f32),
            x0_coef=x0_coef.astype(as_f32),
            previous_x0_coef=previous_coef.astype(as_f32),
            order=orders,
            prediction_type=self.prediction_type,
        )

    def _update_coefficients(
        self, sigmas: np.ndarray, alphas: np.ndarray, i: int, order: int
    ) -> tuple[float, float, float]:
        """(sample, x0_i, x0_{i-1}) coefficients of step i, from sigma[i] to sigma[i + 1].

        With h = lambda_next - lambda_i (lambda = -log sigma), exp(-h) = sigma_next / sigma_i:
        first order  x' = (s'/s) x - alpha' (e^-h - 1) D0,  D0 = x0_i;
        second order adds the term in D1 = (x0_i - x0_{i-1}) / r0, r0 = h_prev / h (midpoint: -1/2 alpha'
        (e^-h - 1) D1; heun: alpha' ((e^-h - 1) / h + 1) D1).
        """
        ratio = sigmas[i + 1] / sigmas[i]  # exp(-h), also sigma_t ratio times alpha' / alpha
        alpha_next = alphas[i + 1]
        sample_coef = ratio * alphas[i + 1] / alphas[i]
        first = -alpha_next * (ratio - 1.0)
        if order == 1:
            return sample_coef, first, 0.0
        h = np.log(sigmas[i] / sigmas[i + 1])
        r0 = np.log(sigmas[i - 1] / sigmas[i]) / h
        heun = alpha_next * ((ratio - 1.0) / h + 1.0)
        d1_coef = 0.5 * first if self.solver_type == "midpoint" else heun
        return sample_coef, first + d1_coef / r0, -d1_coef / r0
