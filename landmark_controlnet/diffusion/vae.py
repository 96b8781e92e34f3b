"""Stable Diffusion's KL autoencoder (diffusers' `AutoencoderKL`) in Flax NNX, channel-last.

Parameter paths are diffusers' state-dict keys (`encoder.down_blocks.0.resnets.1.conv1.weight`, ...), so a
diffusers `vae/` folder loads with `weights.load_module` and no key table. Images are NHWC in [-1, 1];
latents are NHWC with `latent_channels` channels at 1/2**(len(block_out_channels)-1) of the image size.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from . import layers
from .config import ModelConfig, UnsupportedConfigError
from .options import DEFAULT_OPTIONS, ModelOptions
from .pretrained import PretrainedModule

Array = jax.Array

RESNET_EPS = 1e-6  # diffusers' Encoder/Decoder fix every norm's epsilon to this
LOGVAR_RANGE = (-30.0, 20.0)


@dataclasses.dataclass(frozen=True)
class AutoencoderKLConfig(ModelConfig):
    """The keys of a diffusers `vae/config.json`, with diffusers' defaults."""

    class_name: ClassVar[str] = "AutoencoderKL"
    # latents_mean/std are per-channel normalisers some VAEs ship; `to_latents` does not apply them, so a
    # config that sets them is refused rather than loaded into latents on the wrong scale.
    unsupported: ClassVar[Mapping[str, tuple[Any, ...]]] = {
        "act_fn": ("silu",),
        "latents_mean": (None,),
        "latents_std": (None,),
    }

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",)
    up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",)
    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 1
    act_fn: str = "silu"
    latent_channels: int = 4
    norm_num_groups: int = 32
    sample_size: int | tuple[int, ...] = 32
    scaling_factor: float = 0.18215
    shift_factor: float | None = None
    force_upcast: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    def __post_init__(self) -> None:
        _require_only("down_block_types", self.down_block_types, "DownEncoderBlock2D")
        _require_only("up_block_types", self.up_block_types, "UpDecoderBlock2D")
        blocks = len(self.block_out_channels)
        if len(self.down_block_types) != blocks or len(self.up_block_types) != blocks:
            raise UnsupportedConfigError(
                f"AutoencoderKL needs one down and one up block per block_out_channels entry, got "
                f"{len(self.down_block_types)} down, {len(self.up_block_types)} up, {blocks} widths"
            )

    @property
    def downscale(self) -> int:
        """How many image pixels one latent pixel spans along each side (8 for Stable Diffusion)."""
        return 2 ** (len(self.block_out_channels) - 1)


def _require_only(key: str, values: tuple[str, ...], allowed: str) -> None:
    other = sorted({value for value in values if value != allowed})
    if other:
        raise UnsupportedConfigError(f"{key}: {other} not supported (supported: only {allowed!r})")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DiagonalGaussian:
    """The encoder's posterior: independent normals per latent element, logvar clipped as diffusers does."""

    mean: Array
    logvar: Array

    @classmethod
    def from_moments(cls, moments: Array) -> DiagonalGaussian:
        """Split the last (channel) axis into mean and log-variance halves."""
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return cls(mean, jnp.clip(logvar, *LOGVAR_RANGE))

    @property
    def std(self) -> Array:
        return jnp.exp(0.5 * self.logvar)

    def sample(self, key: Array) -> Array:
        noise = jax.random.normal(key, self.mean.shape, self.mean.dtype)
        return self.mean + self.std * noise

    def mode(self) -> Array:
        return self.mean


def _resnet(
    in_channels: int, out_channels: int, groups: int, options: ModelOptions, rngs: nnx.Rngs
) -> layers.ResnetBlock2D:
    """The VAE's resnets take no time embedding."""
    return layers.ResnetBlock2D(in_channels, out_channels, None, groups, RESNET_EPS, options, rngs)


