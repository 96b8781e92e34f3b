"""`landmark-controlnet refine-hands`: repair malformed hands in a generated image, HandRefiner style.

Detect the hands (MediaPipe), render a plausible hand as a depth map and mask each hand
(`hand_depth_mask`), repaint inside the mask with an inpainting Stable Diffusion steered by a
depth ControlNet at the given control strength, and composite the result back: every pixel
outside the mask is the input's own. The models are loaded only when a hand is found.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import cv2
import numpy as np
from PIL import Image

import conditioners
from conditioners import Detection
from conditioners.images import Framing, center_crop_framing, load_image, resize_and_crop, uncrop
from conditioners.preview import contact_sheet

LATENT_MULTIPLE = 64  # SD's UNet needs sides divisible by 64 pixels (8 latent pixels x 3 downsamples)


@dataclass
class Repair:
    """One image's repair: the result at the input's size and what produced it."""

    photo: np.ndarray  # (h, w, 3) uint8, upright input
    result: np.ndarray  # (h, w, 3) uint8, equal to `photo` outside `mask`
    depth: np.ndarray  # (h, w, 3) uint8 conditioning image
    mask: np.ndarray  # (h, w) uint8, 255 = repainted
    detection: Detection
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def hands(self) -> int:
        return len(self.detection.instances)

    def preview(self, tile: int = 256) -> Image.Image:
        cells = [
            (self.photo, "input"),
            (self.depth, "hand depth"),
            (self.mask, "mask"),
            (self.result, "repaired"),
        ]
        return contact_sheet([[(Image.fromarray(a), caption) for a, caption in cells]], tile=tile)


def working_size(size: tuple[int, int], resolution: int) -> tuple[int, int]:
    """`size` scaled so its long side is about `resolution`, each side a multiple of 64."""
    scale = resolution / max(size)
    return tuple(
        max(LATENT_MULTIPLE, round(side * scale / LATENT_MULTIPLE) * LATENT_MULTIPLE) for side in size
    )


def framed_drawing(draw: Callable[[tuple[int, int]], np.ndarray], framing: Framing) -> np.ndarray:
    """A drawing aligned with `resize_and_crop(photo, framing)`: drawn crisp at the resized size, then
    cropped. Drawn from the input's detection, so pads set in input pixels scale with the picture."""
    left, top, right, bottom = framing.box
    return draw(framing.resized_size)[top:bottom, left:right]


def composite(photo: np.ndarray, generated: np.ndarray, mask: np.ndarray, feather: float) -> np.ndarray:
    """`generated` inside the mask, blended over `feather` px towards its edge; `photo` exactly outside."""
    inside = mask > 0
    alpha = inside.astype(np.float32)
    if feather > 0:
        radius = max(1, round(feather))
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2)
        core = cv2.erode(inside.astype(np.uint8), kernel).astype(np.float32)
        alpha = cv2.GaussianBlur(core, (0, 0), feather / 2) * inside
    blended = photo * (1 - alpha[..., None]) + generated * alpha[..., None]
    return np.where(inside[..., None], np.round(blended), photo).astype(np.uint8)


class HandRefiner:
    """Loads the base model and ControlNet once; call it on as many images as you like."""

    def __init__(
        self,
        base_model: str,
        controlnet: str,
        *,
        steps: int = 30,
        guidance_scale: float = 7.5,
        conditioner_options: dict[str, Any] | None = None,
    ):
        from .diffusion.loading import open_folder

        for location in (controlnet, base_model):  # a mistyped path fails now, not after detection
            open_folder(location)
        self.base_model, self.controlnet_path = base_model, controlnet
        self.steps, self.guidance_scale = steps, guidance_scale
        self.conditioner = conditioners.get("hand_depth_mask", **(conditioner_options or {}))
        self._sampler: Any = None
        self._controlnet_params: Any = None

    def _load(self) -> None:
        from flax import nnx

        from .diffusion import ControlNetModel, from_pretrained
        from .diffusion.pipeline import ControlNetGenerator, load_stable_diffusion

        sd = load_stable_diffusion(self.base_model)
        sd.check_inpainting(self.base_model)
        graph, params = nnx.split(from_pretrained(ControlNetModel, self.controlnet_path))
        self._controlnet_params = nnx.to_pure_dict(params)
        self._sampler = ControlNetGenerator(sd, graph, self.steps, self.guidance_scale)

    def __call__(
        self,
        image: Any,
        prompt: str,
        strength: float = 0.55,
        seed: int = 0,
        resolution: int = 512,
        feather: float = 8,
    ) -> Repair:
        photo = load_image(image).pixels  # decoded once; detection downscales this array
        detection = self.conditioner.detect(photo, name=str(image))
        size = detection.size
        depth = self.conditioner.draw(detection)
        mask = self.conditioner.render_extra("mask", detection)
        settings = {"prompt": prompt, "strength": strength, "seed": seed, "resolution": resolution}
        if detection.skipped or not mask.any():
            return Repair(photo, photo.copy(), depth, mask, detection, settings)
        if self._sampler is None:
            self._load()
        # Centre-cropped, not squashed, to the multiple-of-64 work size: a few pixels are lost at two
        # borders, and there the result keeps the input's own.
        framing = center_crop_framing(size, working_size(size, resolution))
        generated = self._sampler(
            self._controlnet_params,
            [prompt],
            framed_drawing(partial(self.conditioner.draw, detection), framing)[None],
            seed,
            strength,
            photos=np.asarray(resize_and_crop(photo, framing, Image.Resampling.LANCZOS))[None],
            masks=framed_drawing(partial(self.conditioner.render_extra, "mask", detection), framing)[None],
        )[0]
        generated = np.asarray(uncrop(generated, framing, photo, Image.Resampling.LANCZOS))
        return Repair(photo, composite(photo, generated, mask, feather), depth, mask, detection, settings)


def run_refine_hands(args: Any) -> int:
    """The CLI command: one image in, the repaired image (and optionally a preview sheet) out."""
    options = {"padding": args.padding, "min_padding": args.min_padding, "tight_mask": args.tight_mask}
    refiner = HandRefiner(
        args.base_model,
        args.controlnet,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        conditioner_options=options,
    )
    repair = refiner(args.image, args.prompt, args.strength, args.seed, args.resolution, args.feather)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(repair.result).save(args.out)
    if args.preview:
        repair.preview().save(args.preview)
    if not repair.hands:
        print(f"{args.image}: no hand found ({repair.detection.skipped}); written unchanged", file=sys.stderr)
    summary = {
        "out": str(args.out),
        "hands": repair.hands,
        "small_hands": repair.detection.extra.get("small_hands", []),
        "masked_fraction": round(float((repair.mask > 0).mean()), 4),
        "preview": str(args.preview) if args.preview else None,
        **repair.settings,
    }
    print(json.dumps(summary))
    return 0
