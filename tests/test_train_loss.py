"""The train step's loss on a tiny SD 2.1-shaped model: its target is PyTorch diffusers' velocity."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from landmark_controlnet.diffusion import encode_prompt
from landmark_controlnet.diffusion.pipeline import controlnet_prediction, tokenize
from landmark_controlnet.training.models import (
    controlnet_from_unet,
    controlnet_options,
    load_base_model,
    split_models,
)
from landmark_controlnet.training.step import LossConfig, diffusion_loss
from landmark_controlnet.training.tiny_sd import write_tiny_sd


@pytest.fixture(scope="module")
def sd2(tmp_path_factory):
    folder = write_tiny_sd(tmp_path_factory.mktemp("loss") / "tiny-sd2", sd2=True)
    return folder, load_base_model(str(folder))


def test_a_v_prediction_model_learns_the_velocity_diffusers_defines(sd2):
    import torch
    from diffusers import DDPMScheduler

    folder, sd = sd2
    controlnet = controlnet_from_unet(sd.unet, 0, controlnet_options(jnp.float32))
    # Perturbed: the zero-initialised output convolutions would make the ControlNet a no-op.
    nnx.update(controlnet, jax.tree_util.tree_map(lambda p: p + 0.05, nnx.state(controlnet, nnx.Param)))
    graphs, frozen, params = split_models(sd, controlnet)
    frozen["noise_schedule"] = sd.noise_schedule
    rng = np.random.default_rng(0)
    batch = {
        "pixel_values": jnp.asarray(rng.uniform(-1, 1, (2, 64, 64, 3)), jnp.float32),
        "conditioning_pixel_values": jnp.asarray(rng.uniform(0, 1, (2, 64, 64, 3)), jnp.float32),
        "input_ids": jnp.asarray(tokenize(sd.tokenizer, ["a hand", "an open palm"])),
    }
    key = jax.random.PRNGKey(7)
    loss = float(diffusion_loss(params, frozen, batch, key, graphs, LossConfig()))

    # The step's own draws, from the same key, then the target from diffusers' scheduler.
    sample_key, noise_key, time_key = jax.random.split(key, 3)
    latents = sd.vae.to_latents(sd.vae.encode(batch["pixel_values"]), sample_key)
    noise = jax.random.normal(noise_key, latents.shape)
    timesteps = sd.noise_schedule.sample_timesteps(time_key, 2)
    noisy = sd.noise_schedule.add_noise(latents, noise, timesteps)
    text = encode_prompt(sd.text_encoder, batch["input_ids"])
    prediction = np.asarray(
        controlnet_prediction(sd.unet, controlnet, noisy, timesteps, text, batch["conditioning_pixel_values"])
    )
    scheduler = DDPMScheduler.from_pretrained(folder / "scheduler")
    assert scheduler.config.prediction_type == "v_prediction"
    as_torch = [torch.from_numpy(np.asarray(a).transpose(0, 3, 1, 2).copy()) for a in (latents, noise)]
    velocity = scheduler.get_velocity(*as_torch, torch.from_numpy(np.array(timesteps)).long())
    velocity = velocity.numpy().transpose(0, 2, 3, 1)
    expected = float(np.mean((prediction - velocity) ** 2))
    assert loss == pytest.approx(expected, rel=1e-4)
    against_noise = float(np.mean((prediction - np.asarray(noise)) ** 2))
    assert abs(against_noise - expected) > 1e-2 * expected, "the noise target would pass too"
