"""diffusion.schedulers against diffusers' PyTorch DDPM, DDIM and DPM-Solver++ schedulers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from landmark_controlnet.diffusion.schedulers import (
    DDIMSampler,
    DPMSolverMultistepSampler,
    NoiseSchedule,
    SchedulerConfigError,
    sample,
)

# The scheduler/scheduler_config.json of runwayml/stable-diffusion-v1-5 and stabilityai/stable-diffusion-2-1.
SD15 = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
SD21 = {
    **SD15,
    "_class_name": "DDIMScheduler",
    "_diffusers_version": "0.8.0",
    "prediction_type": "v_prediction",
}
LATENT_SHAPE = (2, 4, 8, 8)


def fake_model(latents: np.ndarray, timestep: float) -> np.ndarray:
    """A deterministic nonlinear stand-in for a UNet, in numpy so both sides see the same outputs."""
    latents = np.asarray(latents, np.float32)
    return (0.3 * np.tanh(latents) * np.cos(timestep / 1000.0) + 0.1 * latents).astype(np.float32)


def start_latents(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(LATENT_SHAPE).astype(np.float32)


def diffusers_trajectory(scheduler: Any, num_steps: int, step_kwargs: Callable[[int], dict] | None = None):
    """Their timesteps and the latents after every step, from start_latents()."""
    scheduler.set_timesteps(num_steps)
    latents = torch.from_numpy(start_latents())
    trajectory = []
    for index, timestep in enumerate(scheduler.timesteps):
        output = torch.from_numpy(fake_model(latents.numpy(), float(timestep)))
        extra = step_kwargs(index) if step_kwargs else {}
        latents = scheduler.step(output, timestep, latents, **extra).prev_sample
        trajectory.append(latents.numpy().copy())
    return scheduler.timesteps.numpy(), trajectory


def our_trajectory(plan: Any) -> list[np.ndarray]:
    latents = jnp.asarray(start_latents())
    state = plan.init(latents)
    trajectory = []
    for index, timestep in enumerate(plan.timesteps):
        output = jnp.asarray(fake_model(np.asarray(latents), float(timestep)))
        latents, state = plan.step(state, output, index, latents)
        trajectory.append(np.asarray(latents))
    return trajectory


def assert_close(ours: Any, theirs: np.ndarray, tolerance: float, what: str = "") -> None:
    """max |ours - theirs| <= tolerance * max |theirs| (float32 rounding scales with the values)."""
    error = np.abs(np.asarray(ours) - theirs).max() / max(np.abs(theirs).max(), 1.0)
    assert error <= tolerance, f"{what}: max |ours - diffusers| / max |diffusers| = {error:.2e}"


def assert_trajectories_match(ours: list[np.ndarray], theirs: list[np.ndarray], tolerance: float = 1e-5):
    assert len(ours) == len(theirs)
    for index, (mine, reference) in enumerate(zip(ours, theirs, strict=True)):
        assert_close(mine, reference, tolerance, f"step {index}")


# ---------------------------------------------------------------------------------------------------
# Training: add_noise / velocity


@pytest.mark.parametrize(
    "config",
    [
        SD15,
        {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
        {"beta_schedule": "squaredcos_cap_v2"},
    ],
    ids=["scaled_linear", "linear", "squaredcos_cap_v2"],
)
def test_add_noise_and_velocity_match_ddpm(config: dict) -> None:
    rng = np.random.default_rng(1)
    x0 = rng.standard_normal((8, 4, 16, 16)).astype(np.float32)
    noise = rng.standard_normal(x0.shape).astype(np.float32)
    timesteps = rng.integers(0, 1000, size=8)
    theirs = DDPMScheduler.from_config(config)
    args = (torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(timesteps))
    ours = NoiseSchedule.from_config(config)
    jitted = jax.jit(lambda schedule, *xs: (schedule.add_noise(*xs), schedule.velocity(*xs)))
    noisy, velocity = jitted(ours, jnp.asarray(x0), jnp.asarray(noise), jnp.asarray(timesteps))
    # diffusers' float32 cumprod and our float64 one (rounded) differ by up to ~5e-7.
    assert_close(noisy, theirs.add_noise(*args).numpy(), 1e-6, "add_noise")
    assert_close(velocity, theirs.get_velocity(*args).numpy(), 1e-6, "velocity")
    np.testing.assert_allclose(ours.alphas_cumprod, theirs.alphas_cumprod.numpy(), rtol=0, atol=1e-6)
    their_alpha_bar = theirs.alphas_cumprod.numpy().astype(np.float64)[timesteps]
    # 1 - a_t near t=0 is ~1e-3, so the ~5e-7 cumprod difference is up to ~6e-4 of the SNR there.
    np.testing.assert_allclose(ours.snr(timesteps), their_alpha_bar / (1 - their_alpha_bar), rtol=1e-3)


@pytest.mark.parametrize("shape", [(3, 5), (3, 4, 6, 6, 2)], ids=["rank2", "rank5"])
def test_training_target_broadcasts_over_trailing_axes(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(2)
    x0, noise = (jnp.asarray(rng.standard_normal(shape), jnp.float32) for _ in range(2))
    timesteps = jnp.asarray([0, 500, 999])
    epsilon = NoiseSchedule.from_config(SD15)
    v_prediction = NoiseSchedule.from_config(SD21)
    np.testing.assert_array_equal(epsilon.training_target(x0, noise, timesteps), noise)
    target = v_prediction.training_target(x0, noise, timesteps)
    signal = np.sqrt(np.asarray(v_prediction.alphas_cumprod)[np.asarray(timesteps)])
    for row in range(3):  # each example scaled by its own timestep's coefficients
        expected = signal[row] * noise[row] - np.sqrt(1 - signal[row] ** 2) * x0[row]
        np.testing.assert_allclose(target[row], expected, rtol=1e-5, atol=1e-6)


def test_noise_schedule_takes_one_timestep_for_the_whole_batch() -> None:
    schedule = NoiseSchedule.from_config(SD15)
    x0, noise = jnp.ones((2, 3)), jnp.full((2, 3), 2.0)
    np.testing.assert_allclose(
        schedule.add_noise(x0, noise, jnp.asarray(700)),
        schedule.add_noise(x0, noise, jnp.asarray([700, 700])),
    )
    drawn = np.asarray(schedule.sample_timesteps(jax.random.key(3), 256))
    assert drawn.shape == (256,) and drawn.min() >= 0 and drawn.max() < 1000 and len(set(drawn)) > 100


# ---------------------------------------------------------------------------------------------------
# Samplers: timesteps


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("sampler", ["ddim", "dpm", "dpm_karras"])
def test_timesteps_equal_diffusers(spacing: str, sampler: str) -> None:
    config = {**SD15, "timestep_spacing": spacing}
    if sampler == "ddim":
        ours, theirs = DDIMSampler.from_config(config), DDIMScheduler.from_config(config)
    else:
        config["use_karras_sigmas"] = sampler == "dpm_karras"
        ours, theirs = (
            DPMSolverMultistepSampler.from_config(config),
            DPMSolverMultistepScheduler.from_config(config),
        )
    for num_steps in (1, 3, 10, 33, 50, 999):
        theirs.set_timesteps(num_steps)
        np.testing.assert_array_equal(
            ours.plan(num_steps).timesteps, theirs.timesteps.numpy(), err_msg=num_steps
        )


# ---------------------------------------------------------------------------------------------------
# Samplers: trajectories through the fake model


@pytest.mark.parametrize(
    "config",
    [
        SD15,
        {**SD15, "timestep_spacing": "trailing"},
        SD21,
        {**SD21, "timestep_spacing": "trailing"},
        {**SD15, "timestep_spacing": "linspace", "clip_sample": True, "clip_sample_range": 1.5},
        {"beta_schedule": "linear", "prediction_type": "sample", "clip_sample": False},
    ],
    ids=["sd15-leading", "sd15-trailing", "sd21-v-leading", "sd21-v-trailing", "linspace-clipped", "sample"],
)
def test_ddim_trajectory_matches_diffusers(config: dict) -> None:
    timesteps, theirs = diffusers_trajectory(DDIMScheduler.from_config(config), 10)
    plan = DDIMSampler.from_config(config).plan(10)
    np.testing.assert_array_equal(plan.timesteps, timesteps)
    assert_trajectories_match(our_trajectory(plan), theirs)


@pytest.mark.parametrize(
    ("config", "num_steps"),
    [
        (SD15, 10),
        ({**SD15, "timestep_spacing": "leading"}, 10),
        ({**SD21, "timestep_spacing": "trailing"}, 10),
        (SD21, 10),
        ({**SD15, "use_karras_sigmas": True}, 10),
        ({**SD21, "use_karras_sigmas": True, "timestep_spacing": "leading"}, 10),
        # 20 steps: the final step stays second order, toward sigma_min rather than 0.
        ({**SD15, "final_sigmas_type": "sigma_min", "solver_type": "heun"}, 20),
    ],
    ids=[
        "sd15",
        "sd15-leading",
        "sd21-v-trailing",
        "sd21-v",
        "sd15-karras",
        "sd21-v-karras",
        "sigma_min-heun",
    ],
)
def test_dpm_solver_trajectory_matches_diffusers(config: dict, num_steps: int) -> None:
    timesteps, theirs = diffusers_trajectory(DPMSolverMultistepScheduler.from_config(config), num_steps)
    plan = DPMSolverMultistepSampler.from_config(config).plan(num_steps)
    np.testing.assert_array_equal(plan.timesteps, timesteps)
    assert_trajectories_match(our_trajectory(plan), theirs)


def test_dpm_solver_steps_first_order_where_diffusers_would_divide_by_zero() -> None:
    # 999 "leading" steps with steps_offset=1 give timesteps 1000 and 999, one sigma for both.
    plan = DPMSolverMultistepSampler.from_config({**SD15, "timestep_spacing": "leading"}).plan(999)
    assert plan.timesteps[0] == 1000 and plan.order[1] == 1 and (plan.order[2:-1] == 2).all()
    assert np.isfinite(plan.x0_coef).all() and np.isfinite(plan.previous_x0_coef).all()


def test_stochastic_ddim_matches_diffusers_given_the_same_noise() -> None:
    noises = [
        np.random.default_rng(10 + i).standard_normal(LATENT_SHAPE).astype(np.float32) for i in range(10)
    ]
    _, theirs = diffusers_trajectory(
        DDIMScheduler.from_config(SD15),
        10,
        lambda i: {"eta": 0.7, "variance_noise": torch.from_numpy(noises[i])},
    )
    plan = DDIMSampler.from_config(SD15).plan(10, eta=0.7)
    latents, ours = jnp.asarray(start_latents()), []
    for index, timestep in enumerate(plan.timesteps):
        output = jnp.asarray(fake_model(np.asarray(latents), float(timestep)))
        latents = plan.update(output, index, latents, jnp.asarray(noises[index]))
        ours.append(np.asarray(latents))
    assert_trajectories_match(ours, theirs)


# ---------------------------------------------------------------------------------------------------
# The sampling loop


def jax_fake_model(latents: jax.Array, timestep: jax.Array) -> jax.Array:
    return 0.3 * jnp.tanh(latents) * jnp.cos(timestep / 1000.0) + 0.1 * latents


@pytest.mark.parametrize(
    ("plan", "key"),
    [
        (DPMSolverMultistepSampler.from_config(SD21).plan(6), None),
        (DDIMSampler.from_config(SD15).plan(6, eta=1.0), jax.random.key(0)),
    ],
    ids=["dpm", "ddim-eta1"],
)
def test_sample_in_lax_scan_equals_the_python_loop(plan: Any, key: jax.Array | None) -> None:
    latents = jnp.asarray(start_latents())
    looped = sample(plan, jax_fake_model, latents, key=key)
    scanned = sample(plan, jax_fake_model, latents, key=key, use_scan=True)
    np.testing.assert_allclose(scanned, looped, rtol=1e-5, atol=1e-5)
    assert plan.init_noise_sigma == 1.0
    assert np.isfinite(np.asarray(looped)).all() and not np.allclose(looped, latents)


def test_stochastic_ddim_needs_a_key() -> None:
    plan = DDIMSampler.from_config(SD15).plan(4, eta=0.5)
    with pytest.raises(ValueError, match="PRNG key"):
        plan.init(jnp.zeros(LATENT_SHAPE))


# ---------------------------------------------------------------------------------------------------
# Config validation


@pytest.mark.parametrize(
    ("build", "config", "key"),
    [
        (NoiseSchedule.from_config, {**SD15, "beta_schedule": "nonsense"}, "beta_schedule"),
        (DDIMSampler.from_config, {**SD15, "beta_schedule": "nonsense"}, "beta_schedule"),
        (NoiseSchedule.from_config, {**SD15, "prediction_type": "flow_prediction"}, "prediction_type"),
        (DDIMSampler.from_config, {**SD15, "thresholding": True}, "thresholding"),
        (DDIMSampler.from_config, {**SD15, "timestep_spacing": "middle"}, "timestep_spacing"),
        (
            DPMSolverMultistepSampler.from_config,
            {**SD15, "algorithm_type": "sde-dpmsolver++"},
            "algorithm_type",
        ),
        (DPMSolverMultistepSampler.from_config, {**SD15, "solver_order": 3}, "solver_order"),
        (DPMSolverMultistepSampler.from_config, {**SD15, "use_lu_lambdas": True}, "use_lu_lambdas"),
        (NoiseSchedule.from_config, {**SD15, "rescale_betas_zero_snr": True}, "rescale_betas_zero_snr"),
        (NoiseSchedule.from_config, {**SD15, "betas_start": 0.001}, "betas_start"),
    ],
)
def test_unsupported_config_raises_naming_the_key(build: Callable, config: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key) as raised:
        build(config)
    assert isinstance(raised.value, SchedulerConfigError)


def test_keys_of_other_samplers_are_ignored() -> None:
    # A DPM-only option means nothing to DDIM (diffusers ignores it too).
    config = {**SD15, "use_karras_sigmas": True, "solver_order": 3}
    np.testing.assert_array_equal(DDIMSampler.from_config(config).plan(10).timesteps, np.arange(901, 0, -100))
