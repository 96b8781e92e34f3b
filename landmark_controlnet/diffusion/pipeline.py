"""A Stable Diffusion 1.x/2.x or SDXL pipeline folder as the project's models, and ControlNet-guided sampling.

    sd = load_stable_diffusion("stable-diffusion-v1-5/stable-diffusion-v1-5")
    controlnet = from_pretrained(ControlNetModel, "out/controlnet")
    generator = ControlNetGenerator(sd, nnx.graphdef(controlnet), steps=30)
    images = generator(nnx.to_pure_dict(nnx.state(controlnet)), ["a hand"], conditioning, seed=0)

The folder is what diffusers writes (`model_index.json`, `unet/`, `vae/`, `text_encoder/`, `tokenizer/`,
`scheduler/`), with PyTorch safetensors weights, local or a Hub repo id. The tokenizer is transformers'
CLIPTokenizer (tokenizers only: no torch). Images are NHWC; pixels in [-1, 1], conditioning in [0, 1].
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Unpack

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from conditioners.errors import OptionError

from .clip import CLIPTextModel, CLIPTextModelWithProjection, encode_prompt, encode_sdxl_prompt
from .loading import (
    MissingFileError,
    PipelineLoad,
    component_loader,
    index_says,
    is_sdxl,
    open_folder,
)
from .pixels import conditioning_input, mask_input, photo_input
from .schedulers import DDIMSampler, NoiseSchedule, sample
from .unet import TextTimeConditioning, UNet2DConditionModel
from .vae import AutoencoderKL

SCHEDULER_CONFIG = "scheduler_config.json"
TOKENIZER_FILES = ("vocab.json", "merges.txt")
OPTIONAL_TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json")
INPAINTING_CHANNELS = 9  # latents (4), mask (1), masked-photo latents (4)


@dataclass
class StableDiffusion:
    """The frozen parts of a Stable Diffusion 1.x/2.x or SDXL pipeline, and its scheduler's config.

    SDXL has a second tokenizer and text encoder (with projection); SD 1.x/2.x leave them None."""

    tokenizer: Any
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    scheduler_config: dict[str, Any] = field(default_factory=dict)
    tokenizer_2: Any = None
    text_encoder_2: CLIPTextModelWithProjection | None = None

    @property
    def is_sdxl(self) -> bool:
        return self.text_encoder_2 is not None

    def text_models(self) -> dict[str, nnx.Module]:
        """The text encoders by their folder name."""
        models = {"text_encoder": self.text_encoder}
        if self.text_encoder_2 is not None:
            models["text_encoder_2"] = self.text_encoder_2
        return models

    def frozen_models(self) -> dict[str, nnx.Module]:
        """Every model a ControlNet samples or trains beside, by its folder name."""
        return {**self.text_models(), "vae": self.vae, "unet": self.unet}

    def token_ids(self, captions: list[str]) -> dict[str, np.ndarray]:
        """Each text encoder's token ids, by its folder name."""
        ids = {"text_encoder": tokenize(self.tokenizer, captions)}
        if self.tokenizer_2 is not None:
            ids["text_encoder_2"] = tokenize(self.tokenizer_2, captions)
        return ids

    @property
    def noise_schedule(self) -> NoiseSchedule:
        return NoiseSchedule.from_config(self.scheduler_config)

    @property
    def is_inpainting(self) -> bool:
        return self.unet.config.in_channels == INPAINTING_CHANNELS

    def check_inpainting(self, where: str) -> None:
        """Refuse, naming `where`, a base model whose UNet cannot inpaint (hand repair needs one)."""
        if not self.is_inpainting:
            raise OptionError(
                f"{where} is not an inpainting model: its UNet takes {self.unet.config.in_channels} input "
                f"channels, not {INPAINTING_CHANNELS} (latents, mask, masked-image latents). Use an "
                "inpainting Stable Diffusion, e.g. a copy of stable-diffusion-inpainting."
            )


def load_stable_diffusion(
    location: str | os.PathLike,
    **arguments: Unpack[PipelineLoad],
) -> StableDiffusion:
    """Tokenizer(s), text encoder(s), VAE, UNet and scheduler config of a diffusers pipeline folder or
    repo; an SDXL pipeline (its `model_index.json` names a text_encoder_2) also gets its second pair.

    `abstract=True` reads the configs alone: the models hold ShapeDtypeStructs (sizing, `--dry_run`)."""
    load = component_loader(**arguments)
    revision, token = arguments.get("revision"), arguments.get("token")
    second = {}
    if index_says(is_sdxl, location, revision, token):  # a bare folder of the five parts: SD 1.x/2.x
        second = {
            "tokenizer_2": load_tokenizer(location, "tokenizer_2", revision=revision, token=token),
            "text_encoder_2": load(CLIPTextModelWithProjection, location, subfolder="text_encoder_2"),
        }
    return StableDiffusion(
        **shared_parts(location, load, revision, token),
        unet=load(UNet2DConditionModel, location, subfolder="unet"),
        **second,
    )


