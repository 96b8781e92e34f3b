"""Validation images with the Flax ControlNet pipeline, as a grid PNG and in the run's logs.

Runs on process 0 only, on its first device, with a host copy of the weights: a computation
on the global (all-host) arrays would wait for hosts that are not validating.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from conditioners.preview import contact_sheet

from .data import conditioning_values, decode, frame, prepare_mask
from .models import StableDiffusion

GRID_TILE = 256


@dataclass
class ValidationSet:
    prompts: list[str]
    images: list[Image.Image]  # conditioning images, one per prompt
    # Inpainting runs only: the photo to repaint and its mask (white = repaint), one per prompt.
    photos: list[Image.Image] | None = None
    masks: list[Image.Image] | None = None

    @classmethod
    def from_flags(cls, prompts: list[str] | None, images: list[str] | None) -> ValidationSet | None:
        """The diffusers example's pairing: one image for all prompts, one prompt for all images, or 1:1."""
        if not prompts and not images:
            return None
        if not prompts or not images:
            raise ValueError("--validation_prompt and --validation_image go together")
        if len(images) == 1:
            images = images * len(prompts)
        elif len(prompts) == 1:
            prompts = prompts * len(images)
        elif len(prompts) != len(images):
            raise ValueError("give one --validation_image, one --validation_prompt, or as many of each")
        return cls(list(prompts), [decode(path, path) for path in images])  # decoded as training decodes

    def framed(self, resolution: int) -> ValidationSet:
        """Every picture framed exactly as training frames a row's (centre-cropped, never squashed);
        masks come back binary, 0 or 255, as training thresholds them."""
        images = [frame(image.convert("RGB"), resolution) for image in self.images]
        photos = [frame(photo.convert("RGB"), resolution) for photo in self.photos or []]
        masks = [_mask_image(prepare_mask(mask.convert("L"), resolution)) for mask in self.masks or []]
        return ValidationSet(self.prompts, images, photos or None, masks or None)


def _mask_image(mask: np.ndarray) -> Image.Image:
    """(1, H, W) {0, 1} -> an L image, 255 = repaint."""
    return Image.fromarray((mask[0] * 255).astype(np.uint8), "L")


class Validator:
    def __init__(self, sd: StableDiffusion, controlnet: Any, resolution: int, inference_steps: int, dtype):
        from diffusers import FlaxDDIMScheduler, FlaxStableDiffusionControlNetPipeline

        scheduler = FlaxDDIMScheduler.from_config(sd.scheduler.config)
        self.pipeline = FlaxStableDiffusionControlNetPipeline(
            vae=sd.vae,
            text_encoder=sd.text_encoder,
            tokenizer=sd.tokenizer,
            unet=sd.unet,
            controlnet=controlnet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            dtype=dtype,
        )
        self.frozen = {k: v for k, v in sd.params.items() if k != "scheduler"}
        self.scheduler_state = scheduler.create_state()
        self.resolution = resolution
        # The pipeline's own jit path pmaps over every device; one device is enough here, and
        # jitting its (pinned, diffusers 0.39) generate loop compiles it once for the whole run.
        self.generate = jax.jit(
            partial(self.pipeline._generate, num_inference_steps=inference_steps, guidance_scale=7.5)
        )

    def __call__(
        self, controlnet_params: Any, validation: ValidationSet, per_prompt: int, seed: int
    ) -> Image.Image:
        params = {**self.frozen, "controlnet": controlnet_params, "scheduler": self.scheduler_state}
        rows = []
        framed = validation.framed(self.resolution)
        for index, (prompt, conditioning) in enumerate(zip(framed.prompts, framed.images, strict=True)):
            prompt_ids = self.pipeline.prepare_text_inputs([prompt] * per_prompt)
            cond = jnp.repeat(jnp.asarray(conditioning_values(conditioning))[None], per_prompt, axis=0)
            rng = jax.random.fold_in(jax.random.PRNGKey(seed), index)
            images = self.generate(prompt_ids, cond, params, rng)
            generated = (np.asarray(images) * 255).round().astype(np.uint8)
            row = [(conditioning, "conditioning")] + [(Image.fromarray(g), prompt) for g in generated]
            rows.append(row)
        return contact_sheet(rows, tile=min(GRID_TILE, max(self.resolution, 128)))


class InpaintValidator:
    """Validation of an inpainting run: the photo repainted inside its mask, composited back."""

    def __init__(self, sd: StableDiffusion, controlnet: Any, resolution: int, inference_steps: int):
        from landmark_controlnet.inpainting import InpaintSampler

        self.sampler = InpaintSampler(sd, controlnet, inference_steps)
        self.frozen = {k: v for k, v in sd.params.items() if k != "scheduler"}
        self.resolution = resolution

    def __call__(
        self, controlnet_params: Any, validation: ValidationSet, per_prompt: int, seed: int
    ) -> Image.Image:
        params = {**self.frozen, "controlnet": controlnet_params}
        framed = validation.framed(self.resolution)
        rows = []
        for index, prompt in enumerate(framed.prompts):
            photo, depth = framed.photos[index], framed.images[index]
            mask = np.asarray(framed.masks[index])
            stack = [np.repeat(np.asarray(a)[None], per_prompt, axis=0) for a in (photo, mask, depth)]
            generated = self.sampler(params, [prompt] * per_prompt, *stack, strength=1.0, seed=seed + index)
            keep = (mask == 0)[..., None]
            repaired = [np.where(keep, np.asarray(photo), g) for g in generated]
            row = [(photo, "photo"), (Image.fromarray(mask), "mask"), (depth, "conditioning")]
            rows.append(row + [(Image.fromarray(r), prompt) for r in repaired])
        return contact_sheet(rows, tile=min(GRID_TILE, max(self.resolution, 128)))


def save_grid(grid: Image.Image, output_dir: Path, step: int) -> Path:
    path = output_dir / "validation" / f"step-{step:06d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def host_copy(tree: Any) -> Any:
    """A replicated global array -> numpy, from this host's own copy."""
    return jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0)), tree)
