"""The UNet's down, mid and up blocks, and the down path (embeddings, conv_in, down and mid blocks)
that UNet2DConditionModel and ControlNetModel share.

One `DownBlock` stands for diffusers' CrossAttnDownBlock2D and DownBlock2D (the second has no
`attentions`), one `UpBlock` for CrossAttnUpBlock2D and UpBlock2D.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from .config import ModelConfig, UnsupportedConfigError, per_block
from .layers import (
    Downsample2D,
    ResnetBlock2D,
    TimestepEmbedding,
    Transformer2DModel,
    Upsample2D,
    call_block,
    conv2d,
    sinusoidal_embedding,
)
from .options import ModelOptions
from .pretrained import PretrainedModule

Array = jax.Array

CROSS_ATTENTION_DOWN = "CrossAttnDownBlock2D"
PLAIN_DOWN = "DownBlock2D"
CROSS_ATTENTION_UP = "CrossAttnUpBlock2D"
PLAIN_UP = "UpBlock2D"


class TextTimeConditioning(NamedTuple):
    """SDXL's added conditioning: the pooled text projection and the six size/crop numbers per row."""

    text_embeds: Array
    time_ids: Array


@dataclasses.dataclass(frozen=True)
class AttentionSpec:
    """How a block's transformers are shaped; None on blocks without attention."""

    heads: int
    context_dim: int
    layers: tuple[int, ...]
    use_linear_projection: bool


@dataclasses.dataclass(frozen=True)
class DownPathConfig(ModelConfig):
    """config.json keys shared by UNet2DConditionModel and ControlNetModel (diffusers' names and defaults)."""

    in_channels: int = 4
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    down_block_types: tuple[str, ...] = (CROSS_ATTENTION_DOWN,) * 3 + (PLAIN_DOWN,)
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int | tuple[int, ...] = 2
    downsample_padding: int = 1
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int | tuple[int, ...] = 1280
    transformer_layers_per_block: int | tuple[int, ...] = 1
    attention_head_dim: int | tuple[int, ...] = 8
    num_attention_heads: int | tuple[int, ...] | None = None
    use_linear_projection: bool = False
    upcast_attention: bool = False
    addition_embed_type: str | None = None
    addition_time_embed_dim: int | None = None
    projection_class_embeddings_input_dim: int | None = None
    mid_block_type: str = "UNetMidBlock2DCrossAttn"

    unsupported: ClassVar[dict[str, tuple[Any, ...]]] = {
        "addition_embed_type": (None, "text_time"),
        "class_embed_type": (None,),
        "num_class_embeds": (None,),
        "encoder_hid_dim": (None,),
        "encoder_hid_dim_type": (None,),
        "time_embedding_type": ("positional",),
        "time_embedding_dim": (None,),
        "time_embedding_act_fn": (None,),
        "timestep_post_act": (None,),
        "time_cond_proj_dim": (None,),
        "resnet_time_scale_shift": ("default",),
        "resnet_skip_time_act": (False,),
        "resnet_out_scale_factor": (1.0, 1),
        "mid_block_scale_factor": (1.0, 1),
        "mid_block_type": ("UNetMidBlock2DCrossAttn",),
        "act_fn": ("silu",),
        "attention_type": ("default",),
        "dual_cross_attention": (False,),
        "only_cross_attention": (False,),
        "center_input_sample": (False,),
        "conv_in_kernel": (3,),
        "conv_out_kernel": (3,),
        "cross_attention_norm": (None,),
        "class_embeddings_concat": (False,),
        "mid_block_only_cross_attention": (None, False),
    }

    @property
    def blocks(self) -> int:
        return len(self.block_out_channels)

    @property
    def time_embed_dim(self) -> int:
        return self.block_out_channels[0] * 4

    def attention(self, block: int, is_cross_attention: bool, layers: int) -> AttentionSpec | None:
        if not is_cross_attention:
            return None
        heads = per_block(self.num_attention_heads or self.attention_head_dim, self.blocks)[block]
        depth = per_block(self.transformer_layers_per_block, self.blocks)[block]
        return AttentionSpec(
            heads=heads,
            context_dim=per_block(self.cross_attention_dim, self.blocks)[block],
            layers=per_block(depth, layers),
            use_linear_projection=self.use_linear_projection,
        )

    def layers(self, block: int) -> int:
        return per_block(self.layers_per_block, self.blocks)[block]


