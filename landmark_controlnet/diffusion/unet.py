"""UNet2DConditionModel: SD 1.x, SD 2.x (linear projection, per-block heads), SDXL (text_time
add-embeds, transformer_layers_per_block lists) and the 9-channel inpainting UNet, which is only
in_channels=9."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar

import jax
from flax import nnx

from .config import UnsupportedConfigError, per_block
from .layers import GroupNorm, call_block, conv2d
from .options import DEFAULT_OPTIONS, ModelOptions
from .unet_blocks import (
    CROSS_ATTENTION_UP,
    PLAIN_UP,
    AttentionSpec,
    DownPath,
    DownPathConfig,
    TextTimeConditioning,
    UpBlock,
    check_block_types,
)

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class UNetConfig(DownPathConfig):
    class_name: ClassVar[str] = "UNet2DConditionModel"

    out_channels: int = 4
    sample_size: int | None = None
    up_block_types: tuple[str, ...] = (PLAIN_UP,) + (CROSS_ATTENTION_UP,) * 3
    reverse_transformer_layers_per_block: tuple | None = None

    def up_attention(self, up_index: int, is_cross_attention: bool, layers: int) -> AttentionSpec | None:
        """Up block i mirrors down block blocks-1-i, unless the config lists reversed depths itself."""
        spec = self.attention(self.blocks - 1 - up_index, is_cross_attention, layers)
        if spec is None or self.reverse_transformer_layers_per_block is None:
            return spec
        depth = self.reverse_transformer_layers_per_block[up_index]
        return dataclasses.replace(spec, layers=per_block(depth, layers))


class UNet2DConditionModel(DownPath):
    """Noise prediction from NHWC latents, timesteps and text context (plus SDXL's added conditioning)."""

    config_class = UNetConfig

    def __init__(self, config: UNetConfig, options: ModelOptions = DEFAULT_OPTIONS, *, rngs: nnx.Rngs):
        check_block_types(config.up_block_types, (CROSS_ATTENTION_UP, PLAIN_UP), "up_block_types")
        self.config = config
        self.build_down_path(config, options, rngs)
        self.up_blocks = nnx.List(self._build_up_blocks(config, options, rngs))
        self.conv_norm_out = GroupNorm(
            config.block_out_channels[0], config.norm_num_groups, config.norm_eps, options, rngs
        )
        self.conv_out = conv2d(config.block_out_channels[0], config.out_channels, options, rngs)

    @staticmethod
    def _build_up_blocks(config: UNetConfig, options: ModelOptions, rngs: nnx.Rngs) -> list[UpBlock]:
        if len(config.up_block_types) != config.blocks:
            raise UnsupportedConfigError("up_block_types and block_out_channels differ in length")
        channels = tuple(reversed(config.block_out_channels))
        blocks = []
        for i, block_type in enumerate(config.up_block_types):
            out_channels = channels[i]
            deeper = channels[min(i + 1, config.blocks - 1)]
            layers = config.layers(config.blocks - 1 - i) + 1
            # The last resnet takes the skip from the level above (the previous block's downsampler input).
            skip_channels = (out_channels,) * (layers - 1) + (deeper,)
            blocks.append(
                UpBlock(
                    skip_channels,
                    prev_channels=channels[max(i - 1, 0)],
                    out_channels=out_channels,
                    temb_channels=config.time_embed_dim,
                    attention=config.up_attention(i, block_type == CROSS_ATTENTION_UP, layers),
                    add_upsample=i < config.blocks - 1,
                    config=config,
                    options=options,
                    rngs=rngs,
                )
            )
        return blocks

    def __call__(
        self,
        sample: Array,
        timesteps: Array,
        encoder_hidden_states: Array,
        added_conditioning: TextTimeConditioning | None = None,
        down_block_additional_residuals: Sequence[Array] | None = None,
        mid_block_additional_residual: Array | None = None,
    ) -> Array:
        self._check_size(sample)
        temb, h, skips = self.run_down_path(
            self.config, sample, timesteps, encoder_hidden_states, added_conditioning
        )
        if down_block_additional_residuals is not None:
            skips = [
                s + r.astype(s.dtype) for s, r in zip(skips, down_block_additional_residuals, strict=True)
            ]
        if mid_block_additional_residual is not None:
            h = h + mid_block_additional_residual.astype(h.dtype)
        context = encoder_hidden_states.astype(self.options.dtype)
        for block in self.up_blocks:
            taken = len(block.resnets)
            h = call_block(block, self.options, h, tuple(skips[-taken:]), temb, context)
            skips = skips[:-taken]
        return self.conv_out(jax.nn.silu(self.conv_norm_out(h)))

    def _check_size(self, sample: Array) -> None:
        factor = 2 ** (self.config.blocks - 1)
        height, width = sample.shape[1:3]
        if height % factor or width % factor:
            raise ValueError(f"latent size {height}x{width} must be a multiple of {factor} for this UNet")
