"""The train step's loss on a tiny SD 2.1-shaped model: its target is PyTorch diffusers' velocity."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tiny_models import perturb

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
    """The batch holds uint8 pictures, as the loader sends them; the reference is computed from the
    float pictures the host used to send, so the step's own scaling is checked too."""
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
        "pixel_values": jnp.asarray(rng.integers(0, 256, (2, 64, 64, 3), np.uint8)),
        "conditioning_pixel_values": jnp.asarray(rng.integers(0, 256, (2, 64, 64, 3), np.uint8)),
        "input_ids": jnp.asarray(tokenize(sd.tokenizer, ["a hand", "an open palm"])),
    }
    key = jax.random.PRNGKey(7)
    loss = float(diffusion_loss(params, frozen, batch, key, graphs, LossConfig()))

    # The host's float pictures, the step's own draws from the same key, then diffusers' target.
    pixels = jnp.asarray(np.asarray(batch["pixel_values"], np.float32) / 127.5 - 1.0)
    conditioning = jnp.asarray(np.asarray(batch["conditioning_pixel_values"], np.float32) / 255.0)
    sample_key, noise_key, time_key = jax.random.split(key, 3)
    latents = sd.vae.to_latents(sd.vae.encode(pixels), sample_key)
    noise = jax.random.normal(noise_key, latents.shape)
    timesteps = sd.noise_schedule.sample_timesteps(time_key, 2)
    noisy = sd.noise_schedule.add_noise(latents, noise, timesteps)
    text = encode_prompt(sd.text_encoder, batch["input_ids"])
    prediction = np.asarray(controlnet_prediction(sd.unet, controlnet, noisy, timesteps, text, conditioning))
    scheduler = DDPMScheduler.from_pretrained(folder / "scheduler")
    assert scheduler.config.prediction_type == "v_prediction"
    as_torch = [torch.from_numpy(np.asarray(a).transpose(0, 3, 1, 2).copy()) for a in (latents, noise)]
    velocity = scheduler.get_velocity(*as_torch, torch.from_numpy(np.array(timesteps)).long())
    velocity = velocity.numpy().transpose(0, 2, 3, 1)
    expected = float(np.mean((prediction - velocity) ** 2))
    assert loss == pytest.approx(expected, rel=1e-4)
    against_noise = float(np.mean((prediction - np.asarray(noise)) ** 2))
    assert abs(against_noise - expected) > 1e-2 * expected, "the noise target would pass too"


# SDXL's shape at toy width: text_time add-embeds over a pooled projection, a transformer depth list.
TINY_SDXL_UNET = {
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 4,
    "attention_head_dim": [2, 4],
    "block_out_channels": [16, 32],
    "cross_attention_dim": 24,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "projection_class_embeddings_input_dim": 12 + 6 * 4,
    "transformer_layers_per_block": [1, 2],
    "use_linear_projection": True,
}


def test_an_sdxl_step_feeds_the_pooled_text_and_size_ids_to_unet_and_controlnet():
    from landmark_controlnet.diffusion import (
        AutoencoderKL,
        AutoencoderKLConfig,
        NoiseSchedule,
        UNet2DConditionModel,
        UNetConfig,
    )
    from landmark_controlnet.diffusion.pretrained import InitKeys
    from landmark_controlnet.training.models import Graphs

    unet = UNet2DConditionModel(UNetConfig.from_dict(TINY_SDXL_UNET), rngs=InitKeys(0))
    vae = AutoencoderKL(
        AutoencoderKLConfig.from_dict({"block_out_channels": [8], "norm_num_groups": 4}), rngs=InitKeys(1)
    )
    controlnet = controlnet_from_unet(unet, 0, controlnet_options(jnp.float32))
    for seed, model in enumerate((unet, controlnet)):  # zero-initialised convolutions would hide any input
        perturb(model, seed)
    graphs = {
        name: nnx.split(model)[0]
        for name, model in (("vae", vae), ("unet", unet), ("controlnet", controlnet))
    }
    frozen = {name: nnx.to_pure_dict(nnx.state(model)) for name, model in (("vae", vae), ("unet", unet))}
    frozen["noise_schedule"] = NoiseSchedule.from_config({})
    params = nnx.to_pure_dict(nnx.state(controlnet))
    rng = np.random.default_rng(0)
    batch = {  # cached latents and embeddings: the step needs no text encoder
        "latent_moments": jnp.asarray(rng.standard_normal((2, 8, 8, 8)), jnp.float32),
        "text_embeddings": jnp.asarray(rng.standard_normal((2, 77, 24)), jnp.float32),
        "conditioning_pixel_values": jnp.asarray(rng.integers(0, 256, (2, 64, 64, 3), np.uint8)),
        "text_embeds": jnp.asarray(rng.standard_normal((2, 12)), jnp.float32),
        "time_ids": jnp.asarray([[1024, 768, 0, 0, 64, 64], [64, 64, 0, 0, 64, 64]], jnp.float32),
    }
    step_graphs = Graphs(text_encoder=None, **graphs)

    def loss(params, batch):
        return diffusion_loss(params, frozen, batch, jax.random.PRNGKey(3), step_graphs, LossConfig())

    base = float(loss(params, batch))
    other_size = {**batch, "time_ids": batch["time_ids"].at[0, :2].set(jnp.asarray([512.0, 512.0]))}
    assert abs(float(loss(params, other_size)) - base) > 1e-6 * abs(base), (
        "original_size never reached the step"
    )
    grads = jax.grad(loss)(params, batch)
    # The ControlNet's own add-embedding only gets a gradient if the ControlNet sees the added conditioning.
    assert float(jnp.abs(grads["add_embedding"]["linear_1"]["kernel"]).max()) > 0