def check_block_types(types: tuple[str, ...], allowed: tuple[str, ...], key: str) -> None:
    for block_type in types:
        if block_type not in allowed:
            raise UnsupportedConfigError(
                f"{key}: {block_type!r} is not supported (supported: {list(allowed)})"
            )


def _resnet_stack(in_widths, out_channels: int, temb_channels: int, config, options, rngs) -> nnx.List:
    groups, eps = config.norm_num_groups, config.norm_eps
    return nnx.List(
        [ResnetBlock2D(w, out_channels, temb_channels, groups, eps, options, rngs) for w in in_widths]
    )


def _transformer_stack(channels: int, spec: AttentionSpec | None, config, options, rngs) -> nnx.List | None:
    """One Transformer2DModel per layer (`spec.layers` gives each one's depth); None without attention."""
    if spec is None:
        return None
    return nnx.List(
        [
            Transformer2DModel(
                channels,
                spec.heads,
                channels // spec.heads,
                spec.context_dim,
                depth,
                config.norm_num_groups,
                spec.use_linear_projection,
                options,
                rngs,
            )
            for depth in spec.layers
        ]
    )


class DownBlock(nnx.Module):
    """ResNet (+ transformer) layers, then an optional stride-2 conv; returns every layer's output."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        layers: int,
        attention: AttentionSpec | None,
        add_downsample: bool,
        config: DownPathConfig,
        options: ModelOptions,
        rngs: nnx.Rngs,
    ):
        widths = [in_channels] + [out_channels] * (layers - 1)
        self.resnets = _resnet_stack(widths, out_channels, temb_channels, config, options, rngs)
        self.attentions = _transformer_stack(out_channels, attention, config, options, rngs)
        self.downsamplers = (
            nnx.List([Downsample2D(out_channels, config.downsample_padding, options, rngs)])
            if add_downsample
            else None
        )

    def __call__(self, x: Array, temb: Array, context: Array) -> tuple[Array, list[Array]]:
        outputs = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
            outputs.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            outputs.append(x)
        return x, outputs


class MidBlock(nnx.Module):
    """diffusers' UNetMidBlock2DCrossAttn: resnet, then (transformer, resnet) pairs."""

    def __init__(self, channels: int, temb_channels: int, attention: AttentionSpec, config, options, rngs):
        widths = [channels] * (len(attention.layers) + 1)
        self.resnets = _resnet_stack(widths, channels, temb_channels, config, options, rngs)
        self.attentions = _transformer_stack(channels, attention, config, options, rngs)

    def __call__(self, x: Array, temb: Array, context: Array) -> Array:
        x = self.resnets[0](x, temb)
        for attention, resnet in zip(self.attentions, self.resnets[1:], strict=True):
            x = resnet(attention(x, context), temb)
        return x


