"""FLUX.1's rectified-flow schedule and Euler sampler (diffusers' `FlowMatchEulerDiscreteScheduler`), in JAX.

The noised latents at noise level sigma in [0, 1] are x = (1 - sigma) x_0 + sigma noise; the model predicts
the velocity v = noise - x_0, and sampling integrates dx/dsigma = v from sigma = 1 down to 0 by Euler steps,
x' = x + (sigma_next - sigma) v. Timesteps are 1000 sigma (floats); FLUX's transformer takes timestep / 1000.

Sampling. `plan` computes the timesteps and sigmas in numpy, as diffusers' `set_timesteps` does (float32);
FLUX.1's pipeline shifts them by the image size (`use_dynamic_shifting`: mu grows linearly with the number
of packed latent tokens, `calculate_shift`), which `flux_plan` does::

    sampler = FlowMatchEulerSampler.from_config(config)           # scheduler/scheduler_config.json
    plan = sampler.flux_plan(28, packed_sequence_length(1024, 1024))
    latents = noise                                                # init_noise_sigma is 1
    for i, t in enumerate(plan.timesteps):
        latents, _ = plan.step(None, transformer(latents, t / 1000), i, latents)

or `sample(plan, velocity_fn, latents)`. `plan.step` is pure and jits; the index may be traced.

Training, as diffusers' `examples/controlnet/train_controlnet_flux.py` draws its noise levels::

    schedule = FlowMatchSchedule.from_config(config)               # a pytree
    u = timestep_density(key, batch, "logit_normal", logit_mean=0.0, logit_std=1.0)
    indices = schedule.indices(u)                                  # (u * 1000) rounded down
    sigmas, timesteps = schedule.sigmas[indices], schedule.timesteps[indices]
    noisy = schedule.add_noise(latents, noise, sigmas)
    loss = loss_weighting(scheme, sigmas) * (prediction - velocity_target(latents, noise)) ** 2

Config keys that would change the math in a way this module does not implement (Karras sigmas,
stochastic sampling, inverted sigmas) raise `SchedulerConfigError`, as does a key the scheduler lacks.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from landmark_controlnet.diffusion.schedulers import SchedulerConfigError

__all__ = [
    "DENSITY_SCHEMES",
    "WEIGHTING_SCHEMES",
    "FlowMatchEulerSampler",
    "FlowMatchPlan",
    "FlowMatchSchedule",
    "calculate_shift",
    "flux_sigmas",
    "loss_weighting",
    "mode_density",
    "packed_sequence_length",
    "sample",
    "timestep_density",
    "velocity_target",
]

# train_controlnet_flux.py's --weighting_scheme: one value picks both the density of the noise levels
# (logit_normal, mode; the others uniform) and the loss weighting (sigma_sqrt, cosmap; the others none).
WEIGHTING_SCHEMES = ("sigma_sqrt", "logit_normal", "mode", "cosmap", "none", "uniform")
DENSITY_SCHEMES = ("logit_normal", "mode")

# key -> (default, the values implemented or None for any)
_KEYS: dict[str, tuple[Any, tuple[Any, ...] | None]] = {
    "num_train_timesteps": (1000, None),
    "shift": (1.0, None),
    "use_dynamic_shifting": (False, (False, True)),
    "base_shift": (0.5, None),
    "max_shift": (1.15, None),
    "base_image_seq_len": (256, None),
    "max_image_seq_len": (4096, None),
    "time_shift_type": ("exponential", ("exponential", "linear")),
    "shift_terminal": (None, None),
    "invert_sigmas": (False, (False,)),
    "use_karras_sigmas": (False, (False,)),
    "use_exponential_sigmas": (False, (False,)),
    "use_beta_sigmas": (False, (False,)),
    "stochastic_sampling": (False, (False,)),
}
_IGNORED_KEYS = frozenset({"_class_name", "_diffusers_version"})


def _read_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Every key's value (defaults where absent), validated."""
    for key in config:
        if key not in _KEYS and key not in _IGNORED_KEYS:
            raise SchedulerConfigError(
                f"flow-match scheduler config key {key!r} is not one this project knows"
            )
    values = {key: config.get(key, default) for key, (default, _) in _KEYS.items()}
    for key, (_, allowed) in _KEYS.items():
        if allowed is not None and values[key] not in allowed:
            raise SchedulerConfigError(
                f"scheduler config {key}={values[key]!r} is not supported (supported: {list(allowed)})"
            )
    if int(values["num_train_timesteps"]) < 1:
        raise SchedulerConfigError(f"scheduler config num_train_timesteps={values['num_train_timesteps']!r}")
    return values


