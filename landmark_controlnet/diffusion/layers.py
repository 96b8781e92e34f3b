"""Building blocks shared by the UNet, the ControlNet and the VAE.

Attribute names follow diffusers' PyTorch modules exactly (`conv1`, `time_emb_proj`, `to_out.0`,
`ff.net.2`, ...), so that a parameter's NNX path is its state-dict key: `weights.py` maps one to the
other without a table. Arrays are channel-last (NHWC); tokens are (batch, length, channels).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from .attention import attention
from .options import ModelOptions

Array = jax.Array


def linear(in_features: int, out_features: int, options: ModelOptions, rngs: nnx.Rngs, bias: bool = True):
    return nnx.Linear(
        in_features,
        out_features,
        use_bias=bias,
        dtype=options.dtype,
        param_dtype=options.param_dtype,
        rngs=rngs,
    )


def conv2d(
    in_channels: int,
    out_channels: int,
    options: ModelOptions,
    rngs: nnx.Rngs,
    kernel_size: int = 3,
    stride: int = 1,
    padding: int | None = None,
) -> nnx.Conv:
    """A square convolution padded like PyTorch's (`padding` defaults to kernel_size // 2)."""
    pad = kernel_size // 2 if padding is None else padding
    return nnx.Conv(
        in_channels,
        out_channels,
        kernel_size=(kernel_size, kernel_size),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        dtype=options.dtype,
        param_dtype=options.param_dtype,
        rngs=rngs,
    )


