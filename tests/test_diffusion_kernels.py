"""The speed machinery of the diffusion models: attention kernels against the XLA computation,
one level of remat per policy, and the norms' and GELU's lean custom gradients against autodiff."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from diffusion_parity import assert_matches, nhwc
from flax import nnx
from flax.traverse_util import flatten_dict
from jax._src.ad_checkpoint import saved_residuals
from test_diffusion_unet import TINY_UNET, _gradient_jaxpr, _loss, _tiny_unet, make_inputs
from train_fixtures import train_env

from landmark_controlnet.diffusion import ModelOptions, attention
from landmark_controlnet.diffusion.attention import (
    AttentionCall,
    attention_report,
    choose_kernel,
    fused_residuals_attention,
    reset_attention_report,
    splash_attention,
    xla_attention,
)
from landmark_controlnet.diffusion.layers import exact_gelu, normalize


def qkv(batch=2, query_tokens=64, key_tokens=64, heads=2, head_dim=40, dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((batch, query_tokens, heads, head_dim))
    k, v = (rng.standard_normal((batch, key_tokens, heads, head_dim)) for _ in range(2))
    return tuple(jnp.asarray(x, dtype) for x in (q, k, v))


def value_and_grads(kernel, q, k, v):
    weights = jnp.asarray(np.random.default_rng(9).standard_normal(q.shape[:-1] + v.shape[-1:]), jnp.float32)
    return jax.value_and_grad(
        lambda *a: jnp.sum(kernel(*a).astype(jnp.float32) * weights), argnums=(0, 1, 2)
    )(q, k, v)


@pytest.mark.parametrize(
    "kernel, shape",
    [
        (fused_residuals_attention, {}),
        (splash_attention, {}),
        # 77 text tokens and a head dim of 40: both padded to the kernel's 128.
        (splash_attention, {"query_tokens": 96, "key_tokens": 77}),
    ],
    ids=["fused-residuals", "splash", "splash-padded-cross"],
)
def test_a_fused_kernel_matches_xla_forward_and_gradients(kernel, shape):
    q, k, v = qkv(**shape)
    (out, grads), (expected, expected_grads) = (
        value_and_grads(kernel, q, k, v),
        value_and_grads(xla_attention, q, k, v),
    )
    assert_matches(kernel(q, k, v), xla_attention(q, k, v), "output", tolerance=1e-5)
    assert abs(float(out) - float(expected)) <= 1e-5 * abs(float(expected))
    for name, ours, theirs in zip("qkv", grads, expected_grads, strict=True):
        assert_matches(ours, theirs, f"d{name}", tolerance=1e-5)


def test_splash_runs_in_bf16_like_xla():
    q, k, v = qkv(dtype=jnp.bfloat16, query_tokens=128, key_tokens=77)
    assert_matches(splash_attention(q, k, v), xla_attention(q, k, v), "bf16 output", tolerance=2e-2)


def test_the_fused_stand_in_keeps_only_what_cudnn_keeps():
    q, k, v = qkv(query_tokens=256, key_tokens=256)
    kept = [aval for aval, _ in saved_residuals(lambda *a: fused_residuals_attention(*a).sum(), q, k, v)]
    sizes = sorted(int(np.prod(aval.shape)) for aval in kept)
    # q, k, v and the output, plus one statistic per (example, head, query): never 256 x 256 per head.
    assert sizes == sorted([q.size, k.size, v.size, q.size, 2 * 2 * 256])
    plain = [aval for aval, _ in saved_residuals(lambda *a: xla_attention(*a).sum(), q, k, v)]
    assert max(int(np.prod(a.shape)) for a in plain) >= 2 * 2 * 256 * 256, "the test would pass on XLA too"


def call(query_tokens=4096, key_tokens=4096, head_dim=40, dtype="bfloat16", masked=False) -> AttentionCall:
    return AttentionCall(query_tokens, key_tokens, 8, head_dim, dtype, masked)


@pytest.mark.parametrize(
    "requested, backend, shape, head_limit, expected",
    [
        ("auto", "gpu", call(), 256, "cudnn"),
        ("auto", "gpu", call(key_tokens=77), 256, "cudnn"),
        ("auto", "gpu", call(head_dim=160), 256, "cudnn"),  # SD 1.5's deepest level on Hopper
        ("auto", "gpu", call(head_dim=160), 128, "xla"),  # ... and on Ampere
        ("auto", "gpu", call(head_dim=512), 256, "xla"),  # the VAE's single head
        ("auto", "gpu", call(dtype="float32"), 256, "xla"),
        ("auto", "gpu", call(masked=True), 256, "xla"),  # CLIP's causal mask
        ("auto", "gpu", call(query_tokens=64), 256, "xla"),  # SD 1.5's 8x8 level
        ("auto", "tpu", call(), 256, "splash"),
        ("auto", "cpu", call(), 256, "xla"),
        ("cudnn", "cpu", call(), 256, "xla"),
        ("splash", "cpu", call(), 256, "splash"),  # interpret mode
        ("xla", "gpu", call(), 256, "xla"),
    ],
)
def test_the_kernel_choice(monkeypatch, requested, backend, shape, head_limit, expected):
    monkeypatch.setattr(attention, "cudnn_head_dim_limit", lambda: head_limit)
    kernel, why = choose_kernel(requested, shape, backend)
    assert kernel == expected, why


def test_the_choices_are_reported_once_per_kind_of_call():
    reset_attention_report()
    model = _tiny_unet(ModelOptions(attention="splash"))
    inputs = make_inputs(TINY_UNET, latent=16, tokens=8)
    jax.eval_shape(lambda: _loss(model, inputs))
    report = attention_report()
    assert any(line.startswith("splash: ") and "self 256x256 tokens" in line for line in report), report
    assert all(re.match(r"(splash|xla): \d+ x ", line) for line in report), report


POLICY_COUNTS = {"none": 0, "blocks": 5, "layers": 4, "dots": 4}  # TINY_UNET: 5 blocks, 4 transformer layers


@pytest.mark.parametrize("policy", list(POLICY_COUNTS))
def test_one_level_of_remat_changes_neither_the_output_nor_the_gradients(policy):
    inputs = make_inputs(TINY_UNET, latent=8, tokens=8)
    plain, remat = _tiny_unet(ModelOptions()), _tiny_unet(ModelOptions(remat=policy))
    # Each jax.checkpoint shows once in the gradient's jaxpr as a `checkpoint` (or `remat`) equation;
    # a nested one would add the layers' to the blocks'.
    found = re.findall(r"\b(?:checkpoint|remat\d*)\[", _gradient_jaxpr(remat, inputs))
    assert len(found) == POLICY_COUNTS[policy]
    loss_plain, grads_plain = nnx.value_and_grad(_loss)(plain, inputs)
    loss_remat, grads_remat = nnx.value_and_grad(_loss)(remat, inputs)
    assert abs(float(loss_plain) - float(loss_remat)) <= 1e-6 * abs(float(loss_plain))
    for a, b in zip(jax.tree.leaves(grads_plain), jax.tree.leaves(grads_remat), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)


def plain_normalize(x, scale, bias, axes, eps):
    x = x.astype(jnp.float32)
    centred = x - x.mean(axis=axes, keepdims=True)
    return centred * jax.lax.rsqrt(jnp.square(centred).mean(axis=axes, keepdims=True) + eps) * scale + bias


@pytest.mark.parametrize(
    "shape, axes", [((2, 16, 4, 6), (1, 3)), ((2, 10, 24), (2,))], ids=["group-norm", "layer-norm"]
)
def test_the_norms_custom_gradient_is_autodiffs(shape, axes):
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal(shape) * 3 + 1, jnp.float32)
    params = shape[-2:] if len(axes) == 2 else shape[-1:]
    scale, bias = (jnp.asarray(rng.standard_normal(params), jnp.float32) for _ in range(2))
    weights = jnp.asarray(rng.standard_normal(shape), jnp.float32)

    def loss(norm):
        return lambda *a: jnp.sum(norm(*a) * weights)

    ours = jax.grad(loss(lambda *a: normalize(*a, axes, 1e-5, jnp.dtype(jnp.float32))), argnums=(0, 1, 2))
    theirs = jax.grad(loss(lambda *a: plain_normalize(*a, axes, 1e-5)), argnums=(0, 1, 2))
    for name, a, b in zip(
        ("dx", "dscale", "dbias"), ours(x, scale, bias), theirs(x, scale, bias), strict=True
    ):
        assert_matches(a, b, name, tolerance=1e-5)


def test_a_bf16_norm_keeps_its_bf16_input_and_its_statistics_only():
    x = jnp.ones((2, 64, 8, 40), jnp.bfloat16)
    scale, bias = jnp.ones((8, 40)), jnp.zeros((8, 40))
    kept = saved_residuals(
        lambda x: normalize(x, scale, bias, (1, 3), 1e-5, jnp.dtype(jnp.bfloat16)).sum(), x
    )
    big = [aval for aval, _ in kept if aval.size >= x.size]
    assert [a.dtype for a in big] == [jnp.bfloat16], kept
    plain = saved_residuals(
        lambda x: plain_normalize(x, scale, bias, (1, 3), 1e-5).astype(jnp.bfloat16).sum(), x
    )
    assert sum(a.size for a, _ in plain if a.dtype == jnp.float32) >= x.size, "autodiff would pass too"


def test_exact_gelu_gradient_is_autodiffs():
    x = jnp.linspace(-6, 6, 101)
    ours = jax.grad(lambda x: jnp.sum(exact_gelu(x) * jnp.cos(x)))(x)
    theirs = jax.grad(lambda x: jnp.sum(jax.nn.gelu(x, approximate=False) * jnp.cos(x)))(x)
    assert_matches(ours, theirs, "gelu gradient", tolerance=1e-6)


def test_unet_with_splash_attention_matches_xla():
    inputs = make_inputs(TINY_UNET, latent=16, tokens=8)
    args = tuple(jnp.asarray(a) for a in (nhwc(inputs["sample"]), inputs["timesteps"], inputs["context"]))
    splash, xla = (_tiny_unet(ModelOptions(attention=name)) for name in ("splash", "xla"))
    assert_matches(splash(*args), xla(*args), "UNet output", tolerance=1e-5)


SPLASH_ON_A_MESH = """
import json, jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from landmark_controlnet.diffusion.attention import batch_mesh, splash_attention, xla_attention
from landmark_controlnet.training.sharding import MeshShape
mesh = MeshShape.parse("data=2,fsdp=2", 4).mesh()
rng = np.random.default_rng(0)
rows = NamedSharding(mesh, P(("data", "fsdp")))
q, k, v = (jax.device_put(jnp.asarray(rng.standard_normal((4, 128, 2, 40))), rows) for _ in "qkv")