class VAEMidBlock(nnx.Module):
    """diffusers' UNetMidBlock2D as the VAE builds it: resnet, (single-head attention + residual), resnet."""

    def __init__(
        self, channels: int, groups: int, add_attention: bool, options: ModelOptions, rngs: nnx.Rngs
    ):
        self.resnets = nnx.List([_resnet(channels, channels, groups, options, rngs) for _ in range(2)])
        attention = (
            # One head as wide as the block: diffusers passes attention_head_dim=channels.
            layers.Attention(
                channels, 1, channels, options, rngs, qkv_bias=True, norm_groups=groups, norm_eps=RESNET_EPS
            )
            if add_attention
            else None
        )
        self.attentions = nnx.List([attention])

    def __call__(self, x: Array) -> Array:
        x = self.resnets[0](x)
        attention = self.attentions[0]
        if attention is not None:
            batch, height, width, channels = x.shape
            tokens = x.reshape(batch, height * width, channels)
            x = x + attention(tokens).reshape(x.shape)
        return self.resnets[1](x)


class DownEncoderBlock2D(nnx.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_layers: int,
        groups: int,
        add_downsample: bool,
        options: ModelOptions,
        rngs: nnx.Rngs,
    ):
        widths = [in_channels] + [out_channels] * (num_layers - 1)
        self.resnets = nnx.List([_resnet(w, out_channels, groups, options, rngs) for w in widths])
        # padding=0: the VAE pads right and bottom only before its stride-2 conv.
        self.downsamplers = (
            nnx.List([layers.Downsample2D(out_channels, 0, options, rngs)]) if add_downsample else None
        )

    def __call__(self, x: Array) -> Array:
        for resnet in self.resnets:
            x = resnet(x)
        return x if self.downsamplers is None else self.downsamplers[0](x)


class UpDecoderBlock2D(nnx.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_layers: int,
        groups: int,
        add_upsample: bool,
        options: ModelOptions,
        rngs: nnx.Rngs,
    ):
        widths = [in_channels] + [out_channels] * (num_layers - 1)
        self.resnets = nnx.List([_resnet(w, out_channels, groups, options, rngs) for w in widths])
        self.upsamplers = nnx.List([layers.Upsample2D(out_channels, options, rngs)]) if add_upsample else None

    def __call__(self, x: Array) -> Array:
        for resnet in self.resnets:
            x = resnet(x)
        return x if self.upsamplers is None else self.upsamplers[0](x)


class Encoder(nnx.Module):
    """Image (NHWC) to the posterior's moments: 2 * latent_channels channels (mean, then log-variance)."""

    def __init__(self, config: AutoencoderKLConfig, options: ModelOptions, rngs: nnx.Rngs):
        widths, groups = config.block_out_channels, config.norm_num_groups
        last = len(widths) - 1
        self.conv_in = layers.conv2d(config.in_channels, widths[0], options, rngs)
        self.down_blocks = nnx.List(
            [
                DownEncoderBlock2D(
                    widths[max(i - 1, 0)], width, config.layers_per_block, groups, i < last, options, rngs
                )
                for i, width in enumerate(widths)
            ]
        )
        self.mid_block = VAEMidBlock(widths[-1], groups, config.mid_block_add_attention, options, rngs)
        self.conv_norm_out = layers.GroupNorm(widths[-1], groups, RESNET_EPS, options, rngs)
        self.conv_out = layers.conv2d(widths[-1], 2 * config.latent_channels, options, rngs)

    def __call__(self, images: Array) -> Array:
        x = self.conv_in(images)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(jax.nn.silu(self.conv_norm_out(x)))


class Decoder(nnx.Module):
    """Latents (NHWC) to images: the encoder's widths in reverse, one more resnet per up block."""

    def __init__(self, config: AutoencoderKLConfig, options: ModelOptions, rngs: nnx.Rngs):
        widths, groups = tuple(reversed(config.block_out_channels)), config.norm_num_groups
        last = len(widths) - 1
        self.conv_in = layers.conv2d(config.latent_channels, widths[0], options, rngs)
        self.mid_block = VAEMidBlock(widths[0], groups, config.mid_block_add_attention, options, rngs)
        self.up_blocks = nnx.List(
            [
                UpDecoderBlock2D(
                    widths[max(i - 1, 0)], width, config.layers_per_block + 1, groups, i < last, options, rngs
                )
                for i, width in enumerate(widths)
            ]
        )
        self.conv_norm_out = layers.GroupNorm(widths[-1], groups, RESNET_EPS, options, rngs)
        self.conv_out = layers.conv2d(widths[-1], config.out_channels, options, rngs)

    def __call__(self, latents: Array) -> Array:
        x = self.mid_block(self.conv_in(latents))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(jax.nn.silu(self.conv_norm_out(x)))