class GroupNorm(nnx.Module):
    """PyTorch's GroupNorm over channel-last input, with `scale` and `bias` as Flax names them.

    The input is normalised in its grouped view: broadcasting the group statistics back to every
    channel first costs time and compile.
    """

    def __init__(self, channels: int, groups: int, eps: float, options: ModelOptions, rngs: nnx.Rngs):
        del rngs  # ones and zeros, as PyTorch initialises them
        self.groups, self.eps, self.dtype = groups, eps, options.dtype
        self.scale = nnx.Param(jnp.ones((channels,), options.param_dtype))
        self.bias = nnx.Param(jnp.zeros((channels,), options.param_dtype))

    def __call__(self, x: Array) -> Array:
        per_group = (self.groups, x.shape[-1] // self.groups)
        grouped = x.reshape(x.shape[0], -1, *per_group)
        scale, bias = self.scale[...].reshape(per_group), self.bias[...].reshape(per_group)
        return normalize(grouped, scale, bias, (1, 3), self.eps, jnp.dtype(self.dtype)).reshape(x.shape)


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis, with nnx.LayerNorm's parameter names (`scale`, `bias`)."""

    def __init__(self, features: int, eps: float, options: ModelOptions, rngs: nnx.Rngs):
        del rngs
        self.eps, self.dtype = eps, options.dtype
        self.scale = nnx.Param(jnp.ones((features,), options.param_dtype))
        self.bias = nnx.Param(jnp.zeros((features,), options.param_dtype))

    def __call__(self, x: Array) -> Array:
        return normalize(x, self.scale[...], self.bias[...], (x.ndim - 1,), self.eps, jnp.dtype(self.dtype))


def layer_norm(features: int, eps: float, options: ModelOptions, rngs: nnx.Rngs) -> LayerNorm:
    return LayerNorm(features, eps, options, rngs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def normalize(x: Array, scale: Array, bias: Array, axes: tuple[int, ...], eps: float, dtype) -> Array:
    """(x - mean) / sqrt(var + eps) * scale + bias over `axes`, statistics in fp32 with a two-pass
    variance (the one-pass form loses precision on large activations). `scale` and `bias` span the
    trailing axes of `x`. Its backward pass keeps only `x` in its own dtype and the per-group mean
    and reciprocal deviation, where autodiff would keep several fp32 copies of `x`."""
    return _normalize_forward(x, scale, bias, axes, eps, dtype)[0]


def _normalize_forward(x, scale, bias, axes, eps, dtype):
    x32 = x.astype(jnp.float32)
    mean = x32.mean(axis=axes, keepdims=True)
    centred = x32 - mean
    rstd = jax.lax.rsqrt(jnp.square(centred).mean(axis=axes, keepdims=True) + eps)
    out = (centred * rstd * scale + bias).astype(dtype)
    return out, (x, mean, rstd, scale, bias)


def _normalize_backward(axes, eps, dtype, residuals, d_out):
    del eps, dtype
    x, mean, rstd, scale, bias = residuals
    normalised = (x.astype(jnp.float32) - mean) * rstd
    d_out = d_out.astype(jnp.float32)
    d_normalised = d_out * scale.astype(jnp.float32)
    d_x = rstd * (
        d_normalised
        - d_normalised.mean(axis=axes, keepdims=True)
        - normalised * (d_normalised * normalised).mean(axis=axes, keepdims=True)
    )
    over_rows = tuple(range(x.ndim - scale.ndim))
    d_scale = (d_out * normalised).sum(axis=over_rows)
    d_bias = d_out.sum(axis=over_rows)
    return d_x.astype(x.dtype), d_scale.astype(scale.dtype), d_bias.astype(bias.dtype)


normalize.defvjp(_normalize_forward, _normalize_backward)


@jax.custom_vjp
def exact_gelu(x: Array) -> Array:
    """GELU with the exact erf, whose backward pass keeps only its input and recomputes the rest."""
    return jax.nn.gelu(x, approximate=False)


def _exact_gelu_backward(x: Array, d_out: Array) -> tuple[Array]:
    x32 = x.astype(jnp.float32)
    cdf = 0.5 * (1.0 + jax.lax.erf(x32 * (1 / math.sqrt(2))))
    pdf = jnp.exp(-0.5 * jnp.square(x32)) / math.sqrt(2 * math.pi)
    return ((d_out.astype(jnp.float32) * (cdf + x32 * pdf)).astype(x.dtype),)


exact_gelu.defvjp(lambda x: (exact_gelu(x), x), _exact_gelu_backward)


def multi_head_attention(
    query: Array,
    key: Array,
    value: Array,
    heads: int,
    options: ModelOptions,
    is_causal: bool = False,
    mask: Array | None = None,
) -> Array:
    """(batch, length, heads * head_dim) projections in, the same layout out; the kernel is
    `options.attention`'s choice for this call (see `attention.py`)."""
    query, key, value = (x.reshape(*x.shape[:-1], heads, x.shape[-1] // heads) for x in (query, key, value))
    out = attention(query, key, value, options.attention, is_causal, mask)
    return out.reshape(*out.shape[:-2], -1)


def sinusoidal_embedding(
    timesteps: Array, dim: int, flip_sin_to_cos: bool, freq_shift: float, max_period: float = 10000.0
) -> Array:
    """diffusers' `Timesteps`: [sin | cos] (or [cos | sin]) of t times a geometric ladder of frequencies."""
    half = dim // 2
    exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
    angles = jnp.asarray(timesteps, jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
    sin, cos = jnp.sin(angles), jnp.cos(angles)
    emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
    return jnp.pad(emb, ((0, 0), (0, dim % 2)))


class TimestepEmbedding(nnx.Module):
    """Two linear layers with SiLU between: the sinusoidal features to the block's embedding width."""

    def __init__(self, in_features: int, embed_dim: int, options: ModelOptions, rngs: nnx.Rngs):
        self.linear_1 = linear(in_features, embed_dim, options, rngs)
        self.linear_2 = linear(embed_dim, embed_dim, options, rngs)

    def __call__(self, x: Array) -> Array:
        return self.linear_2(jax.nn.silu(self.linear_1(x)))


class ResnetBlock2D(nnx.Module):
    """GroupNorm-SiLU-conv twice, the time embedding added in between, a 1x1 shortcut when widths differ."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int | None,
        groups: int,
        eps: float,
        options: ModelOptions,
        rngs: nnx.Rngs,
    ):
        self.norm1 = GroupNorm(in_channels, groups, eps, options, rngs)
        self.conv1 = conv2d(in_channels, out_channels, options, rngs)
        self.time_emb_proj = linear(temb_channels, out_channels, options, rngs) if temb_channels else None
        self.norm2 = GroupNorm(out_channels, groups, eps, options, rngs)
        self.conv2 = conv2d(out_channels, out_channels, options, rngs)
        self.conv_shortcut = (
            conv2d(in_channels, out_channels, options, rngs, kernel_size=1)
            if in_channels != out_channels
            else None
        )

    def __call__(self, x: Array, temb: Array | None = None) -> Array:
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        if self.time_emb_proj is not None and temb is not None:
            h = h + self.time_emb_proj(jax.nn.silu(temb))[:, None, None, :]
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return shortcut + h


class Downsample2D(nnx.Module):
    """A stride-2 3x3 conv. padding=0 is the VAE's form: pad right and bottom by one, then convolve."""

    def __init__(self, channels: int, padding: int, options: ModelOptions, rngs: nnx.Rngs):
        self.asymmetric_pad = padding == 0
        self.conv = conv2d(channels, channels, options, rngs, stride=2, padding=padding)

    def __call__(self, x: Array) -> Array:
        if self.asymmetric_pad:
            x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return self.conv(x)


class Upsample2D(nnx.Module):
    """Nearest-neighbour 2x, then a 3x3 conv."""

    def __init__(self, channels: int, options: ModelOptions, rngs: nnx.Rngs):
        self.conv = conv2d(channels, channels, options, rngs)

    def __call__(self, x: Array) -> Array:
        return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))


class Attention(nnx.Module):
    """Multi-head attention with diffusers' names: to_q/to_k/to_v, output projection at to_out.0.

    `norm_groups` gives the VAE's form, a `GroupNorm` applied to the input first.
    """

    def __init__(
        self,
        query_dim: int,
        heads: int,
        head_dim: int,
        options: ModelOptions,
        rngs: nnx.Rngs,
        context_dim: int | None = None,
        qkv_bias: bool = False,
        norm_groups: int | None = None,
        norm_eps: float = 1e-6,
    ):
        inner = heads * head_dim
        context_dim = context_dim or query_dim
        self.heads = heads
        self.options = options
        self.group_norm = GroupNorm(query_dim, norm_groups, norm_eps, options, rngs) if norm_groups else None
        self.to_q = linear(query_dim, inner, options, rngs, bias=qkv_bias)
        self.to_k = linear(context_dim, inner, options, rngs, bias=qkv_bias)
        self.to_v = linear(context_dim, inner, options, rngs, bias=qkv_bias)
        self.to_out = nnx.List([linear(inner, query_dim, options, rngs)])

    def __call__(self, x: Array, context: Array | None = None) -> Array:
        if self.group_norm is not None:
            x = self.group_norm(x)
        context = x if context is None else context.astype(x.dtype)
        out = multi_head_attention(
            self.to_q(x), self.to_k(context), self.to_v(context), self.heads, self.options
        )
        return self.to_out[0](out)


class GEGLU(nnx.Module):
    """One projection to twice the width, half of it gating the other through exact GELU."""

    def __init__(self, dim: int, inner_dim: int, options: ModelOptions, rngs: nnx.Rngs):
        self.proj = linear(dim, inner_dim * 2, options, rngs)

    def __call__(self, x: Array) -> Array:
        hidden, gate = jnp.split(self.proj(x), 2, axis=-1)
        return hidden * exact_gelu(gate)


class FeedForward(nnx.Module):
    def __init__(self, dim: int, options: ModelOptions, rngs: nnx.Rngs, mult: int = 4):
        # Index 1 is diffusers' dropout, which holds no parameters.
        self.net = nnx.List(
            [GEGLU(dim, dim * mult, options, rngs), None, linear(dim * mult, dim, options, rngs)]
        )

    def __call__(self, x: Array) -> Array:
        return self.net[2](self.net[0](x))


class BasicTransformerBlock(nnx.Module):
    """Pre-norm self-attention, cross-attention on the text, then a GEGLU feed-forward."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int, options: ModelOptions, rngs):
        self.norm1 = layer_norm(dim, 1e-5, options, rngs)
        self.attn1 = Attention(dim, heads, head_dim, options, rngs)
        self.norm2 = layer_norm(dim, 1e-5, options, rngs)
        self.attn2 = Attention(dim, heads, head_dim, options, rngs, context_dim=context_dim)
        self.norm3 = layer_norm(dim, 1e-5, options, rngs)
        self.ff = FeedForward(dim, options, rngs)

    def __call__(self, x: Array, context: Array) -> Array:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


def call_block(block: nnx.Module, options: ModelOptions, *args: Array | None):
    """Run one UNet/ControlNet block, under `jax.checkpoint` when `options.remat` is "blocks"."""
    if options.remat == "blocks":
        return nnx.remat(_call)(block, *args)
    return block(*args)


def call_layer(layer: nnx.Module, options: ModelOptions, *args: Array):
    """Run one transformer layer, under `jax.checkpoint` when `options.remat` is "layers" (nothing
    kept inside) or "dots" (the projections' outputs kept). Never inside a checkpointed block."""
    if options.remat == "layers":
        return nnx.remat(_call)(layer, *args)
    if options.remat == "dots":
        return nnx.remat(_call, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)(layer, *args)
    return layer(*args)


def _call(module: nnx.Module, *inputs):
    return module(*inputs)


def scan_layers(layers: nnx.List, options: ModelOptions, h: Array, context: Array) -> Array:
    """Run identical layers one after another as one `jax.lax.scan` over their stacked weights: the
    program holds one layer's code, not ten (SDXL's deepest stacks), so it lowers and compiles in a
    fraction of the time. The weights stay one module per layer, under diffusers' keys; they are
    stacked here, inside the traced step."""
    graphdef, _ = nnx.split(layers[0])
    stacked = jax.tree.map(lambda *weights: jnp.stack(weights), *(nnx.state(layer) for layer in layers))

    def body(carry: Array, weights) -> tuple[Array, None]:
        return call_layer(nnx.merge(graphdef, weights), options, carry, context), None

    return jax.lax.scan(body, h, stacked)[0]


class Transformer2DModel(nnx.Module):
    """GroupNorm, project in (1x1 conv; linear in SD 2.x/SDXL), transformer layers, project out, residual."""

    def __init__(
        self,
        channels: int,
        heads: int,
        head_dim: int,
        context_dim: int,
        layers: int,
        groups: int,
        use_linear_projection: bool,
        options: ModelOptions,
        rngs: nnx.Rngs,
    ):
        inner = heads * head_dim
        self.options = options
        self.use_linear_projection = use_linear_projection
        self.norm = GroupNorm(channels, groups, 1e-6, options, rngs)
        project = linear if use_linear_projection else _conv1x1
        self.proj_in = project(channels, inner, options, rngs)
        self.transformer_blocks = nnx.List(
            [BasicTransformerBlock(inner, heads, head_dim, context_dim, options, rngs) for _ in range(layers)]
        )
        self.proj_out = project(inner, channels, options, rngs)

    def __call__(self, x: Array, context: Array) -> Array:
        batch, height, width, channels = x.shape
        h = self.norm(x)
        if not self.use_linear_projection:
            h = self.proj_in(h)
        h = h.reshape(batch, height * width, -1)
        if self.use_linear_projection:
            h = self.proj_in(h)
        if self.options.scan_layers and len(self.transformer_blocks) > 1:
            h = scan_layers(self.transformer_blocks, self.options, h, context)
        else:
            for block in self.transformer_blocks:
                h = call_layer(block, self.options, h, context)
        if self.use_linear_projection:
            h = self.proj_out(h)
        h = h.reshape(batch, height, width, -1)
        if not self.use_linear_projection:
            h = self.proj_out(h)
        return x + h


def _conv1x1(in_channels: int, out_channels: int, options: ModelOptions, rngs: nnx.Rngs) -> nnx.Conv:
    return conv2d(in_channels, out_channels, options, rngs, kernel_size=1)
