"""The T5 encoder (transformers' `T5EncoderModel`) in Flax NNX: FLUX.1's `text_encoder_2` (T5 v1.1 XXL).

Attribute names follow transformers, so `encoder.block.0.layer.0.SelfAttention.q.kernel` is the checkpoint
key `encoder.block.0.layer.0.SelfAttention.q.weight`. The token embedding is `shared`; transformers ties
`encoder.embed_tokens.weight` to it, and a checkpoint holding both loads (the copy is ignored).

T5 differs from CLIP in its attention: no 1/sqrt(d) scaling of the scores, and a learned bias per head
and bucketed relative position (bidirectional in the encoder) added to them, computed once by the first
block's `relative_attention_bias` and shared by every block. Norms are RMS norms without mean or bias;
the feed-forward of v1.1 is gated (`feed_forward_proj="gated-gelu"`: tanh-approximated GELU).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from . import layers
from .config import ModelConfig, UnsupportedConfigError
from .options import DEFAULT_OPTIONS, ModelOptions
from .pretrained import PretrainedModule

Array = jax.Array

_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": jax.nn.relu,  # the original T5
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),  # T5 v1.1 ("gated-gelu")
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
}
_MASKED = float(jnp.finfo(jnp.float32).min)  # what transformers adds to a padded key's scores


@dataclasses.dataclass(frozen=True)
class T5Config(ModelConfig):
    """A transformers T5 `config.json` (FLUX.1's `text_encoder_2/config.json`); transformers' defaults.

    `dense_act_fn` and `is_gated_act`, which older transformers wrote too, are derived from
    `feed_forward_proj` as transformers 5 derives them (they stay in `extra`).
    """

    class_name: ClassVar[str] = "T5EncoderModel"
    unsupported: ClassVar = {"is_decoder": (False,)}

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"
    pad_token_id: int = 0
    eos_token_id: int = 1

    def __post_init__(self) -> None:
        parts = self.feed_forward_proj.split("-")
        malformed = len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated")
        if malformed or self.dense_act_fn not in _ACTIVATIONS:
            raise UnsupportedConfigError(
                f"feed_forward_proj={self.feed_forward_proj!r} is not supported "
                f"(supported: an activation of {sorted(_ACTIVATIONS)}, optionally as 'gated-<activation>')"
            )
        if self.relative_attention_num_buckets < 4:
            raise UnsupportedConfigError(
                f"relative_attention_num_buckets={self.relative_attention_num_buckets}: at least 4"
            )

    @property
    def is_gated_act(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def dense_act_fn(self) -> str:
        # transformers' backward-compatible special case: "gated-gelu" means the tanh approximation.
        if self.feed_forward_proj == "gated-gelu":
            return "gelu_new"
        return self.feed_forward_proj.split("-")[-1]


def relative_position_buckets(
    query_length: int, key_length: int, num_buckets: int, max_distance: int
) -> np.ndarray:
    """(query_length, key_length) bucket ids of key - query offsets, bidirectional (the encoder's).

    Half the buckets are for keys after the query. Within a half, offsets below a quarter of the buckets
    get one bucket each, longer ones logarithmic buckets up to `max_distance`, beyond it the last.
    The logarithm is float32, as in transformers, so bucket edges agree exactly.
    """
    offset = np.arange(key_length)[None, :] - np.arange(query_length)[:, None]
    half = num_buckets // 2
    exact = half // 2
    distance = np.abs(offset)
    log_ratio = np.log(np.maximum(distance, 1).astype(np.float32) / np.float32(exact))
    scaled = log_ratio / np.float32(math.log(max_distance / exact)) * np.float32(half - exact)
    logarithmic = np.minimum(exact + scaled.astype(np.int64), half - 1)
    return ((offset > 0) * half + np.where(distance < exact, distance, logarithmic)).astype(np.int32)


class T5LayerNorm(nnx.Module):
    """RMS norm: x / sqrt(mean(x^2) + eps) * weight; no mean subtracted, no bias. Statistics in fp32."""

    def __init__(self, features: int, eps: float, options: ModelOptions):
        self.eps, self.dtype = eps, options.dtype
        self.scale = nnx.Param(jnp.ones((features,), options.param_dtype))  # the checkpoint's `weight`

    def __call__(self, x: Array) -> Array:
        x32 = x.astype(jnp.float32)
        normalised = x32 * jax.lax.rsqrt(jnp.square(x32).mean(axis=-1, keepdims=True) + self.eps)
        return (normalised * self.scale[...].astype(jnp.float32)).astype(self.dtype)


class T5Attention(nnx.Module):
    """Self-attention with transformers' names (q, k, v, o; no biases). Only the first block's has
    `relative_attention_bias`, an embedding of (bucket -> one bias per head)."""

    def __init__(self, config: T5Config, has_relative_bias: bool, options: ModelOptions, rngs: nnx.Rngs):
        inner = config.num_heads * config.d_kv
        self.heads, self.head_dim = config.num_heads, config.d_kv
        self.num_buckets = config.relative_attention_num_buckets
        self.max_distance = config.relative_attention_max_distance
        self.q = layers.linear(config.d_model, inner, options, rngs, bias=False)
        self.k = layers.linear(config.d_model, inner, options, rngs, bias=False)
        self.v = layers.linear(config.d_model, inner, options, rngs, bias=False)
        self.o = layers.linear(inner, config.d_model, options, rngs, bias=False)
        self.relative_attention_bias = (
            nnx.Embed(
                self.num_buckets, self.heads, dtype=jnp.float32, param_dtype=options.param_dtype, rngs=rngs
            )
            if has_relative_bias
            else None
        )

    def position_bias(self, length: int) -> Array:
        """(1, heads, length, length) fp32 bias of every query-key offset."""
        if self.relative_attention_bias is None:
            raise ValueError("only the first T5 block holds the relative attention bias")
        buckets = relative_position_buckets(length, length, self.num_buckets, self.max_distance)
        return jnp.transpose(self.relative_attention_bias(jnp.asarray(buckets)), (2, 0, 1))[None]

    def __call__(self, x: Array, bias: Array) -> Array:
        # Not attention.py's kernels: they scale the scores by 1/sqrt(d) and take no additive bias,
        # and T5 needs unscaled scores plus the position bias. Scores and softmax in fp32.
        split = (*x.shape[:-1], self.heads, self.head_dim)
        query, key, value = (projection(x).reshape(split) for projection in (self.q, self.k, self.v))
        scores = jnp.einsum("bqnd,bknd->bnqk", query, key, preferred_element_type=jnp.float32) + bias
        weights = jax.nn.softmax(scores, axis=-1).astype(value.dtype)
        out = jnp.einsum("bnqk,bknd->bqnd", weights, value)
        return self.o(out.reshape(*x.shape[:-1], -1))


class T5LayerSelfAttention(nnx.Module):
    def __init__(self, config: T5Config, has_relative_bias: bool, options: ModelOptions, rngs: nnx.Rngs):
        self.SelfAttention = T5Attention(config, has_relative_bias, options, rngs)
        self.layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon, options)

    def __call__(self, x: Array, bias: Array) -> Array:
        return x + self.SelfAttention(self.layer_norm(x), bias)


class T5DenseActDense(nnx.Module):
    """The original T5's feed-forward: wo(act(wi(x)))."""

    def __init__(self, config: T5Config, options: ModelOptions, rngs: nnx.Rngs):
        self.activation = _ACTIVATIONS[config.dense_act_fn]
        self.wi = layers.linear(config.d_model, config.d_ff, options, rngs, bias=False)
        self.wo = layers.linear(config.d_ff, config.d_model, options, rngs, bias=False)

    def __call__(self, x: Array) -> Array:
        return self.wo(self.activation(self.wi(x)))


class T5DenseGatedActDense(nnx.Module):
    """T5 v1.1's gated feed-forward: wo(act(wi_0(x)) * wi_1(x))."""

    def __init__(self, config: T5Config, options: ModelOptions, rngs: nnx.Rngs):
        self.activation = _ACTIVATIONS[config.dense_act_fn]
        self.wi_0 = layers.linear(config.d_model, config.d_ff, options, rngs, bias=False)
        self.wi_1 = layers.linear(config.d_model, config.d_ff, options, rngs, bias=False)
        self.wo = layers.linear(config.d_ff, config.d_model, options, rngs, bias=False)

    def __call__(self, x: Array) -> Array:
        return self.wo(self.activation(self.wi_0(x)) * self.wi_1(x))


class T5LayerFF(nnx.Module):
    def __init__(self, config: T5Config, options: ModelOptions, rngs: nnx.Rngs):
        dense = T5DenseGatedActDense if config.is_gated_act else T5DenseActDense
        self.DenseReluDense = dense(config, options, rngs)
        self.layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon, options)

    def __call__(self, x: Array) -> Array:
        return x + self.DenseReluDense(self.layer_norm(x))


class T5Block(nnx.Module):
    """Pre-norm: x + attention(norm(x), bias), then x + feed-forward(norm(x))."""

    def __init__(self, config: T5Config, has_relative_bias: bool, options: ModelOptions, rngs: nnx.Rngs):
        self.layer = nnx.List(
            [
                T5LayerSelfAttention(config, has_relative_bias, options, rngs),
                T5LayerFF(config, options, rngs),
            ]
        )

    def __call__(self, x: Array, bias: Array) -> Array:
        x = _clamp_fp16(self.layer[0](x, bias))
        return _clamp_fp16(self.layer[1](x))


class T5Stack(nnx.Module):
    """The encoder blocks and the final norm; the embedding lives in `T5EncoderModel.shared`."""

    def __init__(self, config: T5Config, options: ModelOptions, rngs: nnx.Rngs):
        self.options = options
        self.block = nnx.List([T5Block(config, i == 0, options, rngs) for i in range(config.num_layers)])
        self.final_layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon, options)

    def __call__(self, x: Array, attention_mask: Array | None = None) -> Array:
        bias = self.block[0].layer[0].SelfAttention.position_bias(x.shape[1])
        if attention_mask is not None:  # (batch, keys) -> (batch, 1, 1, keys); padded keys get no weight
            keep = jnp.asarray(attention_mask, bool)[:, None, None, :]
            bias = jnp.where(keep, bias, _MASKED)
        x = layers.call_layer(self.block[0], self.options, x, bias)
        rest = list(self.block)[1:]
        # Every block after the first is identical (no bias table): one scanned layer's code for all.
        if self.options.scan_layers and len(rest) > 1:
            x = layers.scan_layers(rest, self.options, x, bias)
        else:
            for block in rest:
                x = layers.call_layer(block, self.options, x, bias)
        return self.final_layer_norm(x)