# diffusers < 0.14 saved the mid-block attention under these names (e.g. SD 1.5's original vae/ weights).
_LEGACY_ATTENTION = re.compile(
    r"^((?:en|de)coder\.mid_block\.attentions\.\d+\.)(query|key|value|proj_attn)\."
)
_LEGACY_TO_CURRENT = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_ATTENTION_PROJECTION = re.compile(
    r"^(?:en|de)coder\.mid_block\.attentions\.\d+\.(?:to_[qkv]|to_out\.0)\.weight$"
)


class AutoencoderKL(PretrainedModule):
    """encode: images -> DiagonalGaussian; decode: latents -> images. Both NHWC.

    `to_latents`/`from_latents` convert between the autoencoder's latents and the diffusion model's
    (shifted and scaled to roughly unit variance). `config.force_upcast` is diffusers' flag for running
    the VAE in float32 (SDXL's VAE overflows in fp16); the compute dtype here is `options.dtype`.
    """

    config_class: ClassVar[type[ModelConfig]] = AutoencoderKLConfig

    def __init__(
        self, config: AutoencoderKLConfig, options: ModelOptions = DEFAULT_OPTIONS, *, rngs: nnx.Rngs
    ):
        self.config = config
        latent = config.latent_channels
        self.encoder = Encoder(config, options, rngs)
        self.decoder = Decoder(config, options, rngs)
        self.quant_conv = (
            layers.conv2d(2 * latent, 2 * latent, options, rngs, kernel_size=1)
            if config.use_quant_conv
            else None
        )
        self.post_quant_conv = (
            layers.conv2d(latent, latent, options, rngs, kernel_size=1)
            if config.use_post_quant_conv
            else None
        )

    def encode(self, images: Array) -> DiagonalGaussian:
        moments = self.encoder(images)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return DiagonalGaussian.from_moments(moments)

    def decode(self, latents: Array) -> Array:
        """The autoencoder's own latents (not `to_latents` output: undo that with `from_latents` first)."""
        if self.post_quant_conv is not None:
            latents = self.post_quant_conv(latents)
        return self.decoder(latents)

    def to_latents(self, encoded: DiagonalGaussian | Array, key: Array | None = None) -> Array:
        """The diffusion model's latents: (z - shift_factor) * scaling_factor.

        `encoded` is a sample already drawn, or the posterior: sampled with `key`, its mode without one.
        """
        if isinstance(encoded, DiagonalGaussian):
            encoded = encoded.mode() if key is None else encoded.sample(key)
        return (encoded - self._shift) * self.config.scaling_factor

    def from_latents(self, latents: Array) -> Array:
        """The inverse of `to_latents`: what `decode` takes."""
        return latents / self.config.scaling_factor + self._shift

    @property
    def _shift(self) -> float:
        return 0.0 if self.config.shift_factor is None else self.config.shift_factor

    @staticmethod
    def legacy_key(key: str) -> str:
        """diffusers < 0.14 named the mid-block attention query/key/value/proj_attn, now to_q/k/v/out.0."""
        match = _LEGACY_ATTENTION.match(key)
        if match is None:
            return key
        prefix, old = match.groups()
        return prefix + _LEGACY_TO_CURRENT[old] + key[match.end() - 1 :]

    @staticmethod
    def legacy_tensor(key: str, tensor: np.ndarray) -> np.ndarray:
        """Today's layout of a tensor saved under `key` (its name after `legacy_key`).

        Older checkpoints kept the attention projections as 1x1 convolutions, (out, in, 1, 1), or
        proj_attn as a 1-wide conv1d, (out, in, 1); the model holds them as linear (out, in) weights.
        """
        if _ATTENTION_PROJECTION.match(key) and tensor.ndim > 2 and all(n == 1 for n in tensor.shape[2:]):
            return tensor.reshape(tensor.shape[:2])
        return tensor
