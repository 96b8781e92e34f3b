"""Exporting our models: a ControlNet trained two steps here, written by `save_pretrained` (float32 and
float16), loads in PyTorch diffusers with every key matched and computes what ours computes; an exported
UNet and VAE load in diffusers; `save_native` / `load_native` round-trips exactly; loading and running a model
never imports torch, diffusers or transformers."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from diffusers import AutoencoderKL as TorchAutoencoderKL
from diffusers import ControlNetModel as TorchControlNet
from diffusers import UNet2DConditionModel as TorchUNet
from flax import nnx
from safetensors import safe_open

from landmark_controlnet.diffusion.controlnet import ControlNetConfig, ControlNetModel
from landmark_controlnet.diffusion.export import ExportError, load_native, save_native, save_pretrained
from landmark_controlnet.diffusion.loading import from_pretrained
from landmark_controlnet.diffusion.unet import UNet2DConditionModel, UNetConfig
from landmark_controlnet.diffusion.unet_blocks import PLAIN_DOWN, PLAIN_UP
from landmark_controlnet.diffusion.vae import AutoencoderKL, AutoencoderKLConfig
from landmark_controlnet.diffusion.weights import torch_state_dict
from tests.diffusion_parity import assert_matches, nchw, nhwc

REPO = Path(__file__).resolve().parents[1]
# SD 1.5's block structure (the UNetConfig defaults) at small widths.
SD15_SMALL_UNET = UNetConfig(block_out_channels=(32, 64, 64, 64), norm_num_groups=8, cross_attention_dim=48)
SD15_SMALL_CONTROLNET = ControlNetConfig.from_unet(SD15_SMALL_UNET)
# The UNet the ControlNet trains against: same down-path shapes (so the residuals fit), no attention
# outside the mid block, so that compiling its backward pass stays cheap (SD 1.5's UNet is exported below).
TRAINING_UNET = SD15_SMALL_UNET.replace(down_block_types=(PLAIN_DOWN,) * 4, up_block_types=(PLAIN_UP,) * 4)
# Unoptimised XLA code computes the same numbers; compiling the train step optimised takes minutes.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
CONDITIONING_SCALE = 0.7
PYTORCH_LIBRARIES = ("torch", "diffusers", "transformers")


def random_model(cls, config, seed: int):
    """Every parameter random and non-zero, the zero-initialised convs included.

    Built abstractly and filled from numpy: JAX's eager random init costs a compile per shape.
    Kernels ~ N(0, 1/fan_in) keep activations in range; norm scales near 1, biases near 0.
    """
    rng = np.random.default_rng(seed)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: cls(config, rngs=nnx.Rngs(0))))
    filled = []
    for path, variable in nnx.to_flat_state(state):
        shape = variable.get_raw_value().shape
        noise = rng.standard_normal(shape).astype(np.float32)
        if path[-1] == "kernel":
            value = noise / np.sqrt(np.prod(shape[:-1]))
        else:
            value = (path[-1] == "scale") + 0.1 * noise
        filled.append((path, variable.replace(value=jnp.asarray(value, jnp.float32))))
    return nnx.merge(graphdef, nnx.from_flat_state(filled))


def make_batch(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    # 16x16 latents: the mid block's self-attention sees 2x2 tokens (one token gives q, k no gradient).
    latent, tokens, context_dim = 16, 8, SD15_SMALL_UNET.cross_attention_dim
    return {
        "sample": rng.standard_normal((2, latent, latent, 4), np.float32),
        "timesteps": np.array([10, 700], np.int64),
        "context": rng.standard_normal((2, tokens, context_dim), np.float32),
        "image": rng.uniform(0, 1, (2, latent * 8, latent * 8, 3)).astype(np.float32),
        "noise": rng.standard_normal((2, latent, latent, 4), np.float32),
    }


def noise_prediction_loss(controlnet: ControlNetModel, unet: UNet2DConditionModel, batch) -> jax.Array:
    residuals = controlnet(batch["sample"], batch["timesteps"], batch["context"], batch["image"])
    prediction = unet(
        batch["sample"],
        batch["timesteps"],
        batch["context"],
        down_block_additional_residuals=residuals.down_block_residuals,
        mid_block_additional_residual=residuals.mid_block_residual,
    )
    return jnp.mean((prediction - batch["noise"]) ** 2)


@partial(jax.jit, static_argnums=0, compiler_options=FAST_COMPILE)
def train_step(graphdef, state, batch):
    controlnet, unet, optimizer = nnx.merge(graphdef, state)
    loss, grads = nnx.value_and_grad(noise_prediction_loss)(controlnet, unet, batch)
    optimizer.update(controlnet, grads)
    return loss, nnx.state((controlnet, unet, optimizer))


@partial(jax.jit, static_argnums=0, compiler_options=FAST_COMPILE)
def _controlnet_forward(graphdef, params, batch):
    residuals = nnx.merge(graphdef, params)(
        batch["sample"],
        batch["timesteps"],
        batch["context"],
        batch["image"],
        conditioning_scale=CONDITIONING_SCALE,
    )
    return [*residuals.down_block_residuals, residuals.mid_block_residual]


def run_ours(controlnet: ControlNetModel, batch) -> list[np.ndarray]:
    """Down residuals then the mid residual; compiled once for every ControlNet of one config (numpy
    parameters, so that Orbax's device-committed arrays do not key a second compile)."""
    graphdef, params = nnx.split(controlnet)
    params = jax.tree.map(np.asarray, params)
    return [np.asarray(r) for r in _controlnet_forward(graphdef, params, batch)]


def run_theirs(controlnet: TorchControlNet, batch) -> list[np.ndarray]:
    with torch.no_grad():
        down, mid = controlnet(
            torch.from_numpy(nchw(batch["sample"])),
            torch.from_numpy(batch["timesteps"]),
            torch.from_numpy(batch["context"]),
            torch.from_numpy(nchw(batch["image"])),
            conditioning_scale=CONDITIONING_SCALE,
            return_dict=False,
        )
    return [nhwc(r.numpy()) for r in (*down, mid)]


def load_in_diffusers(torch_class, folder: Path):
    """The PyTorch model in float32 (whatever the file's dtype), after checking every key matched."""
    model, info = torch_class.from_pretrained(folder, torch_dtype=torch.float32, output_loading_info=True)
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        assert not info[kind], f"{folder}: diffusers reports {kind}: {info[kind]}"
    return model.eval()


def assert_residuals_match(ours: list, theirs: list, what: str) -> None:
    assert len(ours) == len(theirs), f"{what}: {len(ours)} residuals vs {len(theirs)}"
    for i, (mine, reference) in enumerate(zip(ours, theirs, strict=True)):
        assert_matches(mine, reference, f"{what}: residual {i}")


@pytest.fixture(scope="module")
def batch() -> dict[str, np.ndarray]:
    return make_batch(seed=3)


@pytest.fixture(scope="module")
def trained_controlnet(batch) -> ControlNetModel:
    """The ControlNet after two Adam steps on the noise-prediction loss through a random UNet."""
    controlnet = random_model(ControlNetModel, SD15_SMALL_CONTROLNET, seed=0)
    unet = random_model(UNet2DConditionModel, TRAINING_UNET, seed=1)
    before = torch_state_dict(controlnet)
    optimizer = nnx.Optimizer(controlnet, optax.adam(1e-3), wrt=nnx.Param)
    graphdef, state = nnx.split((controlnet, unet, optimizer))
    losses = []
    for _ in range(2):
        loss, state = train_step(graphdef, state, batch)
        losses.append(float(loss))
    nnx.update((controlnet, unet, optimizer), state)
    assert np.isfinite(losses).all(), losses
    after = torch_state_dict(controlnet)
    unchanged = [key for key, value in after.items() if np.array_equal(value, before[key])]
    assert not unchanged, f"training left these parameters unchanged: {unchanged[:5]}"
    return controlnet


def test_trained_controlnet_exports_to_diffusers_in_float32(trained_controlnet, batch, tmp_path):
    weights = save_pretrained(trained_controlnet, tmp_path)
    assert weights == tmp_path / "diffusion_pytorch_model.safetensors"
    with safe_open(str(weights), framework="numpy") as f:
        assert f.metadata() == {"format": "pt"}
    theirs = run_theirs(load_in_diffusers(TorchControlNet, tmp_path), batch)
    assert_residuals_match(run_ours(trained_controlnet, batch), theirs, "float32 export")


def test_trained_controlnet_exports_to_diffusers_in_float16(trained_controlnet, batch, tmp_path):
    weights = save_pretrained(trained_controlnet, tmp_path, dtype="float16")
    assert weights.name == "diffusion_pytorch_model.safetensors"  # loads without variant=
    with safe_open(str(weights), framework="numpy") as f:
        assert {f.get_tensor(key).dtype for key in f.keys()} == {np.dtype(np.float16)}  # noqa: SIM118
    graphdef, params = nnx.split(trained_controlnet)
    rounded = jax.tree.map(lambda p: np.asarray(p, np.float16).astype(np.float32), params)
    rounded = nnx.merge(graphdef, rounded)
    # Both sides hold the same fp16-rounded weights (diffusers upcasts them exactly to float32) and
    # compute in float32, so the float32 tolerance holds: no looser bound is needed.
    theirs = run_theirs(load_in_diffusers(TorchControlNet, tmp_path), batch)
    assert_residuals_match(run_ours(rounded, batch), theirs, "float16 export")


SMALL_VAE = AutoencoderKLConfig(
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    block_out_channels=(8, 16),
    norm_num_groups=4,
)
KEY_CASES = {
    "sd15_unet": (UNet2DConditionModel, SD15_SMALL_UNET, TorchUNet),
    "vae": (AutoencoderKL, SMALL_VAE, TorchAutoencoderKL),
}


@pytest.mark.parametrize("case", list(KEY_CASES))
def test_exported_model_loads_in_diffusers_with_every_key_and_value(case, tmp_path):
    cls, config, torch_class = KEY_CASES[case]
    model = random_model(cls, config, seed=5)
    save_pretrained(model, tmp_path)
    theirs = load_in_diffusers(torch_class, tmp_path).state_dict()
    ours = torch_state_dict(model)
    assert sorted(theirs) == sorted(ours)
    different = [key for key, value in ours.items() if not np.array_equal(theirs[key].numpy(), value)]
    assert not different, f"values differ after the round trip: {different[:5]}"


def test_native_round_trip_is_exact(trained_controlnet, batch, tmp_path):
    save_native(trained_controlnet, tmp_path)
    restored = load_native(ControlNetModel, tmp_path)
    assert restored.config == trained_controlnet.config
    ours, back = torch_state_dict(trained_controlnet), torch_state_dict(restored)
    assert sorted(ours) == sorted(back)
    assert all(np.array_equal(ours[key], back[key]) for key in ours)
    outputs = zip(run_ours(trained_controlnet, batch), run_ours(restored, batch), strict=True)
    for i, (a, b) in enumerate(outputs):
        assert np.array_equal(a, b), f"residual {i} differs after the native round trip"


# A ControlNet small enough to run eagerly in a fresh interpreter.
TINY_CONTROLNET = ControlNetConfig(
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    block_out_channels=(8, 16),
    layers_per_block=1,
    norm_num_groups=4,
    cross_attention_dim=8,
    attention_head_dim=2,
    conditioning_embedding_out_channels=(4, 8, 8, 16),
)

LOAD_AND_RUN = """
import sys
from functools import partial
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from landmark_controlnet.diffusion.controlnet import ControlNetModel
from landmark_controlnet.diffusion.export import load_native
from landmark_controlnet.diffusion.loading import from_pretrained

@partial(jax.jit, static_argnums=0, compiler_options={compiler_options!r})
def mid_residual(graphdef, params):
    model = nnx.merge(graphdef, params)
    return model(jnp.ones((1, 8, 8, 4)), jnp.array([10]), jnp.ones((1, 4, 8)), jnp.ones((1, 64, 64, 3)))[1]

for model in (from_pretrained(ControlNetModel, sys.argv[1]), load_native(ControlNetModel, sys.argv[2])):
    graphdef, params = nnx.split(model)
    assert bool(jnp.isfinite(mid_residual(graphdef, jax.tree.map(np.asarray, params))).all())
print("offenders:", [name for name in {libraries!r} if name in sys.modules])
"""


def test_loading_and_running_never_imports_pytorch_libraries(tmp_path):
    controlnet = random_model(ControlNetModel, TINY_CONTROLNET, seed=9)
    save_pretrained(controlnet, tmp_path / "diffusers")
    save_native(controlnet, tmp_path / "native")
    script = LOAD_AND_RUN.format(libraries=PYTORCH_LIBRARIES, compiler_options=FAST_COMPILE)
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "diffusers"), str(tmp_path / "native")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "offenders: []" in done.stdout, done.stdout


