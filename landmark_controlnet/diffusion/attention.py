"""Attention kernels and the choice among them, made per call from its shapes and the backend.

- "xla": heads-major einsums, logits and softmax in fp32. Runs everywhere; its backward pass keeps
  the whole softmax matrix, which is most of what a full-size step saves.
- "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")`, cuDNN's fused kernel on NVIDIA
  GPUs. It keeps q, k, v, the output and one fp32 statistic per query row.
- "splash": Pallas splash attention on TPU (interpret mode on CPU, where tests check it), under
  `shard_map` over the `batch_mesh` in context, since a Pallas call has no sharding rule of its own.

"auto" takes the fused kernel of the backend where it accepts the call and the query is long
enough to gain (`MIN_FUSED_QUERY_TOKENS`), and XLA for the rest: masked calls (CLIP's causal
mask), head dims cuDNN refuses (the VAE's single 512-wide head), fp32 runs on GPU, short queries.
Every choice is recorded while tracing; `attention_report()` lists them, for the trainer's log.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

Array = jax.Array

MIN_FUSED_QUERY_TOKENS = 256  # shorter queries (SD's 8x8 level) gain nothing from a fused kernel
SPLASH_LANES = 128  # splash attention's head dim and sequence blocks are multiples of this
SPLASH_MAX_BLOCK = 512

_choices: Counter[tuple[str, str, str]] = Counter()
_stand_in = {"gpu": False}
_batch_mesh: list[jax.sharding.Mesh] = []


@dataclass(frozen=True)
class AttentionCall:
    """What decides the kernel: the shapes of one call, per example."""

    query_tokens: int
    key_tokens: int
    heads: int
    head_dim: int
    dtype: str
    masked: bool

    @classmethod
    def of(cls, query: Array, key: Array, masked: bool) -> AttentionCall:
        """From (batch, length, heads, head_dim) query and key."""
        _, tokens, heads, head_dim = query.shape
        return cls(tokens, key.shape[1], heads, head_dim, jnp.dtype(query.dtype).name, masked)

    def describe(self) -> str:
        kind = "self" if self.query_tokens == self.key_tokens else "cross"
        return f"{kind} {self.query_tokens}x{self.key_tokens} tokens, {self.heads} heads of {self.head_dim}"


def choose_kernel(requested: str, call: AttentionCall, backend: str | None = None) -> tuple[str, str]:
    """(kernel, why): the kernel that runs `call` when `requested` is asked for on `backend`."""
    backend = backend or _backend()
    if requested == "xla":
        return "xla", "asked for"
    if call.masked:
        return "xla", "masked (no fused kernel here takes a mask)"
    if requested == "auto":
        if call.query_tokens < MIN_FUSED_QUERY_TOKENS:
            return "xla", f"under {MIN_FUSED_QUERY_TOKENS} query tokens"
        if backend not in ("gpu", "tpu"):
            return "xla", f"no fused kernel on {backend}"
        requested = "cudnn" if backend == "gpu" else "splash"
    refusal = cudnn_refusal(call, backend) if requested == "cudnn" else splash_refusal(backend)
    return ("xla", refusal) if refusal else (requested, "accepted")


def cudnn_refusal(call: AttentionCall, backend: str) -> str | None:
    """Why cuDNN's fused kernel would not take `call` (JAX's own checks), or None."""
    if backend != "gpu":
        return "cuDNN needs an NVIDIA GPU"
    if call.dtype not in ("bfloat16", "float16"):
        return f"cuDNN's fused kernel takes bf16 or fp16, not {call.dtype}"
    limit = cudnn_head_dim_limit()
    if call.head_dim % 8 or call.head_dim > limit:
        return f"cuDNN takes head dims that are multiples of 8 up to {limit}, not {call.head_dim}"
    return None


def cudnn_head_dim_limit() -> int:
    """256 from Hopper on, 128 before (JAX's `check_is_flash_attention`)."""
    if _stand_in["gpu"]:
        return 256
    capability = getattr(jax.devices()[0], "compute_capability", "0.0")
    return 256 if tuple(int(x) for x in capability.split(".")) >= (9, 0) else 128


def splash_refusal(backend: str) -> str | None:
    return None if backend in ("tpu", "cpu") else "splash attention is a TPU kernel"


def attention(
    query: Array,
    key: Array,
    value: Array,
    requested: str = "auto",
    is_causal: bool = False,
    mask: Array | None = None,
) -> Array:
    """softmax(q k^T / sqrt(d)) v for (batch, length, heads, head_dim) inputs, by the chosen kernel."""
    call = AttentionCall.of(query, key, masked=is_causal or mask is not None)
    kernel, why = choose_kernel(requested, call)
    _choices[(kernel, why, call.describe())] += 1
    if kernel == "cudnn":
        if _stand_in["gpu"] and jax.default_backend() != "gpu":
            return fused_residuals_attention(query, key, value)
        return jax.nn.dot_product_attention(query, key, value, implementation="cudnn")
    if kernel == "splash":
        return splash_attention(query, key, value)
    return xla_attention(query, key, value, is_causal, mask)


def attention_report() -> list[str]:
    """One line per (kernel, reason, call shape) traced since the last `reset_attention_report`."""
    return [
        f"{kernel}: {count} x {call}" + ("" if why in ("accepted", "asked for") else f" ({why})")
        for (kernel, why, call), count in sorted(_choices.items())
    ]


def reset_attention_report() -> None:
    _choices.clear()


@contextlib.contextmanager
def stand_in_for_gpu() -> Iterator[None]:
    """Trace as a Hopper GPU would run: cuDNN calls become `fused_residuals_attention`, which keeps
    exactly cuDNN's residuals. For counting a GPU step's saved bytes on any machine."""
    _stand_in["gpu"] = True
    try:
        yield
    finally:
        _stand_in["gpu"] = False


@contextlib.contextmanager
def batch_mesh(mesh: jax.sharding.Mesh) -> Iterator[None]:
    """Within it (while tracing), splash attention splits the batch over every axis of `mesh`."""
    _batch_mesh.append(mesh)
    try:
        yield
    finally:
        _batch_mesh.pop()


def _backend() -> str:
    return "gpu" if _stand_in["gpu"] else jax.default_backend()


def xla_attention(query: Array, key: Array, value: Array, is_causal: bool = False, mask: Array | None = None):
    """The plain computation, with the heads moved next to the batch first: XLA's CPU matmuls over
    (batch, length, heads, dim) operands cost a transpose per use."""
    query = query * jnp.asarray(query.shape[-1] ** -0.5, query.dtype)  # fewer products than the logits
    query, key, value = (jnp.swapaxes(x, 1, 2) for x in (query, key, value))
    logits = jnp.einsum("bnqd,bnkd->bnqk", query, key, preferred_element_type=jnp.float32)
    if is_causal:
        causal = jnp.tril(jnp.ones(logits.shape[-2:], bool))
        mask = causal if mask is None else mask & causal
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(value.dtype)
    return jnp.swapaxes(jnp.einsum("bnqk,bnkd->bnqd", weights, value), 1, 2)


@jax.custom_vjp
def fused_residuals_attention(query: Array, key: Array, value: Array) -> Array:
    """Attention that keeps what a fused kernel keeps (q, k, v, out, per-row log-sum-exp) and
    recomputes the softmax in its backward pass, written in XLA."""
    return _forward_with_statistics(query, key, value)[0]


def _forward_with_statistics(query: Array, key: Array, value: Array) -> tuple[Array, Array]:
    logits = _scaled_logits(query, key)
    log_sum_exp = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
    weights = jnp.exp(logits - log_sum_exp).astype(value.dtype)
    return jnp.einsum("bnqk,bknd->bqnd", weights, value), log_sum_exp


def _scaled_logits(query: Array, key: Array) -> Array:
    scale = query.shape[-1] ** -0.5
    return jnp.einsum("bqnd,bknd->bnqk", query, key, preferred_element_type=jnp.float32) * scale


def _fused_forward(query, key, value):
    out, log_sum_exp = _forward_with_statistics(query, key, value)
    return out, (query, key, value, out, log_sum_exp)


def _fused_backward(residuals, d_out):
    query, key, value, out, log_sum_exp = residuals
    weights = jnp.exp(_scaled_logits(query, key) - log_sum_exp)
    d_out32 = d_out.astype(jnp.float32)
    d_value = jnp.einsum("bnqk,bqnd->bknd", weights, d_out32)
    d_weights = jnp.einsum("bqnd,bknd->bnqk", d_out32, value.astype(jnp.float32))
    row_dot = jnp.einsum("bqnd,bqnd->bnq", d_out32, out.astype(jnp.float32))[..., None]
    d_logits = weights * (d_weights - row_dot) * query.shape[-1] ** -0.5
    d_query = jnp.einsum("bnqk,bknd->bqnd", d_logits, key.astype(jnp.float32))
    d_key = jnp.einsum("bnqk,bqnd->bknd", d_logits, query.astype(jnp.float32))
    return tuple(
        g.astype(x.dtype) for g, x in zip((d_query, d_key, d_value), (query, key, value), strict=True)
    )


fused_residuals_attention.defvjp(_fused_forward, _fused_backward)


def splash_attention(query: Array, key: Array, value: Array) -> Array:
    """Pallas splash attention: the query pre-scaled, head dims and lengths padded to its blocks
    (padded keys masked by segment ids), under `shard_map` over every axis of the `batch_mesh` in context
    when the batch divides over it."""
    batch, query_tokens, heads, head_dim = query.shape
    key_tokens = key.shape[1]
    query = query * jnp.asarray(head_dim**-0.5, query.dtype)
    padded_dim = _round_up(head_dim, SPLASH_LANES)
    q_len, kv_len = _round_up(query_tokens, SPLASH_LANES), _round_up(key_tokens, SPLASH_LANES)
    query, key, value = (
        jnp.pad(jnp.swapaxes(x, 1, 2), ((0, 0), (0, 0), (0, length - x.shape[1]), (0, padded_dim - head_dim)))
        for x, length in ((query, q_len), (key, kv_len), (value, kv_len))
    )
    kernel = _splash_kernel(heads, q_len, kv_len, interpret=jax.default_backend() != "tpu")
    segments = _padding_segments(q_len, kv_len, key_tokens)

    def per_shard(q, k, v):
        return jax.vmap(kernel, in_axes=(0, 0, 0, None))(q, k, v, segments)

    mesh = _batch_mesh[-1] if _batch_mesh else None
    if mesh is not None and batch % mesh.size == 0:
        spec = P(tuple(mesh.axis_names))
        per_shard = jax.shard_map(per_shard, mesh=mesh, in_specs=(spec,) * 3, out_specs=spec, check_vma=False)
    out = per_shard(query, key, value)
    return jnp.swapaxes(out[:, :, :query_tokens, :head_dim], 1, 2)


def _round_up(n: int, multiple: int) -> int:
    return math.ceil(n / multiple) * multiple


def _block(length: int) -> int:
    """The largest block up to SPLASH_MAX_BLOCK that divides `length` (a multiple of SPLASH_LANES)."""
    return next(b for b in range(SPLASH_MAX_BLOCK, 0, -SPLASH_LANES) if length % b == 0)


@functools.cache
def _splash_kernel(heads: int, q_len: int, kv_len: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

    block_q, block_kv = _block(q_len), _block(kv_len)
    sizes = splash.BlockSizes(
        block_q=block_q,
        block_kv=block_kv,
        block_kv_compute=block_kv,
        block_q_dkv=block_q,
        block_kv_dkv=block_kv,
        block_kv_dkv_compute=block_kv,
        block_q_dq=block_q,
        block_kv_dq=block_kv,
    )
    mask = masks.MultiHeadMask([masks.FullMask((q_len, kv_len))] * heads)
    with jax.ensure_compile_time_eval():  # cached across traces: its arrays must be concrete
        return splash.make_splash_mha(
            mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret
        )


def _padding_segments(q_len: int, kv_len: int, real_keys: int):
    """Segment ids that keep every query off the padded keys."""
    from jax.experimental.pallas.ops.tpu.splash_attention.splash_attention_kernel import SegmentIds

    keys = np.zeros(kv_len, np.int32)
    keys[real_keys:] = 1
    return SegmentIds(q=jnp.zeros(q_len, jnp.int32), kv=jnp.asarray(keys))
