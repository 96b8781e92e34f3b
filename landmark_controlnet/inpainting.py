"""ControlNet-guided inpainting (HandRefiner-style repair): which base models can do it.

The sampling itself is `diffusion.pipeline.ControlNetGenerator` given photos and masks: DDIM with
classifier-free guidance, the ControlNet seeing the noisy latents and the conditioning image, the
inpainting UNet also the mask and the masked photo's latents.
"""

from __future__ import annotations

from conditioners.errors import OptionError

from .diffusion.pipeline import INPAINTING_CHANNELS, StableDiffusion


def check_inpainting_unet(sd: StableDiffusion, where: str) -> None:
    if not sd.is_inpainting:
        raise OptionError(
            f"{where} is not an inpainting model: its UNet takes {sd.unet.config.in_channels} input "
            f"channels, not {INPAINTING_CHANNELS} (latents, mask, masked-image latents). Use an inpainting "
            "Stable Diffusion, e.g. a copy of stable-diffusion-inpainting."
        )