class UpBlock(nnx.Module):
    """ResNet (+ transformer) layers, each fed the matching down-path output, then an optional 2x upsample."""

    def __init__(
        self,
        skip_channels: tuple[int, ...],
        prev_channels: int,
        out_channels: int,
        temb_channels: int,
        attention: AttentionSpec | None,
        add_upsample: bool,
        config: DownPathConfig,
        options: ModelOptions,
        rngs: nnx.Rngs,
    ):
        inputs = [prev_channels] + [out_channels] * (len(skip_channels) - 1)
        widths = [width + skip for width, skip in zip(inputs, skip_channels, strict=True)]
        self.resnets = _resnet_stack(widths, out_channels, temb_channels, config, options, rngs)
        self.attentions = _transformer_stack(out_channels, attention, config, options, rngs)
        self.upsamplers = nnx.List([Upsample2D(out_channels, options, rngs)]) if add_upsample else None

    def __call__(self, x: Array, skips: tuple[Array, ...], temb: Array, context: Array) -> Array:
        """`skips` are this block's down-path outputs in down-path order; they are used last first."""
        for i, resnet in enumerate(self.resnets):
            x = resnet(jnp.concatenate([x, skips[-1 - i]], axis=-1), temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class DownPath(PretrainedModule):
    """conv_in, the time (and SDXL text_time) embeddings, the down blocks and the mid block.

    Subclasses call `build_down_path` in their constructor and `run_down_path` in their forward.
    """

    def build_down_path(self, config: DownPathConfig, options: ModelOptions, rngs: nnx.Rngs) -> None:
        check_block_types(config.down_block_types, (CROSS_ATTENTION_DOWN, PLAIN_DOWN), "down_block_types")
        if len(config.down_block_types) != config.blocks:
            raise UnsupportedConfigError("down_block_types and block_out_channels differ in length")
        channels, temb = config.block_out_channels, config.time_embed_dim
        self.options = options
        self.conv_in = conv2d(config.in_channels, channels[0], options, rngs)
        self.time_embedding = TimestepEmbedding(channels[0], temb, options, rngs)
        self.add_embedding = self._build_add_embedding(config, temb, options, rngs)
        self.down_blocks = nnx.List(
            [
                DownBlock(
                    channels[max(i - 1, 0)],
                    channels[i],
                    temb,
                    config.layers(i),
                    config.attention(i, block_type == CROSS_ATTENTION_DOWN, config.layers(i)),
                    add_downsample=i < config.blocks - 1,
                    config=config,
                    options=options,
                    rngs=rngs,
                )
                for i, block_type in enumerate(config.down_block_types)
            ]
        )
        last = config.blocks - 1
        self.mid_block = MidBlock(channels[-1], temb, config.attention(last, True, 1), config, options, rngs)

    @staticmethod
    def _build_add_embedding(config: DownPathConfig, temb: int, options: ModelOptions, rngs: nnx.Rngs):
        if config.addition_embed_type != "text_time":
            return None
        if not (config.addition_time_embed_dim and config.projection_class_embeddings_input_dim):
            raise UnsupportedConfigError(
                "addition_embed_type='text_time' needs addition_time_embed_dim and "
                "projection_class_embeddings_input_dim"
            )
        return TimestepEmbedding(config.projection_class_embeddings_input_dim, temb, options, rngs)

    def embed_time(
        self, config: DownPathConfig, timesteps: Array, batch: int, added: TextTimeConditioning | None
    ):
        timesteps = jnp.broadcast_to(jnp.asarray(timesteps), (batch,))
        t_features = sinusoidal_embedding(
            timesteps, config.block_out_channels[0], config.flip_sin_to_cos, config.freq_shift
        )
        emb = self.time_embedding(t_features.astype(self.options.dtype))
        if self.add_embedding is None:
            return emb
        if added is None:
            raise ValueError("this SDXL-style model needs added conditioning (text_embeds and time_ids)")
        time_ids = jnp.asarray(added.time_ids).reshape(-1)
        time_features = sinusoidal_embedding(
            time_ids, config.addition_time_embed_dim, config.flip_sin_to_cos, config.freq_shift
        ).reshape(batch, -1)
        add_features = jnp.concatenate(
            [added.text_embeds.astype(time_features.dtype), time_features], axis=-1
        )
        return emb + self.add_embedding(add_features.astype(self.options.dtype))

    def run_down_path(
        self,
        config: DownPathConfig,
        sample: Array,
        timesteps: Array,
        context: Array,
        added: TextTimeConditioning | None,
        after_conv_in: Callable[[Array], Array] = lambda h: h,
    ) -> tuple[Array, Array, list[Array]]:
        """Returns (time embedding, mid-block output, every down-path output from conv_in on)."""
        sample = sample.astype(self.options.dtype)
        context = context.astype(self.options.dtype)
        temb = self.embed_time(config, timesteps, sample.shape[0], added)
        h = after_conv_in(self.conv_in(sample))
        skips = [h]
        for block in self.down_blocks:
            h, outputs = call_block(block, self.options, h, temb, context)
            skips.extend(outputs)
        h = call_block(self.mid_block, self.options, h, temb, context)
        return temb, h, skips
