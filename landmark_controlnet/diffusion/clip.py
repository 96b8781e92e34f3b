"""CLIP text encoders (transformers' `CLIPTextModel` and `CLIPTextModelWithProjection`) in Flax NNX.

Attribute names follow transformers, so `text_model.encoder.layers.0.self_attn.q_proj.kernel` is the
checkpoint key `text_model.encoder.layers.0.self_attn.q_proj.weight`. SD 1.x and 2.x condition the UNet
on one encoder's last hidden state (`encode_prompt`); SDXL on two encoders' penultimate hidden states
side by side, pooled by the second one's projection (`encode_sdxl_prompt`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from . import layers
from .config import ModelConfig, UnsupportedConfigError
from .options import DEFAULT_OPTIONS, ModelOptions
from .pretrained import PretrainedModule

Array = jax.Array

LEGACY_EOS_TOKEN_ID = 2
"""configs written before transformers PR #24773 say eos_token_id=2; the EOS is then the highest id."""

_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    # OpenAI CLIP's sigmoid approximation of GELU (SD 1.x, SDXL's first encoder).
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    # Exact (erf) GELU: the OpenCLIP encoders of SD 2.x and SDXL's second encoder.
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
}


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig(ModelConfig):
    """A transformers `text_encoder/config.json`; defaults are transformers' `CLIPTextConfig` defaults."""

    class_name: ClassVar[str] = "CLIPTextModel"
    unsupported: ClassVar = {"hidden_act": tuple(_ACTIVATIONS)}

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    projection_dim: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    bos_token_id: int = 49406
    eos_token_id: int = 49407
    pad_token_id: int = 1

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise UnsupportedConfigError(
                f"hidden_size={self.hidden_size} is not a multiple of "
                f"num_attention_heads={self.num_attention_heads}"
            )


@dataclasses.dataclass(frozen=True)
class CLIPTextWithProjectionConfig(CLIPTextConfig):
    """The same keys; only the class written in the checkpoint differs (SDXL's `text_encoder_2`)."""

    class_name: ClassVar[str] = "CLIPTextModelWithProjection"


class CLIPTextOutput(NamedTuple):
    last_hidden_state: Array
    """(batch, length, hidden) after the final LayerNorm: SD 1.x/2.x's UNet context."""
    penultimate_hidden_state: Array
    """The input of the last encoder layer, no final LayerNorm (transformers' `hidden_states[-2]`)."""
    pooled_output: Array
    """(batch, hidden): `last_hidden_state` at each sequence's EOS token."""


class CLIPTextProjectionOutput(NamedTuple):
    last_hidden_state: Array
    penultimate_hidden_state: Array
    pooled_output: Array
    text_embeds: Array
    """(batch, projection_dim): `text_projection(pooled_output)`, SDXL's pooled text embedding."""


def eos_positions(input_ids: Array, eos_token_id: int) -> Array:
    """Index of each row's EOS token, by transformers' rule for the config's eos_token_id.

    A legacy config (eos_token_id=2) takes the highest id, which is the EOS for the original vocabulary;
    otherwise the first position holding eos_token_id (padding may repeat it).
    """
    if eos_token_id == LEGACY_EOS_TOKEN_ID:
        return jnp.argmax(input_ids, axis=-1)
    return jnp.argmax(input_ids == eos_token_id, axis=-1)


class CLIPTextEmbeddings(nnx.Module):
    def __init__(self, config: CLIPTextConfig, options: ModelOptions, rngs: nnx.Rngs):
        self.token_embedding = _embed(config.vocab_size, config.hidden_size, options, rngs)
        self.position_embedding = _embed(config.max_position_embeddings, config.hidden_size, options, rngs)

    def __call__(self, input_ids: Array) -> Array:
        length = input_ids.shape[-1]
        if length > self.position_embedding.num_embeddings:
            raise ValueError(
                f"{length} tokens is longer than the {self.position_embedding.num_embeddings} "
                "positions this CLIP encoder has"
            )
        return self.token_embedding(input_ids) + self.position_embedding(jnp.arange(length))


class CLIPAttention(nnx.Module):
    """Self-attention with transformers' names (q_proj/k_proj/v_proj/out_proj, all with bias)."""

    def __init__(self, config: CLIPTextConfig, options: ModelOptions, rngs: nnx.Rngs):
        width = config.hidden_size
        self.heads = config.num_attention_heads
        self.options = options
        self.q_proj = layers.linear(width, width, options, rngs)
        self.k_proj = layers.linear(width, width, options, rngs)
        self.v_proj = layers.linear(width, width, options, rngs)
        self.out_proj = layers.linear(width, width, options, rngs)

    def __call__(self, x: Array, mask: Array | None = None) -> Array:
        query, key, value = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        out = layers.multi_head_attention(
            query, key, value, self.heads, self.options, is_causal=True, mask=mask
        )
        return self.out_proj(out)


class CLIPMLP(nnx.Module):
    def __init__(self, config: CLIPTextConfig, options: ModelOptions, rngs: nnx.Rngs):
        self.activation = _ACTIVATIONS[config.hidden_act]
        self.fc1 = layers.linear(config.hidden_size, config.intermediate_size, options, rngs)
        self.fc2 = layers.linear(config.intermediate_size, config.hidden_size, options, rngs)

    def __call__(self, x: Array) -> Array:
        return self.fc2(self.activation(self.fc1(x)))