def _shifted(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """The static shift (SD3's shift=3): sigma -> shift sigma / (1 + (shift - 1) sigma), 1 stays 1."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def _training_sigmas(num_train: int, shift: float, dynamic: bool) -> np.ndarray:
    """diffusers' table at construction, float32: 1, (N-1)/N, ..., 1/N, statically shifted unless the
    shift is dynamic (applied per resolution when sampling)."""
    sigmas = np.linspace(1, num_train, num_train, dtype=np.float32)[::-1] / np.float32(num_train)
    return sigmas if dynamic else _shifted(sigmas, shift).astype(np.float32)


def calculate_shift(
    image_seq_len: int,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """FLUX.1's mu: linear in the number of packed latent tokens, base_shift at base_seq_len and
    max_shift at max_seq_len (extrapolated beyond)."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * slope + base_shift - slope * base_seq_len


def packed_sequence_length(height: int, width: int, vae_scale_factor: int = 8) -> int:
    """The packed latent tokens of a FLUX.1 image: one per 2x2 latent patch (16x16 pixels)."""
    patch = vae_scale_factor * 2
    return (height // patch) * (width // patch)


def flux_sigmas(num_inference_steps: int) -> np.ndarray:
    """The sigmas FLUX.1's pipeline passes before shifting: evenly spaced from 1 to 1/num_steps."""
    return np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)


@dataclasses.dataclass(frozen=True, eq=False)  # holds arrays: identity, not ==
class FlowMatchPlan:
    """The Euler steps of one sampling run: step i goes from sigmas[i] to sigmas[i + 1] (the last is 0).

    A pytree (the tables are leaves). It carries no state between steps: `init` gives None.
    """

    timesteps: np.ndarray
    sigmas: np.ndarray
    init_noise_sigma: float = 1.0

    def init(self, latents: jax.Array, key: jax.Array | None = None) -> None:
        return None

    def step(
        self, state: None, model_output: jax.Array, index: int | jax.Array, latents: jax.Array
    ) -> tuple[jax.Array, None]:
        """x + (sigma_next - sigma) v, in float32, cast back to the latents' dtype (a scan carry keeps
        its dtype; diffusers casts to the model output's, the same in float32)."""
        sigmas = jnp.asarray(self.sigmas)
        step_size = sigmas[index + 1] - sigmas[index]
        following = latents.astype(jnp.float32) + step_size * model_output.astype(jnp.float32)
        return following.astype(latents.dtype), state


jax.tree_util.register_dataclass(
    FlowMatchPlan, data_fields=["timesteps", "sigmas"], meta_fields=["init_noise_sigma"]
)


@dataclasses.dataclass(frozen=True, eq=False)  # holds arrays: identity, not ==
class FlowMatchEulerSampler:
    """diffusers' FlowMatchEulerDiscreteScheduler (deterministic): `from_config(config).plan(...)`."""

    num_train_timesteps: int
    shift: float
    use_dynamic_shifting: bool
    base_shift: float
    max_shift: float
    base_image_seq_len: int
    max_image_seq_len: int
    time_shift_type: str
    shift_terminal: float | None
    training_sigmas: np.ndarray

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> FlowMatchEulerSampler:
        values = _read_config(config)
        num_train, shift = int(values["num_train_timesteps"]), float(values["shift"])
        dynamic = bool(values["use_dynamic_shifting"])
        return cls(
            num_train_timesteps=num_train,
            shift=shift,
            use_dynamic_shifting=dynamic,
            base_shift=float(values["base_shift"]),
            max_shift=float(values["max_shift"]),
            base_image_seq_len=int(values["base_image_seq_len"]),
            max_image_seq_len=int(values["max_image_seq_len"]),
            time_shift_type=values["time_shift_type"],
            shift_terminal=values["shift_terminal"],
            training_sigmas=_training_sigmas(num_train, shift, dynamic),
        )

    def mu(self, image_seq_len: int) -> float:
        """The dynamic shift of an image of `image_seq_len` packed tokens, from this config's values."""
        return calculate_shift(
            image_seq_len, self.base_image_seq_len, self.max_image_seq_len, self.base_shift, self.max_shift
        )

    def flux_plan(self, num_inference_steps: int, image_seq_len: int) -> FlowMatchPlan:
        """FLUX.1's pipeline: `flux_sigmas`, shifted by the mu of `image_seq_len` (when dynamic)."""
        return self.plan(
            num_inference_steps, mu=self.mu(image_seq_len), sigmas=flux_sigmas(num_inference_steps)
        )

    def plan(
        self, num_inference_steps: int, *, mu: float | None = None, sigmas: np.ndarray | None = None
    ) -> FlowMatchPlan:
        """diffusers' `set_timesteps(num_inference_steps, sigmas=sigmas, mu=mu)`.

        Without `sigmas`, the scheduler's own: evenly spaced between its largest and smallest training
        sigma (already shifted when the shift is static: diffusers shifts those twice). `mu` is needed,
        and only used, when the config shifts dynamically.
        """
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps={num_inference_steps} must be at least 1")
        if self.use_dynamic_shifting and mu is None:
            raise ValueError("this scheduler shifts by resolution (use_dynamic_shifting): pass mu")
        if sigmas is None:
            largest, smallest = (float(s) * self.num_train_timesteps for s in self.training_sigmas[[0, -1]])
            sigmas = np.linspace(largest, smallest, num_inference_steps) / self.num_train_timesteps
        else:
            sigmas = np.asarray(sigmas).astype(np.float32)
            if sigmas.shape != (num_inference_steps,):
                raise ValueError(f"{len(sigmas)} sigmas for {num_inference_steps} steps")
        sigmas = self._time_shift(mu, sigmas) if self.use_dynamic_shifting else _shifted(sigmas, self.shift)
        if self.shift_terminal:  # stretch so that the last sigma is shift_terminal
            remaining = 1 - sigmas
            sigmas = 1 - remaining / (remaining[-1] / (1 - self.shift_terminal))
        sigmas = np.asarray(sigmas).astype(np.float32)
        timesteps = sigmas * np.float32(self.num_train_timesteps)
        return FlowMatchPlan(timesteps=timesteps, sigmas=np.append(sigmas, np.float32(0.0)))

    def _time_shift(self, mu: float, sigmas: np.ndarray) -> np.ndarray:
        """Resolution-dependent shift of sigma t: e^mu / (e^mu + 1/t - 1) ("exponential", FLUX.1's)
        or mu / (mu + 1/t - 1) ("linear"). Same dtype flow as diffusers' (float32 arrays in)."""
        scale = math.exp(mu) if self.time_shift_type == "exponential" else mu
        return scale / (scale + (1 / sigmas - 1))


def sample(
    plan: FlowMatchPlan,
    velocity_fn: Callable[[jax.Array, jax.Array], jax.Array],
    latents: jax.Array,
    *,
    use_scan: bool = False,
) -> jax.Array:
    """Run every step of `plan` from `latents` (pure noise at sigma 1).

    `velocity_fn(latents, timestep)` returns the velocity (guidance included); the timestep is a float32
    scalar, 1000 sigma. `use_scan` runs the loop in `jax.lax.scan` (one trace of velocity_fn).
    """
    timesteps = jnp.asarray(plan.timesteps, jnp.float32)
    if not use_scan:
        step = jax.jit(plan.step)
        for index in range(len(plan.timesteps)):
            latents, _ = step(None, velocity_fn(latents, timesteps[index]), jnp.asarray(index), latents)
        return latents

    def body(x: jax.Array, index: jax.Array) -> tuple[jax.Array, None]:
        return plan.step(None, velocity_fn(x, timesteps[index]), index, x)[0], None

    return jax.lax.scan(body, latents, jnp.arange(len(plan.timesteps)))[0]


# ---------------------------------------------------------------------------------------------------
# Training


@dataclasses.dataclass(frozen=True)
class FlowMatchSchedule:
    """The training table of noise levels, as diffusers' scheduler holds it before `set_timesteps`.

    A pytree (`sigmas` is a leaf), so it can be a jit argument. `sigmas[i]` descends from 1 to 1/N;
    `timesteps` = N sigmas. FLUX.1 (dynamic shifting) trains on them unshifted.
    """

    sigmas: jax.Array
    num_train_timesteps: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> FlowMatchSchedule:
        values = _read_config(config)
        num_train = int(values["num_train_timesteps"])
        sigmas = _training_sigmas(num_train, float(values["shift"]), bool(values["use_dynamic_shifting"]))
        return cls(jnp.asarray(sigmas, jnp.float32), num_train)

    @property
    def timesteps(self) -> jax.Array:
        return self.sigmas * self.num_train_timesteps

    def indices(self, u: jax.Array) -> jax.Array:
        """Table indices of densities `u` in [0, 1): floor(u N), as diffusers' `(u * N).long()`.

        Clipped to the table: "mode" gives u = 1 at a draw of exactly 0, which diffusers would index past.
        """
        return jnp.clip(jnp.floor(u * self.num_train_timesteps), 0, self.num_train_timesteps - 1).astype(
            jnp.int32
        )

    def sigmas_of_timesteps(self, timesteps: jax.Array) -> jax.Array:
        """Each timestep's sigma, by its position in the table (the training script's `get_sigmas`)."""
        position = jnp.argmax(self.timesteps[None, :] == jnp.asarray(timesteps)[:, None], axis=1)
        return self.sigmas[position]

    def add_noise(self, latents: jax.Array, noise: jax.Array, sigmas: jax.Array) -> jax.Array:
        """(1 - sigma) x_0 + sigma noise, per example (`sigmas` is (batch,)), in the latents' dtype."""
        sigma = sigmas.reshape(sigmas.shape + (1,) * (latents.ndim - sigmas.ndim)).astype(jnp.float32)
        noisy = (1.0 - sigma) * latents.astype(jnp.float32) + sigma * noise.astype(jnp.float32)
        return noisy.astype(latents.dtype)


jax.tree_util.register_dataclass(
    FlowMatchSchedule, data_fields=["sigmas"], meta_fields=["num_train_timesteps"]
)


def velocity_target(latents: jax.Array, noise: jax.Array) -> jax.Array:
    """What the model learns to predict: noise - x_0, the flow's velocity."""
    return noise - latents


def mode_density(u: jax.Array, mode_scale: float) -> jax.Array:
    """SD3's "mode" sampling (Esser et al. 2024, eq. 20) of uniform draws u: more weight mid-schedule
    as mode_scale grows (monotone for mode_scale below about 1.75)."""
    return 1 - u - mode_scale * (jnp.cos(jnp.pi * u / 2) ** 2 - 1 + u)


def timestep_density(
    key: jax.Array,
    batch_size: int,
    weighting_scheme: str,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    mode_scale: float = 1.29,
) -> jax.Array:
    """(batch_size,) float32 draws u in [0, 1) of diffusers' `compute_density_for_timestep_sampling`:
    sigmoid(N(logit_mean, logit_std)) for "logit_normal", `mode_density` of uniform draws for "mode",
    uniform draws for the other schemes."""
    _check_scheme(weighting_scheme)
    if weighting_scheme == "logit_normal":
        return jax.nn.sigmoid(logit_mean + logit_std * jax.random.normal(key, (batch_size,), jnp.float32))
    u = jax.random.uniform(key, (batch_size,), jnp.float32)
    return mode_density(u, mode_scale) if weighting_scheme == "mode" else u


def loss_weighting(weighting_scheme: str, sigmas: jax.Array) -> jax.Array:
    """diffusers' `compute_loss_weighting_for_sd3`: sigma^-2 ("sigma_sqrt"), 2 / (pi (1 - 2s + 2s^2))
    ("cosmap"), ones for the other schemes."""
    _check_scheme(weighting_scheme)
    sigmas = jnp.asarray(sigmas, jnp.float32)
    if weighting_scheme == "sigma_sqrt":
        return sigmas**-2.0
    if weighting_scheme == "cosmap":
        return 2 / (math.pi * (1 - 2 * sigmas + 2 * sigmas**2))
    return jnp.ones_like(sigmas)


def _check_scheme(weighting_scheme: str) -> None:
    if weighting_scheme not in WEIGHTING_SCHEMES:
        raise ValueError(f"weighting_scheme {weighting_scheme!r}: one of {', '.join(WEIGHTING_SCHEMES)}")
