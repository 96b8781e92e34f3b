"""FluxTransformer2DModel (FLUX.1 dev and schnell) in Flax NNX, after diffusers' PyTorch model.

Attribute names follow diffusers, so `transformer_blocks.0.attn.to_q.kernel` is the checkpoint key
`transformer_blocks.0.attn.to_q.weight`. Latents come in packed: (batch, tokens, in_channels), 2x2
latent patches flattened into channels (64 = 16 latent channels x 4), with one position id per token
(`img_ids`, `txt_ids`: (tokens, 3)) that the rotary embedding reads. `FluxBackbone` holds what the
transformer and its ControlNet (`flux_controlnet.py`) share: the embedders and the two block stacks.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .attention import attention
from .config import ModelConfig, UnsupportedConfigError
from .layers import TimestepEmbedding, call_block, call_layer, linear, normalize, sinusoidal_embedding
from .options import DEFAULT_OPTIONS, ModelOptions
from .pretrained import PretrainedModule

Array = jax.Array
Rotary = tuple[Array, Array]
"""cos and sin of the rotary angles, (tokens, head_dim // 2): one angle per pair of channels."""

ROPE_THETA = 10000.0
TIME_FEATURES = 256  # the sinusoidal width of the timestep and guidance embedders
NORM_EPS = 1e-6
MLP_RATIO = 4


@dataclasses.dataclass(frozen=True)
class FluxConfig(ModelConfig):
    """config.json keys the transformer and the ControlNet share (diffusers' names and defaults)."""

    patch_size: int = 1
    in_channels: int = 64
    num_layers: int = 19
    num_single_layers: int = 38
    attention_head_dim: int = 128
    num_attention_heads: int = 24
    joint_attention_dim: int = 4096
    pooled_projection_dim: int = 768
    guidance_embeds: bool = False
    axes_dims_rope: tuple[int, ...] = (16, 56, 56)

    def __post_init__(self) -> None:
        if sum(self.axes_dims_rope) != self.attention_head_dim or any(d % 2 for d in self.axes_dims_rope):
            raise UnsupportedConfigError(
                f"axes_dims_rope={list(self.axes_dims_rope)} must be even and sum to "
                f"attention_head_dim={self.attention_head_dim}"
            )

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    def shared(self) -> dict:
        """The values of the shared keys, for building one model's config from the other's."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(FluxConfig) if f.name != "extra"}


@dataclasses.dataclass(frozen=True)
class FluxTransformerConfig(FluxConfig):
    class_name: ClassVar[str] = "FluxTransformer2DModel"

    out_channels: int | None = None


# -- pieces ------------------------------------------------------------------------------------------


class RMSNorm(nnx.Module):
    """PyTorch's RMSNorm over the last axis (Flux's per-head query and key norm), statistics in fp32."""

    def __init__(self, features: int, eps: float, options: ModelOptions, rngs: nnx.Rngs):
        del rngs  # ones, as PyTorch initialises them
        self.eps, self.dtype = eps, options.dtype
        self.scale = nnx.Param(jnp.ones((features,), options.param_dtype))

    def __call__(self, x: Array) -> Array:
        x32 = x.astype(jnp.float32)
        rms = jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return (x32 * rms * self.scale[...].astype(jnp.float32)).astype(self.dtype)


def plain_layer_norm(x: Array, dtype) -> Array:
    """LayerNorm without its own scale and bias: the AdaLN modulation that follows supplies them."""
    features = x.shape[-1]
    ones, zeros = jnp.ones((features,), jnp.float32), jnp.zeros((features,), jnp.float32)
    return normalize(x, ones, zeros, (x.ndim - 1,), NORM_EPS, jnp.dtype(dtype))


def modulate(x: Array, shift: Array, scale: Array) -> Array:
    """x * (1 + scale) + shift, with one (batch, features) shift and scale per example."""
    return x * (1 + scale[:, None]) + shift[:, None]


class AdaLayerNormZero(nnx.Module):
    """A plain LayerNorm modulated by the conditioning: six (batch, dim) chunks from one projection,
    the attention's shift, scale and gate and the feed-forward's."""

    def __init__(self, dim: int, options: ModelOptions, rngs: nnx.Rngs, chunks: int = 6):
        self.dtype, self.chunks = options.dtype, chunks
        self.linear = linear(dim, chunks * dim, options, rngs)

    def __call__(self, x: Array, emb: Array) -> tuple[Array, ...]:
        shift, scale, *rest = jnp.split(self.linear(jax.nn.silu(emb)), self.chunks, axis=-1)
        return (modulate(plain_layer_norm(x, self.dtype), shift, scale), *rest)


class AdaLayerNormZeroSingle(AdaLayerNormZero):
    """The single-stream form: shift, scale and one gate."""

    def __init__(self, dim: int, options: ModelOptions, rngs: nnx.Rngs):
        super().__init__(dim, options, rngs, chunks=3)


class AdaLayerNormContinuous(nnx.Module):
    """The output norm: scale then shift (the other order from AdaLayerNormZero's chunks)."""

    def __init__(self, dim: int, options: ModelOptions, rngs: nnx.Rngs):
        self.dtype = options.dtype
        self.linear = linear(dim, 2 * dim, options, rngs)

    def __call__(self, x: Array, emb: Array) -> Array:
        scale, shift = jnp.split(self.linear(jax.nn.silu(emb)), 2, axis=-1)
        return modulate(plain_layer_norm(x, self.dtype), shift, scale)


class GELU(nnx.Module):
    """A projection, then GELU's tanh approximation (diffusers' `gelu-approximate`)."""

    def __init__(self, dim: int, inner_dim: int, options: ModelOptions, rngs: nnx.Rngs):
        self.proj = linear(dim, inner_dim, options, rngs)

    def __call__(self, x: Array) -> Array:
        return jax.nn.gelu(self.proj(x), approximate=True)


class FeedForward(nnx.Module):
    """diffusers' FeedForward with `activation_fn="gelu-approximate"`: 4x wider, tanh GELU, back."""

    def __init__(self, dim: int, options: ModelOptions, rngs: nnx.Rngs):
        # Index 1 is diffusers' dropout, which holds no parameters.
        inner = dim * MLP_RATIO
        self.net = nnx.List([GELU(dim, inner, options, rngs), None, linear(inner, dim, options, rngs)])

    def __call__(self, x: Array) -> Array:
        return self.net[2](self.net[0](x))


def rotary_embedding(ids: Array, axes_dims: Sequence[int], theta: float = ROPE_THETA) -> Rotary:
    """cos and sin of each token's angles: axis i of its position id turns axes_dims[i] // 2 channel
    pairs, at frequencies theta^(-2k / axes_dims[i]). The frequencies are exact (float64, numpy);
    the angles are fp32, which at Flux's positions (under a few hundred) stays within 1e-5 of
    diffusers' float64 angles."""
    ids = jnp.asarray(ids, jnp.float32)
    angles = []
    for axis, dim in enumerate(axes_dims):
        frequencies = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
        angles.append(ids[:, axis, None] * jnp.asarray(frequencies, jnp.float32)[None, :])
    angles = jnp.concatenate(angles, axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(x: Array, rotary: Rotary) -> Array:
    """Rotate each (even, odd) channel pair of (batch, tokens, heads, head_dim) `x` by its angle."""
    cos, sin = (r[None, :, None, :] for r in rotary)
    pairs = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
    real, imaginary = pairs[..., 0], pairs[..., 1]
    rotated = jnp.stack([real * cos - imaginary * sin, real * sin + imaginary * cos], axis=-1)
    return rotated.reshape(x.shape).astype(x.dtype)


class FluxAttention(nnx.Module):
    """Self-attention over the image tokens, or, with `joint`, over text and image tokens together
    (the text's own projections `add_*_proj`, its output at `to_add_out`). Queries and keys get a
    per-head RMSNorm, then the rotary embedding. `pre_only` (single-stream blocks) has no output
    projection: the block projects attention and MLP together."""

    def __init__(
        self,
        dim: int,
        heads: int,
        head_dim: int,
        options: ModelOptions,
        rngs: nnx.Rngs,
        joint: bool = False,
        pre_only: bool = False,
    ):
        inner = heads * head_dim
        self.heads, self.options = heads, options
        self.norm_q = RMSNorm(head_dim, NORM_EPS, options, rngs)
        self.norm_k = RMSNorm(head_dim, NORM_EPS, options, rngs)
        self.to_q = linear(dim, inner, options, rngs)
        self.to_k = linear(dim, inner, options, rngs)
        self.to_v = linear(dim, inner, options, rngs)
        self.to_out = None if pre_only else nnx.List([linear(inner, dim, options, rngs)])
        if joint:
            self.norm_added_q = RMSNorm(head_dim, NORM_EPS, options, rngs)
            self.norm_added_k = RMSNorm(head_dim, NORM_EPS, options, rngs)
            self.add_q_proj = linear(dim, inner, options, rngs)
            self.add_k_proj = linear(dim, inner, options, rngs)
            self.add_v_proj = linear(dim, inner, options, rngs)
            self.to_add_out = linear(inner, dim, options, rngs)

    def _heads(self, x: Array) -> Array:
        return x.reshape(*x.shape[:-1], self.heads, -1)

    def _qkv(self, x: Array, to_q, to_k, to_v, norm_q: RMSNorm, norm_k: RMSNorm) -> tuple[Array, ...]:
        return norm_q(self._heads(to_q(x))), norm_k(self._heads(to_k(x))), self._heads(to_v(x))

    def __call__(self, x: Array, rotary: Rotary, context: Array | None = None):
        """Single stream: the attention output (batch, tokens, inner). Joint: (image, text) outputs,
        each through its projection; the text comes first in the joint sequence."""
        q, k, v = self._qkv(x, self.to_q, self.to_k, self.to_v, self.norm_q, self.norm_k)
        if context is not None:
            text = self._qkv(
                context,
                self.add_q_proj,
                self.add_k_proj,
                self.add_v_proj,
                self.norm_added_q,
                self.norm_added_k,
            )
            q, k, v = (jnp.concatenate([t, i], axis=1) for t, i in zip(text, (q, k, v), strict=True))
        out = attention(apply_rotary(q, rotary), apply_rotary(k, rotary), v, self.options.attention)
        out = out.reshape(*out.shape[:-2], -1)
        if context is None:
            return out if self.to_out is None else self.to_out[0](out)
        text_tokens = context.shape[1]
        return self.to_out[0](out[:, text_tokens:]), self.to_add_out(out[:, :text_tokens])


def _fp16_safe(x: Array) -> Array:
    # diffusers clips fp16 activations to the largest finite value, where Flux's overflow.
    return jnp.clip(x, -65504, 65504) if x.dtype == jnp.float16 else x


class FluxTransformerBlock(nnx.Module):
    """Double stream (MMDiT): image and text keep their own norms, projections and feed-forwards and
    meet in one joint attention."""

    def __init__(self, dim: int, heads: int, head_dim: int, options: ModelOptions, rngs: nnx.Rngs):
        self.dtype = options.dtype
        self.norm1 = AdaLayerNormZero(dim, options, rngs)
        self.norm1_context = AdaLayerNormZero(dim, options, rngs)
        self.attn = FluxAttention(dim, heads, head_dim, options, rngs, joint=True)
        self.ff = FeedForward(dim, options, rngs)
        self.ff_context = FeedForward(dim, options, rngs)

    def __call__(self, x: Array, context: Array, temb: Array, rotary: Rotary) -> tuple[Array, Array]:
        """(text, image) tokens out, diffusers' order."""
        normed, *modulation = self.norm1(x, temb)
        normed_context, *context_modulation = self.norm1_context(context, temb)
        attn_out, context_attn_out = self.attn(normed, rotary, normed_context)
        x = self._residuals(x, attn_out, self.ff, *modulation)
        context = self._residuals(context, context_attn_out, self.ff_context, *context_modulation)
        return _fp16_safe(context), x

    def _residuals(self, x, attn_out, ff: FeedForward, gate_msa, shift_mlp, scale_mlp, gate_mlp) -> Array:
        """One stream's gated attention residual, then its modulated, gated feed-forward residual."""
        x = x + gate_msa[:, None] * attn_out
        h = ff(modulate(plain_layer_norm(x, self.dtype), shift_mlp, scale_mlp))
        return x + gate_mlp[:, None] * h


class FluxSingleTransformerBlock(nnx.Module):
    """Single stream: text and image as one sequence, attention and an MLP side by side, projected
    out together."""

    def __init__(self, dim: int, heads: int, head_dim: int, options: ModelOptions, rngs: nnx.Rngs):
        mlp = dim * MLP_RATIO
        self.norm = AdaLayerNormZeroSingle(dim, options, rngs)
        self.proj_mlp = linear(dim, mlp, options, rngs)
        self.proj_out = linear(dim + mlp, dim, options, rngs)
        self.attn = FluxAttention(dim, heads, head_dim, options, rngs, pre_only=True)

    def __call__(self, x: Array, context: Array, temb: Array, rotary: Rotary) -> tuple[Array, Array]:
        text_tokens = context.shape[1]
        joint = jnp.concatenate([context, x], axis=1)
        normed, gate = self.norm(joint, temb)
        mlp = jax.nn.gelu(self.proj_mlp(normed), approximate=True)
        both = jnp.concatenate([self.attn(normed, rotary), mlp], axis=-1)
        joint = _fp16_safe(joint + gate[:, None] * self.proj_out(both))
        return joint[:, :text_tokens], joint[:, text_tokens:]


class FluxTimeTextEmbedding(nnx.Module):
    """diffusers' CombinedTimestep(Guidance)TextProjEmbeddings: the timestep's (and, in
    guidance-distilled models, the guidance scale's) sinusoidal features and the pooled text, each
    through two linear layers with SiLU between, summed."""

    def __init__(self, dim: int, pooled_dim: int, guidance: bool, options: ModelOptions, rngs: nnx.Rngs):
        self.dtype = options.dtype
        self.timestep_embedder = TimestepEmbedding(TIME_FEATURES, dim, options, rngs)
        self.guidance_embedder = TimestepEmbedding(TIME_FEATURES, dim, options, rngs) if guidance else None
        self.text_embedder = TimestepEmbedding(pooled_dim, dim, options, rngs)

    def _sinusoidal(self, values: Array) -> Array:
        return sinusoidal_embedding(values, TIME_FEATURES, flip_sin_to_cos=True, freq_shift=0).astype(
            self.dtype
        )

    def __call__(self, timestep: Array, guidance: Array | None, pooled: Array) -> Array:
        emb = self.timestep_embedder(self._sinusoidal(timestep))
        if self.guidance_embedder is not None:
            if guidance is None:
                raise ValueError("this guidance-distilled Flux model (FLUX.1-dev style) needs `guidance`")
            emb = emb + self.guidance_embedder(self._sinusoidal(guidance))
        elif guidance is not None:
            raise ValueError(
                "this Flux model has no guidance embedder (guidance_embeds=False): pass no guidance"
            )
        return emb + self.text_embedder(pooled.astype(self.dtype))


# -- the shared backbone -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Control:
    """Residuals added after the blocks of one stack: block i gets `samples[index[i]]`."""

    samples: tuple[Array, ...]
    index: tuple[int, ...]

    @classmethod
    def spread(cls, samples: Sequence[Array] | None, blocks: int, repeat: bool = False) -> Control | None:
        """diffusers' rule: each sample serves ceil(blocks / samples) consecutive blocks, or with
        `repeat` (XLabs ControlNets) the samples cycle over the blocks."""
        if not samples:
            return None
        count = len(samples)
        interval = math.ceil(blocks / count)
        return cls(tuple(samples), tuple(i % count if repeat else i // interval for i in range(blocks)))


class FluxBackbone(PretrainedModule):
    """x_embedder, context_embedder, time_text_embed and the double- and single-stream stacks.

    Built as `Cls(config, options, rngs=rngs)`: the backbone, then the subclass's own layers
    (`build_head`). Subclasses call `embed_inputs` and `run_stack` in their forward.
    """

    def __init__(self, config: FluxConfig, options: ModelOptions = DEFAULT_OPTIONS, *, rngs: nnx.Rngs):
        self.config = config
        self.build_backbone(config, options, rngs)
        self.build_head(config, options, rngs)

    def build_head(self, config: FluxConfig, options: ModelOptions, rngs: nnx.Rngs) -> None:
        """The subclass's layers after the backbone's (their keys drawn after the backbone's)."""
        raise NotImplementedError

    def build_backbone(self, config: FluxConfig, options: ModelOptions, rngs: nnx.Rngs) -> None:
        dim, heads, head_dim = config.inner_dim, config.num_attention_heads, config.attention_head_dim
        self.options = options
        self.axes_dims_rope = tuple(config.axes_dims_rope)
        self.time_text_embed = FluxTimeTextEmbedding(
            dim, config.pooled_projection_dim, config.guidance_embeds, options, rngs
        )
        self.context_embedder = linear(config.joint_attention_dim, dim, options, rngs)
        self.x_embedder = linear(config.in_channels, dim, options, rngs)
        self.transformer_blocks = nnx.List(
            [FluxTransformerBlock(dim, heads, head_dim, options, rngs) for _ in range(config.num_layers)]
        )
        self.single_transformer_blocks = nnx.List(
            [
                FluxSingleTransformerBlock(dim, heads, head_dim, options, rngs)
                for _ in range(config.num_single_layers)
            ]
        )

    def embed_inputs(
        self, hidden_states: Array, encoder_hidden_states: Array, pooled: Array, timestep: Array, guidance
    ) -> tuple[Array, Array, Array]:
        """(conditioning vector, image tokens, text tokens): `embed_conditioning` and the image and
        text embedders, the tokens in the compute dtype."""
        dtype = self.options.dtype
        temb = self.embed_conditioning(hidden_states.shape[0], timestep, pooled, guidance)
        x = self.x_embedder(hidden_states.astype(dtype))
        return temb, x, self.context_embedder(encoder_hidden_states.astype(dtype))

    def embed_conditioning(self, batch: int, timestep: Array, pooled: Array, guidance: Array | None) -> Array:
        """The conditioning vector (batch, inner_dim). Pipelines pass t / 1000 and the guidance scale;
        both are scaled by 1000 here, in fp32 whatever the compute dtype."""
        timestep = jnp.broadcast_to(jnp.asarray(timestep, jnp.float32), (batch,)) * 1000
        if guidance is not None:
            guidance = jnp.broadcast_to(jnp.asarray(guidance, jnp.float32), (batch,)) * 1000
        return self.time_text_embed(timestep, guidance, pooled)

    def rotary(self, txt_ids: Array, img_ids: Array) -> Rotary:
        """The rotary embedding of the joint sequence, text first. Ids are (tokens, 3); a leading batch
        axis (diffusers' deprecated form) is dropped, its first row kept."""
        txt_ids, img_ids = (
            ids[0] if ids.ndim == 3 else ids for ids in (jnp.asarray(txt_ids), jnp.asarray(img_ids))
        )
        return rotary_embedding(jnp.concatenate([txt_ids, img_ids], axis=0), self.axes_dims_rope)

    def run_stack(
        self,
        blocks: nnx.List,
        x: Array,
        context: Array,
        temb: Array,
        rotary: Rotary,
        control: Control | None = None,
        keep_outputs: bool = False,
    ) -> tuple[Array, Array, tuple[Array, ...]]:
        """(image, text, each block's image output when `keep_outputs`) after one stack of blocks, the
        `control` residuals added after each block; one `jax.lax.scan` with `options.scan_layers`."""
        if self.options.scan_layers and len(blocks) > 1:
            return _scan_stack(blocks, self.options, x, context, temb, rotary, control, keep_outputs)
        outputs = []
        for i, block in enumerate(blocks):
            context, x = _call_block(block, self.options, x, context, temb, rotary)
            if control is not None:
                x = x + control.samples[control.index[i]].astype(x.dtype)
            if keep_outputs:
                outputs.append(x)
        return x, context, tuple(outputs)


def _call_block(block: nnx.Module, options: ModelOptions, *args):
    """Flux's blocks are its transformer layers: remat "blocks", "layers" and "dots" all checkpoint
    each one ("dots" keeping its projections' outputs)."""
    if options.remat == "blocks":
        return call_block(block, options, *args)
    return call_layer(block, options, *args)


def _scan_stack(
    blocks: nnx.List,
    options: ModelOptions,
    x: Array,
    context: Array,
    temb: Array,
    rotary: Rotary,
    control: Control | None,
    keep_outputs: bool,
) -> tuple[Array, Array, tuple[Array, ...]]:
    """`run_stack` as one scan over the blocks' stacked weights (one block's code in the program, not
    19 or 38), the control sample of each block picked by index inside the body."""
    graphdef, _ = nnx.split(blocks[0])
    stacked = jax.tree.map(lambda *weights: jnp.stack(weights), *(nnx.state(block) for block in blocks))
    samples = None if control is None else jnp.stack(control.samples)
    index = jnp.asarray(control.index if control is not None else np.zeros(len(blocks)), jnp.int32)

    def body(carry, inputs):
        x, context = carry
        weights, i = inputs
        context, x = _call_block(nnx.merge(graphdef, weights), options, x, context, temb, rotary)
        if samples is not None:
            x = x + samples[i].astype(x.dtype)
        return (x, context), x if keep_outputs else None

    (x, context), outputs = jax.lax.scan(body, (x, context), (stacked, index))
    return x, context, tuple(outputs) if keep_outputs else ()


class FluxTransformer2DModel(FluxBackbone):
    """The denoiser of FLUX.1: packed latent tokens, T5 text tokens, the pooled CLIP embedding, t / 1000
    (and the guidance scale for FLUX.1-dev) in; the velocity for each latent token out."""

    config_class = FluxTransformerConfig

    def build_head(self, config: FluxTransformerConfig, options: ModelOptions, rngs: nnx.Rngs) -> None:
        dim = config.inner_dim
        out_channels = config.out_channels or config.in_channels
        self.norm_out = AdaLayerNormContinuous(dim, options, rngs)
        self.proj_out = linear(dim, config.patch_size**2 * out_channels, options, rngs)

    def __call__(
        self,
        hidden_states: Array,
        encoder_hidden_states: Array,
        pooled_projections: Array,
        timestep: Array,
        img_ids: Array,
        txt_ids: Array,
        guidance: Array | None = None,
        controlnet_block_samples: Sequence[Array] | None = None,
        controlnet_single_block_samples: Sequence[Array] | None = None,
        controlnet_blocks_repeat: bool = False,
    ) -> Array:
        """(batch, image tokens, patch_size^2 * out_channels). ControlNet samples are added after the
        blocks as diffusers adds them (`Control.spread`)."""
        temb, x, context = self.embed_inputs(
            hidden_states, encoder_hidden_states, pooled_projections, timestep, guidance
        )
        rotary = self.rotary(txt_ids, img_ids)
        double = Control.spread(
            controlnet_block_samples, len(self.transformer_blocks), controlnet_blocks_repeat
        )
        single = Control.spread(controlnet_single_block_samples, len(self.single_transformer_blocks))
        x, context, _ = self.run_stack(self.transformer_blocks, x, context, temb, rotary, double)
        x, _, _ = self.run_stack(self.single_transformer_blocks, x, context, temb, rotary, single)
        return self.proj_out(self.norm_out(x, temb))