class T5EncoderModel(PretrainedModule):
    """transformers' `T5EncoderModel`: token ids (batch, length) -> last hidden state (batch, length, width).

    `attention_mask` (batch, length; 1 = token, 0 = padding) is optional; FLUX.1's pipeline encodes its
    512 padded tokens without one.
    """

    config_class = T5Config
    weights_name = "model"

    def __init__(self, config: T5Config, options: ModelOptions = DEFAULT_OPTIONS, *, rngs: nnx.Rngs):
        self.config = config
        self.shared = nnx.Embed(
            config.vocab_size, config.d_model, dtype=options.dtype, param_dtype=options.param_dtype, rngs=rngs
        )
        self.encoder = T5Stack(config, options, rngs)

    @staticmethod
    def ignore_unexpected(key: str) -> bool:
        # transformers ties it to shared.weight; checkpoints may hold the copy (or a decoder's weights
        # when the file is a whole T5, which T5EncoderModel ignores too).
        return key == "encoder.embed_tokens.weight" or key.startswith("decoder.") or key == "lm_head.weight"

    def __call__(self, input_ids: Array, attention_mask: Array | None = None) -> Array:
        return self.encoder(self.shared(input_ids), attention_mask)


def encode_t5_prompt(encoder: T5EncoderModel, input_ids: Array, attention_mask: Array | None = None) -> Array:
    """FLUX.1's T5 context (`prompt_embeds`): the encoder's last hidden state (batch, length, d_model).

    FLUX.1 pads prompts to `max_sequence_length` (512 for dev, 256 for schnell) and passes no mask.
    """
    return encoder(input_ids, attention_mask)


def _clamp_fp16(x: Array) -> Array:
    """transformers' fp16 guard: infinities become the largest finite value less 1000 (only in fp16)."""
    if x.dtype != jnp.float16:
        return x
    largest = float(jnp.finfo(jnp.float16).max)
    limit = jnp.where(jnp.isinf(x).any(), largest - 1000, largest).astype(x.dtype)
    return jnp.clip(x, -limit, limit)
