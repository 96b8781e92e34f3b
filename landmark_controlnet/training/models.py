"""The frozen Stable Diffusion parts and the trainable ControlNet, as Flax modules + params."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax.core import unfreeze
from flax.traverse_util import flatten_dict, unflatten_dict

# The diffusers messages we drop: logged once per Flax class, and once per validation pipeline
# (validation grids are training previews; a safety checker has no place there).
DROPPED_MESSAGES = ("Flax classes are deprecated", "You have disabled the safety checker")
# The UNet parts a ControlNet starts from (whatever levels the UNet has, not a fixed four).
COPIED_FROM_UNET = ("conv_in", "time_embedding", "down_blocks_", "mid_block")
CONTROLNET_FIELDS = (
    "down_block_types",
    "only_cross_attention",
    "block_out_channels",
    "layers_per_block",
    "attention_head_dim",
    "num_attention_heads",
    "cross_attention_dim",
    "use_linear_projection",
    "flip_sin_to_cos",
    "freq_shift",
)


class _DropFlaxDeprecation(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(DROPPED_MESSAGES)


def silence_flax_deprecation() -> None:
    """Drop DROPPED_MESSAGES from diffusers' log; nothing else."""
    import diffusers.utils.logging as diffusers_logging

    diffusers_logging.get_logger("diffusers")  # creates the library's handler
    for handler in logging.getLogger("diffusers").handlers:
        if not any(isinstance(f, _DropFlaxDeprecation) for f in handler.filters):
            handler.addFilter(_DropFlaxDeprecation())


@dataclass
class StableDiffusion:
    tokenizer: Any
    text_encoder: Any
    vae: Any
    unet: Any
    scheduler: Any
    params: dict[str, Any]  # text_encoder, vae, unet, scheduler (state)


def load_stable_diffusion(
    path: str, revision: str | None = None, from_pt: bool = False, dtype: jnp.dtype = jnp.float32
) -> StableDiffusion:
    """Tokenizer, text encoder, VAE, UNet and the DDPM noise scheduler of a diffusers folder or repo."""
    from diffusers import FlaxAutoencoderKL, FlaxDDPMScheduler, FlaxUNet2DConditionModel
    from transformers import CLIPTokenizer, FlaxCLIPTextModel

    common = {"revision": revision, "from_pt": from_pt, "dtype": dtype}
    tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", revision=revision)
    text_encoder = FlaxCLIPTextModel.from_pretrained(path, subfolder="text_encoder", **common)
    vae, vae_params = FlaxAutoencoderKL.from_pretrained(path, subfolder="vae", **common)
    unet, unet_params = FlaxUNet2DConditionModel.from_pretrained(path, subfolder="unet", **common)
    scheduler, scheduler_state = FlaxDDPMScheduler.from_pretrained(
        path, subfolder="scheduler", revision=revision
    )
    params = {
        "text_encoder": text_encoder.params,
        "vae": vae_params,
        "unet": unet_params,
        "scheduler": scheduler_state,
    }
    return StableDiffusion(tokenizer, text_encoder, vae, unet, scheduler, params)


def controlnet_from_unet(unet: Any, unet_params: Any, rng: jax.Array, dtype: jnp.dtype = jnp.float32):
    """A ControlNet shaped like `unet`, its encoder copied from the UNet, the rest freshly initialised."""
    from diffusers import FlaxControlNetModel

    config = {key: unet.config[key] for key in CONTROLNET_FIELDS if key in unet.config}
    # An inpainting UNet takes 9 channels; its ControlNet sees the 4 latent channels only.
    config.update(in_channels=4, sample_size=unet.config.sample_size)
    controlnet = FlaxControlNetModel.from_config(config, dtype=dtype)
    params = flatten_dict(unfreeze(controlnet.init_weights(rng)))
    copied = flatten_dict(unfreeze(unet_params))
    for key in params:
        if key[0].startswith(COPIED_FROM_UNET) and key in copied and copied[key].shape == params[key].shape:
            params[key] = jnp.asarray(copied[key], jnp.float32)
    return controlnet, unflatten_dict(params)


def load_controlnet(path: str, revision: str | None = None, from_pt: bool = False, dtype=jnp.float32):
    from diffusers import FlaxControlNetModel

    controlnet, params = FlaxControlNetModel.from_pretrained(
        path, revision=revision, from_pt=from_pt, dtype=dtype
    )
    return controlnet, jax.tree_util.tree_map(lambda p: jnp.asarray(p, jnp.float32), unfreeze(params))


def cast_params(params: Any, dtype: jnp.dtype) -> Any:
    """Frozen weights in the compute dtype; the ControlNet's master weights stay float32."""
    return jax.tree_util.tree_map(
        lambda p: p.astype(dtype) if hasattr(p, "dtype") and jnp.issubdtype(p.dtype, jnp.floating) else p,
        params,
    )


def tokenize(tokenizer: Any, captions: list[str]) -> np.ndarray:
    ids = tokenizer(
        captions,
        max_length=tokenizer.model_max_length,
        padding="max_length",
        truncation=True,
        return_tensors="np",
    ).input_ids
    return ids.astype(np.int32)
