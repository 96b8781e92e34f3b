"""ControlNetModel for SD 1.x/2.x and SDXL: the UNet's down path plus a conditioning-image encoder
and one zero-initialised 1x1 conv per down-path output (diffusers' config keys and parameter names)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from .config import ModelConfig
from .layers import conv2d
from .options import DEFAULT_OPTIONS, ModelOptions
from .unet_blocks import DownPath, DownPathConfig, TextTimeConditioning

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ControlNetConfig(DownPathConfig):
    class_name: ClassVar[str] = "ControlNetModel"

    conditioning_channels: int = 3
    conditioning_embedding_out_channels: tuple[int, ...] = (16, 32, 96, 256)
    controlnet_conditioning_channel_order: str = "rgb"
    global_pool_conditions: bool = False

    unsupported: ClassVar = {
        **DownPathConfig.unsupported,
        "controlnet_conditioning_channel_order": ("rgb", "bgr"),
    }

    @classmethod
    def from_unet(cls, unet_config: ModelConfig, **changes) -> ControlNetConfig:
        """A ControlNet shaped like the UNet's down path (diffusers' `ControlNetModel.from_unet`)."""
        shared = {f.name for f in dataclasses.fields(DownPathConfig)} - {"extra"}
        values = {name: getattr(unet_config, name) for name in shared}
        return cls(**{**values, **changes})


class ControlNetOutput(NamedTuple):
    """Residuals for the UNet: one per down-path output (conv_in first), and the mid block's."""

    down_block_residuals: tuple[Array, ...]
    mid_block_residual: Array


class ControlNetConditioningEmbedding(nnx.Module):
    """The conditioning image (8x the latent size) down to the latent grid: 3x3 convs with SiLU, three of
    them stride 2, and a zero-initialised output conv."""

    def __init__(
        self, embedding_channels: int, conditioning_channels: int, widths: tuple[int, ...], options, rngs
    ):
        self.conv_in = conv2d(conditioning_channels, widths[0], options, rngs)
        convs = []
        for width, wider in zip(widths[:-1], widths[1:], strict=True):
            convs += [conv2d(width, width, options, rngs), conv2d(width, wider, options, rngs, stride=2)]
        self.blocks = nnx.List(convs)
        self.conv_out = conv2d(widths[-1], embedding_channels, options, rngs)

    def __call__(self, image: Array) -> Array:
        h = jax.nn.silu(self.conv_in(image))
        for conv in self.blocks:
            h = jax.nn.silu(conv(h))
        return self.conv_out(h)


class ControlNetModel(DownPath):
    config_class = ControlNetConfig

    def __init__(self, config: ControlNetConfig, options: ModelOptions = DEFAULT_OPTIONS, *, rngs: nnx.Rngs):
        self.config = config
        self.build_down_path(config, options, rngs)
        self.controlnet_cond_embedding = ControlNetConditioningEmbedding(
            config.block_out_channels[0],
            config.conditioning_channels,
            config.conditioning_embedding_out_channels,
            options,
            rngs,
        )
        self.controlnet_down_blocks = nnx.List(
            [conv2d(c, c, options, rngs, kernel_size=1) for c in self._down_path_widths(config)]
        )
        mid = config.block_out_channels[-1]
        self.controlnet_mid_block = conv2d(mid, mid, options, rngs, kernel_size=1)

    @staticmethod
    def _down_path_widths(config: ControlNetConfig) -> list[int]:
        """The channel width of each down-path output: conv_in, every resnet layer, every downsampler."""
        widths = [config.block_out_channels[0]]
        for i, width in enumerate(config.block_out_channels):
            widths += [width] * config.layers(i)
            if i < config.blocks - 1:
                widths.append(width)
        return widths

    def __call__(
        self,
        sample: Array,
        timesteps: Array,
        encoder_hidden_states: Array,
        controlnet_cond: Array,
        conditioning_scale: float | Array = 1.0,
        added_conditioning: TextTimeConditioning | None = None,
    ) -> ControlNetOutput:
        """`controlnet_cond` is the NHWC conditioning image in [0, 1], 8x the latent size."""
        if self.config.controlnet_conditioning_channel_order == "bgr":
            controlnet_cond = jnp.flip(controlnet_cond, axis=-1)
        cond = self.controlnet_cond_embedding(controlnet_cond.astype(self.options.dtype))
        _, mid, skips = self.run_down_path(
            self.config, sample, timesteps, encoder_hidden_states, added_conditioning, lambda h: h + cond
        )
        down = tuple(
            conv(s) * conditioning_scale for conv, s in zip(self.controlnet_down_blocks, skips, strict=True)
        )
        mid = self.controlnet_mid_block(mid) * conditioning_scale
        if self.config.global_pool_conditions:
            down = tuple(jnp.mean(r, axis=(1, 2), keepdims=True) for r in down)
            mid = jnp.mean(mid, axis=(1, 2), keepdims=True)
        return ControlNetOutput(down, mid)