def loss(kernel, q):
    with batch_mesh(mesh):
        return jnp.sum(kernel(q, k, v) ** 2)

lowered = jax.jit(lambda q: loss(splash_attention, q)).lower(q).as_text()
ours, theirs = (
    jax.jit(jax.value_and_grad(lambda q, f=f: loss(f, q)))(q) for f in (splash_attention, xla_attention)
)
print(json.dumps({
    "manual": "manual" in lowered,
    "loss": [float(ours[0]), float(theirs[0])],
    "grad_error": float(jnp.abs(ours[1] - theirs[1]).max() / jnp.abs(theirs[1]).max()),
}))
"""


def test_splash_attention_splits_the_batch_over_the_mesh_with_shard_map():
    result = subprocess.run(
        [sys.executable, "-c", SPLASH_ON_A_MESH], capture_output=True, text=True, env=train_env(devices=4)
    )
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["manual"], "no shard_map in the lowered program"
    ours, theirs = found["loss"]
    assert abs(ours - theirs) <= 1e-5 * abs(theirs)
    assert found["grad_error"] <= 1e-5


def test_scanned_transformer_layers_equal_the_unrolled_ones():
    from landmark_controlnet.diffusion import TextTimeConditioning, UNetConfig
    from landmark_controlnet.diffusion.unet import UNet2DConditionModel
    from landmark_controlnet.training.tiny_sd import SDXL_UNET

    config = UNetConfig.from_dict({**SDXL_UNET, "transformer_layers_per_block": [1, 1, 3]})
    rng = np.random.default_rng(0)
    sample = jnp.asarray(rng.standard_normal((2, 8, 8, 4)), jnp.float32)
    context = jnp.asarray(rng.standard_normal((2, 8, config.cross_attention_dim)), jnp.float32)
    pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
    added = TextTimeConditioning(jnp.asarray(rng.standard_normal((2, pooled))), jnp.full((2, 6), 64.0))

    def loss(model):
        return jnp.mean(model(sample, jnp.array([3, 500]), context, added) ** 2)

    results = {}
    for scan in (False, True):
        model = UNet2DConditionModel(config, ModelOptions(scan_layers=scan, remat="dots"), rngs=nnx.Rngs(0))
        value, grads = nnx.value_and_grad(loss)(model)
        results[scan] = value, flatten_dict(nnx.to_pure_dict(grads))
    assert "scan" in str(jax.make_jaxpr(loss)(model)), "the layers were not scanned"
    (unrolled, expected), (scanned, grads) = results[False], results[True]
    assert abs(float(scanned) - float(unrolled)) <= 1e-6 * abs(float(unrolled))
    assert grads.keys() == expected.keys()  # diffusers' keys, one module per layer
    largest = max(float(np.abs(g).max()) for g in expected.values())
    for key, grad in grads.items():
        np.testing.assert_allclose(grad, expected[key], rtol=1e-4, atol=1e-6 * largest, err_msg=str(key))