def shared_parts(
    location: str | os.PathLike, load: Callable[..., Any], revision: str | None, token: str | bool | None
) -> dict[str, Any]:
    """What every pipeline here has, by its field name: the CLIP tokenizer and text encoder, the VAE
    (each model loaded with `load`, a `component_loader`) and the scheduler config."""
    return {
        "tokenizer": load_tokenizer(location, revision=revision, token=token),
        "text_encoder": load(CLIPTextModel, location, subfolder="text_encoder"),
        "vae": load(AutoencoderKL, location, subfolder="vae"),
        "scheduler_config": read_scheduler_config(location, revision=revision, token=token),
    }


def load_tokenizer(
    location: str | os.PathLike, subfolder: str = "tokenizer", revision: str | None = None, token=None
):
    """transformers' CLIPTokenizer from a pipeline's tokenizer folder (from the Hub: its files only)."""
    from transformers import CLIPTokenizer

    folder = open_folder(location, subfolder, revision, token)
    fetched = {name: folder.fetch(name) for name in (*TOKENIZER_FILES, *OPTIONAL_TOKENIZER_FILES)}
    missing = [name for name in TOKENIZER_FILES if fetched[name] is None]
    if missing:
        raise MissingFileError(
            f"{folder.describe()}: {', '.join(missing)} not found (no CLIP tokenizer there)"
        )
    return CLIPTokenizer.from_pretrained(str(fetched["vocab.json"].parent))


def read_scheduler_config(
    location: str | os.PathLike, revision: str | None = None, token: str | bool | None = None
) -> dict[str, Any]:
    folder = open_folder(location, "scheduler", revision, token)
    path = folder.fetch(SCHEDULER_CONFIG)
    if path is None:
        raise MissingFileError(f"{folder.describe()}: {SCHEDULER_CONFIG} not found")
    return json.loads(path.read_text())


def tokenize(tokenizer: Any, captions: list[str]) -> np.ndarray:
    """(len(captions), model_max_length) int32 ids, padded and truncated as Stable Diffusion was trained."""
    ids = tokenizer(
        captions,
        max_length=tokenizer.model_max_length,
        padding="max_length",
        truncation=True,
        return_tensors="np",
    ).input_ids
    return ids.astype(np.int32)


def inpainting_channels(vae: AutoencoderKL, mask: jax.Array, pixels: jax.Array, latent_hw) -> jax.Array:
    """What an inpainting UNet sees beside the latents: the mask at latent size and the masked photo's
    latents, (B, h, w, 5).

    `mask` is (B, H, W, 1) with 1 = repaint; `pixels` (B, H, W, 3) in [-1, 1]. The masked photo keeps
    the pixels to preserve and zeroes the rest, as Stable Diffusion inpainting was trained."""
    masked = pixels * (mask < 0.5).astype(pixels.dtype)
    masked_latents = vae.to_latents(vae.encode(masked))
    small_mask = jax.image.resize(mask, (mask.shape[0], *latent_hw, mask.shape[-1]), "nearest")
    return jnp.concatenate([small_mask.astype(masked_latents.dtype), masked_latents], axis=-1)


def controlnet_prediction(
    unet: UNet2DConditionModel,
    controlnet: nnx.Module,
    latents: jax.Array,
    timesteps: jax.Array,
    text: jax.Array,
    conditioning: jax.Array,
    strength: float | jax.Array = 1.0,
    unet_extra: jax.Array | None = None,
    added: TextTimeConditioning | None = None,
) -> jax.Array:
    """The UNet's output steered by the ControlNet's residuals (scaled by `strength`).

    `unet_extra` (inpainting) is concatenated to the UNet's input channels; the ControlNet sees the
    latents alone. `added` is SDXL's pooled text and size conditioning, given to both."""
    residuals = controlnet(
        latents, timesteps, text, conditioning, conditioning_scale=strength, added_conditioning=added
    )
    unet_input = latents if unet_extra is None else jnp.concatenate([latents, unet_extra], axis=-1)
    return unet(
        unet_input,
        timesteps,
        text,
        added_conditioning=added,
        down_block_additional_residuals=residuals.down_block_residuals,
        mid_block_additional_residual=residuals.mid_block_residual,
    )


