"""diffusion.flow_match against diffusers' FlowMatchEulerDiscreteScheduler, FLUX.1's pipeline schedule
(`calculate_shift` + `retrieve_timesteps`) and the training helpers of `train_controlnet_flux.py`."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import calculate_shift as diffusers_calculate_shift
from diffusers.pipelines.flux.pipeline_flux import retrieve_timesteps
from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

from landmark_controlnet.diffusion.flow_match import (
    FlowMatchEulerSampler,
    FlowMatchSchedule,
    calculate_shift,
    flux_sigmas,
    loss_weighting,
    mode_density,
    packed_sequence_length,
    sample,
    timestep_density,
)
from landmark_controlnet.diffusion.schedulers import SchedulerConfigError
from landmark_controlnet.training.tiny_flux import SCHEDULER as FLUX_DEV_SCHEDULER

# black-forest-labs/FLUX.1-dev's scheduler/scheduler_config.json as the file holds it, diffusers' keys
# included (schnell's says use_dynamic_shifting false).
FLUX_DEV = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "_diffusers_version": "0.30.0.dev0",
    **FLUX_DEV_SCHEDULER,
}
FLUX_SCHNELL = {**FLUX_DEV, "shift": 1.0, "use_dynamic_shifting": False}
SD3 = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}
LATENT_SHAPE = (2, 64, 16)  # packed tokens x 64 channels, small


def diffusers_flux_schedule(config: dict, steps: int, height: int, width: int):
    """FluxPipeline.__call__'s schedule: the pipeline's sigmas, mu from the packed latent length."""
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
    seq_len = (2 * (height // 16)) // 2 * (2 * (width // 16)) // 2  # the packed latents' shape[1]
    mu = diffusers_calculate_shift(
        seq_len,
        scheduler.config.get("base_image_seq_len", 256),
        scheduler.config.get("max_image_seq_len", 4096),
        scheduler.config.get("base_shift", 0.5),
        scheduler.config.get("max_shift", 1.15),
    )
    sigmas = np.linspace(1.0, 1 / steps, steps)
    timesteps, _ = retrieve_timesteps(scheduler, steps, "cpu", sigmas=sigmas, mu=mu)
    return scheduler, timesteps.numpy(), mu


@pytest.mark.parametrize(
    ("height", "width", "steps"),
    [(1024, 1024, 28), (512, 512, 4), (768, 1360, 50), (256, 384, 1), (2048, 2048, 20)],
)
def test_flux_dev_schedule_equals_diffusers(height, width, steps):
    scheduler, timesteps, mu = diffusers_flux_schedule(FLUX_DEV, steps, height, width)
    sampler = FlowMatchEulerSampler.from_config(FLUX_DEV)
    seq_len = packed_sequence_length(height, width)
    assert sampler.mu(seq_len) == pytest.approx(mu, rel=1e-12)
    plan = sampler.flux_plan(steps, seq_len)
    assert plan.timesteps.dtype == np.float32 and plan.sigmas.dtype == np.float32
    np.testing.assert_allclose(plan.timesteps, timesteps, rtol=1e-6)
    np.testing.assert_allclose(plan.sigmas, scheduler.sigmas.numpy(), rtol=1e-6, atol=0)
    assert plan.sigmas[-1] == 0 and len(plan.sigmas) == steps + 1


@pytest.mark.parametrize(("config", "steps"), [(FLUX_SCHNELL, 4), (SD3, 28), (SD3, 7)])
def test_static_shift_schedules_equal_diffusers(config, steps):
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
    scheduler.set_timesteps(steps)  # the scheduler's own sigmas (SD3's pipeline)
    plan = FlowMatchEulerSampler.from_config(config).plan(steps)
    np.testing.assert_allclose(plan.timesteps, scheduler.timesteps.numpy(), rtol=1e-6)
    np.testing.assert_allclose(plan.sigmas, scheduler.sigmas.numpy(), rtol=1e-6)
    # and with FLUX.1-schnell's pipeline sigmas (no mu: the shift is static)
    scheduler.set_timesteps(steps, sigmas=np.linspace(1.0, 1 / steps, steps))
    plan = FlowMatchEulerSampler.from_config(config).plan(steps, sigmas=flux_sigmas(steps))
    np.testing.assert_allclose(plan.sigmas, scheduler.sigmas.numpy(), rtol=1e-6)


@pytest.mark.parametrize("change", [{"time_shift_type": "linear"}, {"shift_terminal": 0.1}])
def test_shift_variants_equal_diffusers(change):
    config = {**FLUX_DEV, **change}
    scheduler, timesteps, _ = diffusers_flux_schedule(config, 12, 1024, 768)
    plan = FlowMatchEulerSampler.from_config(config).flux_plan(12, packed_sequence_length(1024, 768))
    np.testing.assert_allclose(plan.timesteps, timesteps, rtol=1e-6)
    np.testing.assert_allclose(plan.sigmas, scheduler.sigmas.numpy(), rtol=1e-6)


def test_calculate_shift_is_the_pipelines():
    for seq_len in (16, 256, 1024, 4096, 9000):
        assert calculate_shift(seq_len) == pytest.approx(diffusers_calculate_shift(seq_len), rel=1e-12)
    assert calculate_shift(256) == pytest.approx(0.5) and calculate_shift(4096) == pytest.approx(1.15)
    assert packed_sequence_length(1024, 768) == 64 * 48


def fake_velocity(latents: np.ndarray, timestep: float) -> np.ndarray:
    """A deterministic nonlinear stand-in for the transformer, in numpy so both sides see the same."""
    latents = np.asarray(latents, np.float32)
    return (0.7 * np.tanh(latents) * np.cos(timestep / 700.0) - 0.2 * latents).astype(np.float32)


def test_euler_steps_equal_diffusers():
    steps = 6
    scheduler, timesteps, _ = diffusers_flux_schedule(FLUX_DEV, steps, 512, 768)
    start = np.random.default_rng(0).standard_normal(LATENT_SHAPE).astype(np.float32)
    theirs = torch.from_numpy(start)
    plan = FlowMatchEulerSampler.from_config(FLUX_DEV).flux_plan(steps, packed_sequence_length(512, 768))
    ours = jnp.asarray(start)
    state = plan.init(ours)
    step = jax.jit(plan.step)
    for index, timestep in enumerate(timesteps):
        theirs = scheduler.step(torch.from_numpy(fake_velocity(theirs.numpy(), timestep)), timestep, theirs)
        theirs = theirs.prev_sample
        ours, state = step(state, jnp.asarray(fake_velocity(np.asarray(ours), timestep)), index, ours)
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-5, atol=1e-6, err_msg=f"step {index}")

    def velocity_fn(latents, timestep):
        return jax.pure_callback(
            lambda x, t: fake_velocity(x, float(t)),
            jax.ShapeDtypeStruct(latents.shape, jnp.float32),
            latents,
            timestep,
        )

    for use_scan in (False, True):
        final = sample(plan, velocity_fn, jnp.asarray(start), use_scan=use_scan)
        np.testing.assert_allclose(final, theirs.numpy(), rtol=1e-5, atol=1e-6, err_msg=f"scan={use_scan}")


def test_step_keeps_the_latents_dtype():
    plan = FlowMatchEulerSampler.from_config(FLUX_DEV).flux_plan(4, 1024)
    latents = jnp.ones((1, 4, 8), jnp.bfloat16)
    out, _ = plan.step(None, jnp.ones((1, 4, 8), jnp.float32), 0, latents)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(out.astype(np.float32), 1 + (plan.sigmas[1] - plan.sigmas[0]), rtol=1e-2)


def test_training_table_and_sigma_lookup_equal_diffusers():
    for config in (FLUX_DEV, SD3):
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
        schedule = FlowMatchSchedule.from_config(config)
        np.testing.assert_array_equal(schedule.sigmas, scheduler.sigmas.numpy())
        np.testing.assert_array_equal(schedule.timesteps, scheduler.timesteps.numpy())
        # train_controlnet_flux.py: indices = (u * N).long(), timesteps = table[indices], get_sigmas()
        u = compute_density_for_timestep_sampling(
            "logit_normal", 64, 0.0, 1.0, generator=torch.manual_seed(3)
        )
        indices = (u * scheduler.config.num_train_timesteps).long()
        timesteps = scheduler.timesteps[indices]
        theirs = torch.stack(
            [scheduler.sigmas[(scheduler.timesteps == t).nonzero().item()] for t in timesteps]
        )
        ours_indices = schedule.indices(jnp.asarray(u.numpy()))
        np.testing.assert_array_equal(ours_indices, indices.numpy())
        np.testing.assert_array_equal(schedule.sigmas[ours_indices], theirs.numpy())
        np.testing.assert_array_equal(
            schedule.sigmas_of_timesteps(jnp.asarray(timesteps.numpy())), theirs.numpy()
        )


def test_add_noise_and_target():
    schedule = FlowMatchSchedule.from_config(FLUX_DEV)
    rng = np.random.default_rng(1)
    latents, noise = (rng.standard_normal((3, 4, 4, 16)).astype(np.float32) for _ in range(2))
    sigmas = schedule.sigmas[jnp.array([0, 500, 999])]
    noisy = np.asarray(schedule.add_noise(jnp.asarray(latents), jnp.asarray(noise), sigmas))
    np.testing.assert_allclose(noisy[0], noise[0], rtol=1e-6)  # sigma 1: pure noise
    np.testing.assert_allclose(noisy[1], 0.5 * latents[1] + 0.5 * noise[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(noisy[2], 0.999 * latents[2] + 0.001 * noise[2], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode_scale", [0.0, 1.29, 0.5])
def test_mode_density_is_diffusers_formula(mode_scale):
    # diffusers draws u = torch.rand(batch) then maps it; the same draws through ours give the same values.
    theirs = compute_density_for_timestep_sampling(
        "mode", 256, mode_scale=mode_scale, generator=torch.manual_seed(7)
    )
    uniform = torch.rand(256, generator=torch.manual_seed(7))
    np.testing.assert_allclose(
        mode_density(jnp.asarray(uniform.numpy()), mode_scale), theirs.numpy(), atol=1e-6
    )
    if mode_scale == 0.0:
        np.testing.assert_allclose(theirs.numpy(), 1 - uniform.numpy(), atol=1e-7)


@pytest.mark.parametrize("scheme", ["uniform", "none", "sigma_sqrt", "cosmap"])
def test_other_schemes_draw_uniformly(scheme):
    u = np.asarray(timestep_density(jax.random.key(0), 20000, scheme))
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.01 and abs(np.median(u) - 0.5) < 0.01
    np.testing.assert_array_equal(u, jax.random.uniform(jax.random.key(0), (20000,)))


def test_logit_normal_statistics():
    u = np.asarray(timestep_density(jax.random.key(1), 20000, "logit_normal", logit_mean=0.5, logit_std=0.8))
    logits = np.log(u / (1 - u))
    assert abs(logits.mean() - 0.5) < 0.02 and abs(logits.std() - 0.8) < 0.02
    assert abs(np.median(u) - 1 / (1 + math.exp(-0.5))) < 0.01


def test_mode_statistics_concentrate_mid_schedule():
    u = np.asarray(timestep_density(jax.random.key(2), 20000, "mode", mode_scale=1.29))
    assert u.min() >= 0 and u.max() <= 1
    middle = np.mean((u > 0.25) & (u < 0.75))
    assert middle > 0.6  # uniform draws would put half there
    indices = FlowMatchSchedule.from_config(FLUX_DEV).indices(jnp.array([0.0, 0.5, 0.9999, 1.0]))
    np.testing.assert_array_equal(indices, [0, 500, 999, 999])  # u = 1 (a draw of exactly 0) stays in range


def test_density_jits():
    draw = jax.jit(timestep_density, static_argnums=(1, 2))
    assert draw(jax.random.key(3), 8, "logit_normal").shape == (8,)


@pytest.mark.parametrize("scheme", ["sigma_sqrt", "cosmap", "logit_normal", "none"])
def test_loss_weighting_equals_diffusers(scheme):
    sigmas = np.linspace(0.001, 1.0, 50, dtype=np.float32)
    theirs = compute_loss_weighting_for_sd3(scheme, torch.from_numpy(sigmas)).numpy()
    np.testing.assert_allclose(loss_weighting(scheme, jnp.asarray(sigmas)), theirs, rtol=1e-6)


def test_unknown_scheme_raises():
    with pytest.raises(ValueError, match="weighting_scheme"):
        timestep_density(jax.random.key(0), 2, "logitnormal")


@pytest.mark.parametrize(
    "change",
    [{"use_karras_sigmas": True}, {"stochastic_sampling": True}, {"invert_sigmas": True}, {"nonsense": 1}],
)
def test_unsupported_config_raises(change):
    with pytest.raises(SchedulerConfigError):
        FlowMatchEulerSampler.from_config({**FLUX_DEV, **change})


def test_dynamic_shift_needs_mu():
    with pytest.raises(ValueError, match="mu"):
        FlowMatchEulerSampler.from_config(FLUX_DEV).plan(4)
