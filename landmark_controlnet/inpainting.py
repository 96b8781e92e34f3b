"""ControlNet-guided inpainting in Flax: an inpainting UNet (9 input channels) steered by a ControlNet.

diffusers has a Flax ControlNet pipeline and a Flax inpainting pipeline, but none that does
both, which is what HandRefiner-style repair needs. `InpaintSampler` is that loop: DDIM with
classifier-free guidance; the ControlNet sees the noisy latents and the conditioning image, its
residuals scaled by the control strength; the UNet also sees the mask and the masked photo's
latents. The whole loop is one jitted function, compiled once per image size.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from conditioners.errors import OptionError

from .training.models import StableDiffusion, tokenize
from .training.step import inpainting_channels

INPAINTING_CHANNELS = 9


def check_inpainting_unet(sd: StableDiffusion, where: str) -> None:
    channels = sd.unet.config.in_channels
    if channels != INPAINTING_CHANNELS:
        raise OptionError(
            f"{where} is not an inpainting model: its UNet takes {channels} input channels, not "
            f"{INPAINTING_CHANNELS} (latents, mask, masked-image latents). Use an inpainting "
            "Stable Diffusion, e.g. a copy of stable-diffusion-inpainting."
        )


class InpaintSampler:
    """Repaints the masked part of a batch of photos; `params` come per call (training updates them)."""

    def __init__(self, sd: StableDiffusion, controlnet: Any, steps: int = 30, guidance_scale: float = 7.5):
        from diffusers import FlaxDDIMScheduler

        self.sd = sd
        self.controlnet = controlnet
        self.scheduler = FlaxDDIMScheduler.from_config(sd.scheduler.config)
        self.steps = steps
        self.guidance_scale = guidance_scale
        self._sample = jax.jit(self._loop)

    def __call__(
        self,
        params: dict[str, Any],
        prompts: list[str],
        photos: np.ndarray,
        masks: np.ndarray,
        conditioning: np.ndarray,
        strength: float,
        seed: int = 0,
    ) -> np.ndarray:
        """(B, H, W, 3) uint8 generated images.

        `params`: text_encoder, vae, unet, controlnet. `photos` (B, H, W, 3) uint8, `masks`
        (B, H, W) (non-zero = repaint), `conditioning` (B, H, W, 3) uint8; H and W multiples of 64.
        """
        pixels = jnp.asarray(photos, jnp.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0
        mask = jnp.asarray(np.asarray(masks) > 0, jnp.float32)[:, None]
        cond = jnp.asarray(conditioning, jnp.float32).transpose(0, 3, 1, 2) / 255.0
        prompt_ids = jnp.asarray(tokenize(self.sd.tokenizer, list(prompts)))
        empty_ids = jnp.asarray(tokenize(self.sd.tokenizer, [""] * len(prompts)))
        images = self._sample(
            params, prompt_ids, empty_ids, pixels, mask, cond, jnp.float32(strength), jax.random.PRNGKey(seed)
        )
        return np.asarray((images * 255).round().astype(jnp.uint8))

    def _loop(self, params, prompt_ids, empty_ids, pixels, mask, cond, strength, rng):
        sd = self.sd
        text_ids = jnp.concatenate([empty_ids, prompt_ids])
        text = sd.text_encoder(text_ids, params=params["text_encoder"], train=False)[0]
        factor = 2 ** (len(sd.vae.config.block_out_channels) - 1)
        shape = (
            pixels.shape[0],
            sd.unet.config.out_channels,
            pixels.shape[2] // factor,
            pixels.shape[3] // factor,
        )
        state = self.scheduler.set_timesteps(self.scheduler.create_state(), self.steps, shape)
        latents = jax.random.normal(rng, shape) * state.init_noise_sigma
        # The mask and masked-photo channels are the same at every step: built once, doubled for guidance.
        extra = inpainting_channels(mask, pixels, params["vae"], sd, shape[2:])
        extra, cond = jnp.concatenate([extra, extra]), jnp.concatenate([cond, cond])
        step = partial(self._denoise, params, text, extra, cond, strength)
        latents, _ = jax.lax.fori_loop(0, self.steps, step, (latents, state))
        decoded = sd.vae.apply(
            {"params": params["vae"]}, latents / sd.vae.config.scaling_factor, method=sd.vae.decode
        ).sample
        return (decoded / 2 + 0.5).clip(0, 1).transpose(0, 2, 3, 1)

    def _denoise(self, params, text, extra, cond, strength, index, carry):
        latents, state = carry
        timestep = state.timesteps[index]
        doubled = self.scheduler.scale_model_input(state, jnp.concatenate([latents, latents]), timestep)
        timesteps = jnp.broadcast_to(timestep, (doubled.shape[0],))
        down, mid = self.controlnet.apply(
            {"params": params["controlnet"]},
            doubled,
            timesteps,
            text,
            cond,
            conditioning_scale=strength,
            train=False,
            return_dict=False,
        )
        noise = self.sd.unet.apply(
            {"params": params["unet"]},
            jnp.concatenate([doubled, extra], axis=1),
            timesteps,
            text,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
            train=False,
        ).sample
        unconditional, conditional = jnp.split(noise, 2)
        guided = unconditional + self.guidance_scale * (conditional - unconditional)
        latents, state = self.scheduler.step(state, guided, timestep, latents).to_tuple()
        return latents, state
