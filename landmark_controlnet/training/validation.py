"""Validation images with the project's ControlNet sampler, as a grid PNG and in the run's logs.

Runs on process 0 only, on its first device, with a host copy of the weights: a computation
on the global (all-host) arrays would wait for hosts that are not validating.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from PIL import Image

from conditioners.errors import OptionError
from conditioners.preview import contact_sheet
from landmark_controlnet.diffusion.flux_pipeline import Flux, FluxControlNetGenerator
from landmark_controlnet.diffusion.pipeline import ControlNetGenerator, StableDiffusion

from .data import decode, frame, prepare_mask

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
            raise OptionError("--validation_prompt and --validation_image go together")
        if len(images) == 1:
            images = images * len(prompts)
        elif len(prompts) == 1:
            prompts = prompts * len(images)
        elif len(prompts) != len(images):
            raise OptionError("give one --validation_image, one --validation_prompt, or as many of each")
        return cls(list(prompts), [decode(path, path) for path in images])  # decoded as training decodes

    def framed(self, resolution: int) -> ValidationSet:
        """Every picture framed exactly as training frames a row's (centre-cropped, never squashed);
        masks come back binary, 0 or 255, as training thresholds them."""
        images = [frame(image.convert("RGB"), resolution) for image in self.images]
        photos = [frame(photo.convert("RGB"), resolution) for photo in self.photos or []]
        masks = [_mask_image(prepare_mask(mask.convert("L"), resolution)) for mask in self.masks or []]
        return ValidationSet(self.prompts, images, photos or None, masks or None)


def _mask_image(mask: np.ndarray) -> Image.Image:
    """(H, W, 1) uint8, 255 = repaint -> an L image."""
    return Image.fromarray(mask[..., 0], "L")


class Validator:
    """A grid of generated images per validation prompt, with the project's own ControlNet sampler.

    For an inpainting run each row shows the photo, its mask and the conditioning image, then the photo
    repainted inside the mask and composited back."""

    def __init__(self, generator: Any, resolution: int):
        self.generator = generator  # a ControlNetGenerator, or a FluxControlNetGenerator's call
        self.resolution = resolution

    @classmethod
    def for_base(cls, base: StableDiffusion | Flux, controlnet_graph: Any, resolution: int, args: Any):
        """The sampler of the base model's family, --num_inference_steps each; FLUX.1 with
        --guidance_scale, --max_sequence_length and --control_mode."""
        steps = args.num_inference_steps
        if not isinstance(base, Flux):
            return cls(ControlNetGenerator(base, controlnet_graph, steps), resolution)
        generator = FluxControlNetGenerator(
            base, controlnet_graph, steps, args.guidance_scale, args.max_sequence_length
        )  # a union ControlNet's --control_mode goes with every call
        return cls(partial(generator, control_mode=args.control_mode), resolution)

    def __call__(
        self, controlnet_params: Any, validation: ValidationSet, per_prompt: int, seed: int
    ) -> Image.Image:
        framed = validation.framed(self.resolution)
        rows = []
        for index, (prompt, conditioning) in enumerate(zip(framed.prompts, framed.images, strict=True)):

            def repeated(picture: Image.Image) -> np.ndarray:
                return np.repeat(np.asarray(picture)[None], per_prompt, axis=0)

            inpaint = {}
            if framed.photos:
                inpaint = {"photos": repeated(framed.photos[index]), "masks": repeated(framed.masks[index])}
            generated = self.generator(
                controlnet_params, [prompt] * per_prompt, repeated(conditioning), seed + index, **inpaint
            )
            rows.append(self._row(framed, index, conditioning, generated, prompt))
        return contact_sheet(rows, tile=min(GRID_TILE, max(self.resolution, 128)))

    @staticmethod
    def _row(framed: ValidationSet, index: int, conditioning, generated: np.ndarray, prompt: str) -> list:
        if not framed.photos:
            return [(conditioning, "conditioning")] + [(Image.fromarray(g), prompt) for g in generated]
        photo, mask = framed.photos[index], framed.masks[index]
        keep = (np.asarray(mask) == 0)[..., None]
        repaired = [np.where(keep, np.asarray(photo), g) for g in generated]
        row = [(photo, "photo"), (mask, "mask"), (conditioning, "conditioning")]
        return row + [(Image.fromarray(r), prompt) for r in repaired]


def save_grid(grid: Image.Image, output_dir: Path, step: int) -> Path:
    path = output_dir / "validation" / f"step-{step:06d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def host_copy(tree: Any) -> Any:
    """Global arrays -> numpy: a replicated one from this host's own copy, a sharded one gathered.

    On several hosts, gathering is a collective: every process must call this, not only process 0."""

    def copy(x: jax.Array) -> np.ndarray:
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        if x.is_fully_addressable:
            return np.asarray(x)
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree_util.tree_map(copy, tree)