def test_variant_export_and_refusals(tmp_path):
    controlnet = random_model(ControlNetModel, TINY_CONTROLNET, seed=11)
    weights = save_pretrained(controlnet, tmp_path, dtype="float16", variant="fp16")
    assert weights.name == "diffusion_pytorch_model.fp16.safetensors"
    assert json.loads((tmp_path / "config.json").read_text())["_class_name"] == "ControlNetModel"
    loaded = from_pretrained(ControlNetModel, tmp_path, variant="fp16")
    expected = {k: v.astype(np.float16).astype(np.float32) for k, v in torch_state_dict(controlnet).items()}
    assert all(np.array_equal(value, expected[key]) for key, value in torch_state_dict(loaded).items())
    with pytest.raises(ExportError, match="bfloat16"):
        save_pretrained(controlnet, tmp_path / "other", dtype="bfloat16")
    graphdef, params = nnx.split(controlnet)
    huge = nnx.merge(graphdef, jax.tree.map(lambda p: np.asarray(p) * 1e6, params))
    with pytest.raises(ExportError, match="not finite in float16"):
        save_pretrained(huge, tmp_path / "huge", dtype="float16")
    save_native(controlnet, tmp_path / "native")
    with pytest.raises(ExportError, match="holds a ControlNetModel, not a UNet2DConditionModel"):
        load_native(UNet2DConditionModel, tmp_path / "native")