class CLIPEncoderLayer(nnx.Module):
    """Pre-norm: x + attention(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, config: CLIPTextConfig, options: ModelOptions, rngs: nnx.Rngs):
        self.self_attn = CLIPAttention(config, options, rngs)
        self.layer_norm1 = layers.layer_norm(config.hidden_size, config.layer_norm_eps, options, rngs)
        self.mlp = CLIPMLP(config, options, rngs)
        self.layer_norm2 = layers.layer_norm(config.hidden_size, config.layer_norm_eps, options, rngs)

    def __call__(self, x: Array, mask: Array | None = None) -> Array:
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nnx.Module):
    def __init__(self, config: CLIPTextConfig, options: ModelOptions, rngs: nnx.Rngs):
        self.layers = nnx.List(
            [CLIPEncoderLayer(config, options, rngs) for _ in range(config.num_hidden_layers)]
        )

    def __call__(self, x: Array, mask: Array | None = None) -> tuple[Array, Array]:
        """The last layer's output and its input (the penultimate hidden state)."""
        penultimate = x
        for layer in self.layers:
            penultimate, x = x, layer(x, mask)
        return x, penultimate


class CLIPTextTransformer(nnx.Module):
    def __init__(self, config: CLIPTextConfig, options: ModelOptions, rngs: nnx.Rngs):
        self.eos_token_id = config.eos_token_id
        self.embeddings = CLIPTextEmbeddings(config, options, rngs)
        self.encoder = CLIPEncoder(config, options, rngs)
        self.final_layer_norm = layers.layer_norm(config.hidden_size, config.layer_norm_eps, options, rngs)

    def __call__(self, input_ids: Array, attention_mask: Array | None = None) -> CLIPTextOutput:
        # Padding mask (batch, length) -> (batch, heads=1, queries=1, keys), combined with the causal mask.
        mask = None if attention_mask is None else jnp.asarray(attention_mask, bool)[:, None, None, :]
        last, penultimate = self.encoder(self.embeddings(input_ids), mask)
        last = self.final_layer_norm(last)
        eos = eos_positions(input_ids, self.eos_token_id)
        pooled = jnp.take_along_axis(last, eos[:, None, None], axis=1)[:, 0]
        return CLIPTextOutput(last, penultimate, pooled)


class CLIPTextModel(PretrainedModule):
    """transformers' `CLIPTextModel`: token ids (batch, length) -> hidden states and the EOS-pooled state.

    `attention_mask` (batch, length; 1 = token, 0 = padding) is optional: Stable Diffusion's pipelines
    encode padded prompts without one.
    """

    config_class = CLIPTextConfig
    weights_name = "model"

    def __init__(self, config: CLIPTextConfig, options: ModelOptions = DEFAULT_OPTIONS, *, rngs: nnx.Rngs):
        self.config = config
        self.text_model = CLIPTextTransformer(config, options, rngs)

    @staticmethod
    def ignore_unexpected(key: str) -> bool:
        return _is_position_ids(key)

    @staticmethod
    def legacy_key(key: str) -> str:
        # transformers 5 saves this model without the `text_model.` prefix the Hub's SD repos have.
        return key if key.startswith("text_model.") else f"text_model.{key}"

    def __call__(self, input_ids: Array, attention_mask: Array | None = None) -> CLIPTextOutput:
        return self.text_model(input_ids, attention_mask)


class CLIPTextModelWithProjection(PretrainedModule):
    """transformers' `CLIPTextModelWithProjection`: CLIPTextModel's outputs and the projected pooled state."""

    config_class = CLIPTextWithProjectionConfig
    weights_name = "model"

    def __init__(self, config: CLIPTextConfig, options: ModelOptions = DEFAULT_OPTIONS, *, rngs: nnx.Rngs):
        self.config = config
        self.text_model = CLIPTextTransformer(config, options, rngs)
        self.text_projection = layers.linear(
            config.hidden_size, config.projection_dim, options, rngs, bias=False
        )

    @staticmethod
    def ignore_unexpected(key: str) -> bool:
        return _is_position_ids(key)

    def __call__(self, input_ids: Array, attention_mask: Array | None = None) -> CLIPTextProjectionOutput:
        out = self.text_model(input_ids, attention_mask)
        return CLIPTextProjectionOutput(*out, text_embeds=self.text_projection(out.pooled_output))


def encode_prompt(encoder: CLIPTextModel, input_ids: Array) -> Array:
    """SD 1.x/2.x's UNet context: the text encoder's last hidden state (batch, 77, hidden)."""
    return encoder(input_ids).last_hidden_state


def encode_sdxl_prompt(
    encoder_1: CLIPTextModel,
    encoder_2: CLIPTextModelWithProjection,
    input_ids_1: Array,
    input_ids_2: Array,
) -> tuple[Array, Array]:
    """SDXL's (context, pooled): both encoders' penultimate states side by side (768 + 1280 = 2048
    channels for the released encoders), and the second encoder's projected EOS state."""
    first = encoder_1(input_ids_1)
    second = encoder_2(input_ids_2)
    context = jnp.concatenate([first.penultimate_hidden_state, second.penultimate_hidden_state], axis=-1)
    return context, second.text_embeds


def _embed(count: int, features: int, options: ModelOptions, rngs: nnx.Rngs) -> nnx.Embed:
    return nnx.Embed(count, features, dtype=options.dtype, param_dtype=options.param_dtype, rngs=rngs)


def _is_position_ids(key: str) -> bool:
    # Older checkpoints (SD 1.5's among them) saved the position_ids buffer, an arange we recompute.
    return key.endswith("embeddings.position_ids")
