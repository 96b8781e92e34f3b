"""FluxControlNetModel (InstantX / Shakker-Labs Flux ControlNets, union ones included) in Flax NNX.

A copy of the transformer's front (embedders and the first double- and single-stream blocks), the
packed conditioning latents added through a zero-initialised `controlnet_x_embedder`, and one
zero-initialised linear layer per block whose outputs the transformer adds after its own blocks
(`FluxTransformer2DModel(..., controlnet_block_samples=..., controlnet_single_block_samples=...)`).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from flax.traverse_util import flatten_dict

from .flux import FluxBackbone, FluxConfig, FluxTransformer2DModel
from .options import ModelOptions

Array = jax.Array

# What `from_transformer` copies: the embedders and as many leading blocks of each stack as both have.
COPIED_FROM_TRANSFORMER = (
    "time_text_embed",
    "context_embedder",
    "x_embedder",
    "transformer_blocks",
    "single_transformer_blocks",
)


@dataclasses.dataclass(frozen=True)
class FluxControlNetConfig(FluxConfig):
    class_name: ClassVar[str] = "FluxControlNetModel"
    # The pixel-space hint encoder (`input_hint_block`) of `conditioning_embedding_channels` is not built.
    unsupported: ClassVar = {"conditioning_embedding_channels": (None,)}

    num_mode: int | None = None
    """Union ControlNets: how many control modes `controlnet_mode_embedder` knows."""


class FluxControlNetOutput(NamedTuple):
    """Per-block residuals for the transformer, scaled; None where the ControlNet has no such blocks."""

    controlnet_block_samples: tuple[Array, ...] | None
    controlnet_single_block_samples: tuple[Array, ...] | None


def zero_linear(in_features: int, out_features: int, options: ModelOptions, rngs: nnx.Rngs) -> nnx.Linear:
    """A linear layer that starts at zero, so that a new ControlNet leaves the transformer unchanged."""
    return nnx.Linear(
        in_features,
        out_features,
        kernel_init=nnx.initializers.zeros_init(),
        bias_init=nnx.initializers.zeros_init(),
        dtype=options.dtype,
        param_dtype=options.param_dtype,
        rngs=rngs,
    )


class FluxControlNetModel(FluxBackbone):
    config_class = FluxControlNetConfig

    def build_head(self, config: FluxControlNetConfig, options: ModelOptions, rngs: nnx.Rngs) -> None:
        dim = config.inner_dim
        self.controlnet_blocks = nnx.List(
            [zero_linear(dim, dim, options, rngs) for _ in range(config.num_layers)]
        )
        self.controlnet_single_blocks = nnx.List(
            [zero_linear(dim, dim, options, rngs) for _ in range(config.num_single_layers)]
        )
        self.controlnet_mode_embedder = (
            nnx.Embed(config.num_mode, dim, dtype=options.dtype, param_dtype=options.param_dtype, rngs=rngs)
            if config.num_mode is not None
            else None
        )
        self.controlnet_x_embedder = zero_linear(config.in_channels, dim, options, rngs)

    @classmethod
    def from_transformer(
        cls,
        transformer: FluxTransformer2DModel,
        num_layers: int = 4,
        num_single_layers: int = 10,
        attention_head_dim: int | None = None,
        num_attention_heads: int | None = None,
        load_weights_from_transformer: bool = True,
        options: ModelOptions | None = None,
        rngs: nnx.Rngs | None = None,
    ) -> FluxControlNetModel:
        """A ControlNet shaped like `transformer` with `num_layers` double- and `num_single_layers`
        single-stream blocks, its embedders and first blocks copied from the transformer's and its
        controlnet layers at zero (diffusers' `FluxControlNetModel.from_transformer`). The head
        shape defaults to the transformer's (diffusers defaults to FLUX.1's 24 heads of 128). Only the
        fresh weights are initialised, in one compiled program (`partly_copied`), from one key drawn
        from `rngs` (seed 0 without)."""
        config = FluxControlNetConfig(
            **{
                **transformer.config.shared(),
                "num_layers": num_layers,
                "num_single_layers": num_single_layers,
                "attention_head_dim": attention_head_dim or transformer.config.attention_head_dim,
                "num_attention_heads": num_attention_heads or transformer.config.num_attention_heads,
            }
        )
        if load_weights_from_transformer:
            ours, theirs = (
                (c.num_attention_heads, c.attention_head_dim) for c in (config, transformer.config)
            )
            if ours != theirs:
                raise ValueError(
                    f"the ControlNet's (heads, head_dim) {ours} differ from the transformer's {theirs}"
                )
        # float32 master weights from a bfloat16 transformer: copies in the ControlNet's param dtype
        weights = flatten_dict(nnx.to_pure_dict(nnx.state(transformer, nnx.Param)))
        return cls.partly_copied(
            config,
            options or transformer.options,
            weights,
            lambda path: load_weights_from_transformer and path[0] in COPIED_FROM_TRANSFORMER,
            0 if rngs is None else rngs.params(),
        )

    def __call__(
        self,
        hidden_states: Array,
        controlnet_cond: Array,
        encoder_hidden_states: Array,
        pooled_projections: Array,
        timestep: Array,
        img_ids: Array,
        txt_ids: Array,
        guidance: Array | None = None,
        controlnet_mode: Array | None = None,
        conditioning_scale: float | Array = 1.0,
    ) -> FluxControlNetOutput:
        """`controlnet_cond` is the packed conditioning latents, shaped like `hidden_states`;
        `controlnet_mode` (batch, 1) the union ControlNet's mode index."""
        temb, x, context = self.embed_inputs(
            hidden_states, encoder_hidden_states, pooled_projections, timestep, guidance
        )
        x = x + self.controlnet_x_embedder(controlnet_cond.astype(self.options.dtype))
        txt_ids = txt_ids[0] if txt_ids.ndim == 3 else txt_ids
        if self.controlnet_mode_embedder is not None:
            context, txt_ids = self._prepend_mode(context, txt_ids, controlnet_mode)
        rotary = self.rotary(txt_ids, img_ids)
        x, context, double = self.run_stack(
            self.transformer_blocks, x, context, temb, rotary, keep_outputs=True
        )
        _, _, single = self.run_stack(
            self.single_transformer_blocks, x, context, temb, rotary, keep_outputs=True
        )
        return FluxControlNetOutput(
            self._project(self.controlnet_blocks, double, conditioning_scale),
            self._project(self.controlnet_single_blocks, single, conditioning_scale),
        )

    def _prepend_mode(self, context: Array, txt_ids: Array, mode: Array | None) -> tuple[Array, Array]:
        """Union ControlNets: the mode's embedding as one more text token, first, at the first text
        token's position."""
        if mode is None:
            raise ValueError("this union Flux ControlNet (num_mode set) needs `controlnet_mode`")
        mode_tokens = self.controlnet_mode_embedder(
            jnp.asarray(mode, jnp.int32).reshape(context.shape[0], -1)
        )
        context = jnp.concatenate([mode_tokens.astype(context.dtype), context], axis=1)
        return context, jnp.concatenate([txt_ids[:1], txt_ids], axis=0)

    @staticmethod
    def _project(
        layers: nnx.List, samples: tuple[Array, ...], scale: float | Array
    ) -> tuple[Array, ...] | None:
        if not samples:
            return None
        return tuple(layer(sample) * scale for layer, sample in zip(layers, samples, strict=True))