class ControlNetGenerator:
    """Text-to-image (or, given photos and masks, inpainting) with a ControlNet: DDIM with classifier-free
    guidance, the whole loop one jitted function, compiled once per batch shape.

    The ControlNet's parameters come with each call (training updates them); the frozen models' are
    held. Returns (B, H, W, 3) uint8; H and W must be multiples of 8 x 2^(UNet levels - 1).
    """

    def __init__(
        self, sd: StableDiffusion, controlnet_graph: Any, steps: int = 30, guidance_scale: float = 7.5
    ):
        self.sd = sd
        self.plan = DDIMSampler.from_config(sd.scheduler_config).plan(steps)
        self.guidance_scale = guidance_scale
        split = {name: nnx.split(model) for name, model in sd.frozen_models().items()}
        self._graphs = {name: graph for name, (graph, _) in split.items()} | {"controlnet": controlnet_graph}
        self._frozen = {name: state for name, (_, state) in split.items()}
        self._run = jax.jit(self._generate)

    def __call__(
        self,
        controlnet_params: Any,
        prompts: list[str],
        conditioning: np.ndarray,
        seed: int = 0,
        strength: float = 1.0,
        photos: np.ndarray | None = None,
        masks: np.ndarray | None = None,
        negative_prompts: list[str] | None = None,
    ) -> np.ndarray:
        """`conditioning` and `photos` (B, H, W, 3) uint8, `masks` (B, H, W), non-zero = repaint;
        `negative_prompts` (one a prompt) guide away from them instead of from the empty prompt."""
        if (photos is None) != (masks is None):
            raise ValueError("inpainting needs both photos and masks")
        inpaint = None
        if photos is not None:
            inpaint = (photo_input(photos), mask_input(masks)[..., None])
        negatives = list(negative_prompts) if negative_prompts else [""] * len(prompts)
        text_ids = {k: jnp.asarray(v) for k, v in self.sd.token_ids(negatives + list(prompts)).items()}
        cond = conditioning_input(conditioning)
        images = self._run(
            self._frozen, controlnet_params, text_ids, cond, inpaint, jnp.float32(strength),
            jax.random.PRNGKey(seed), jnp.bool_(not any(negatives)),
        )  # fmt: skip
        return np.asarray(images)

    def _generate(self, frozen, controlnet_params, text_ids, cond, inpaint, strength, key, zero_negative):
        models = {name: nnx.merge(self._graphs[name], state) for name, state in frozen.items()}
        vae, unet = models["vae"], models["unet"]
        controlnet = nnx.merge(self._graphs["controlnet"], controlnet_params)
        batch, height, width = cond.shape[:3]
        text, added = self._encode(models, text_ids, height, width, zero_negative)
        latent_hw = (height // vae.config.downscale, width // vae.config.downscale)
        latents = jax.random.normal(key, (batch, *latent_hw, unet.config.out_channels))
        latents = latents * self.plan.init_noise_sigma
        extra = None
        if inpaint is not None:  # the same at every step: built once, doubled for guidance
            pixels, mask = inpaint
            extra = jnp.tile(inpainting_channels(vae, mask, pixels, latent_hw), (2, 1, 1, 1))
        doubled_cond = jnp.concatenate([cond, cond])

        def denoise(x: jax.Array, timestep: jax.Array) -> jax.Array:
            doubled = jnp.concatenate([x, x])
            timesteps = jnp.broadcast_to(timestep, (doubled.shape[0],))
            output = controlnet_prediction(
                unet, controlnet, doubled, timesteps, text, doubled_cond, strength, extra, added
            )
            unconditional, conditional = jnp.split(output.astype(jnp.float32), 2)
            return unconditional + self.guidance_scale * (conditional - unconditional)

        latents = sample(self.plan, denoise, latents, use_scan=True)
        decoded = vae.decode(vae.from_latents(latents)).astype(jnp.float32)
        return ((decoded / 2 + 0.5).clip(0, 1) * 255).round().astype(jnp.uint8)

    @staticmethod
    def _encode(models: dict, text_ids: dict, height: int, width: int, zero_negative: jax.Array):
        """(context, added conditioning) for the unconditional half, then the prompts' half.

        SDXL: both encoders, and the size ids of an uncropped picture generated at its own size
        (original = target = (height, width)). Its unconditional half is zeros, as SDXL's pipeline
        gives an empty negative prompt (`force_zeros_for_empty_prompt`); a negative prompt is encoded."""
        if "text_encoder_2" not in models:
            return encode_prompt(models["text_encoder"], text_ids["text_encoder"]), None
        context, pooled = encode_sdxl_prompt(
            models["text_encoder"],
            models["text_encoder_2"],
            text_ids["text_encoder"],
            text_ids["text_encoder_2"],
        )
        half = context.shape[0] // 2
        context = jnp.concatenate([jnp.where(zero_negative, 0.0, context[:half]), context[half:]])
        pooled = jnp.concatenate([jnp.where(zero_negative, 0.0, pooled[:half]), pooled[half:]])
        time_ids = jnp.tile(
            jnp.asarray([[height, width, 0, 0, height, width]], jnp.float32), (pooled.shape[0], 1)
        )
        return context, TextTimeConditioning(pooled, time_ids)
