"""Our Flax FluxTransformer2DModel and FluxControlNetModel against PyTorch diffusers, on perturbed random
weights saved by diffusers itself, at the tiny widths of diffusers' own Flux tests; and the real
FLUX.1-dev config built abstractly, to count its parameters."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import FluxControlNetModel as TorchFluxControlNet
from diffusers import FluxTransformer2DModel as TorchFluxTransformer
from flax import nnx

from landmark_controlnet.diffusion.config import UnsupportedConfigError
from landmark_controlnet.diffusion.flux import FluxTransformer2DModel, FluxTransformerConfig
from landmark_controlnet.diffusion.flux_controlnet import FluxControlNetConfig, FluxControlNetModel
from landmark_controlnet.diffusion.loading import from_pretrained
from landmark_controlnet.diffusion.options import ModelOptions
from landmark_controlnet.diffusion.weights import torch_state_dict
from landmark_controlnet.training.published_configs import FLUX_DEV_TRANSFORMER_CONFIG
from tests.diffusion_parity import assert_matches, perturb

# diffusers' tests/models/transformers/test_models_transformer_flux.py sizes.
TINY = {
    "patch_size": 1,
    "in_channels": 4,
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 32,
    "pooled_projection_dim": 32,
    "axes_dims_rope": [4, 4, 8],
}
FLUX_DEV_PARAMETERS = 11.9e9
GRID, TEXT_TOKENS = (4, 6), 8


def make_inputs(config: dict, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """A packed latent grid with FLUX's ids ([0, row, col]; rows and columns far from zero, as at
    1024 px, where float32 angles matter) and zero text ids; t / 1000 as pipelines pass it."""
    rng = np.random.default_rng(seed)
    rows, cols = GRID
    img_ids = np.zeros((rows * cols, 3), np.float32)
    img_ids[:, 1] = np.repeat(np.arange(rows), cols) + 58
    img_ids[:, 2] = np.tile(np.arange(cols), rows) + 41
    return {
        "hidden_states": rng.standard_normal((batch, rows * cols, config["in_channels"]), np.float32),
        "controlnet_cond": rng.standard_normal((batch, rows * cols, config["in_channels"]), np.float32),
        "encoder_hidden_states": rng.standard_normal(
            (batch, TEXT_TOKENS, config["joint_attention_dim"]), np.float32
        ),
        "pooled_projections": rng.standard_normal((batch, config["pooled_projection_dim"]), np.float32),
        "timestep": np.array([0.25, 0.9][:batch], np.float32),
        "img_ids": img_ids,
        "txt_ids": np.zeros((TEXT_TOKENS, 3), np.float32),
        "guidance": np.array([3.5, 5.0][:batch], np.float32),
    }


TRANSFORMER_INPUTS = (
    "hidden_states",
    "encoder_hidden_states",
    "pooled_projections",
    "timestep",
    "img_ids",
    "txt_ids",
)


def transformer_args(inputs: dict, guidance: bool, as_array) -> dict:
    names = TRANSFORMER_INPUTS + (("guidance",) if guidance else ())
    return {name: as_array(inputs[name]) for name in names}


def saved_reference(cls, config: dict, folder, seed: int):
    torch.manual_seed(seed)
    model = perturb(cls(**config), seed)
    model.save_pretrained(folder)
    return model


def theirs_transformer(model, inputs: dict, guidance: bool, samples=None, repeat: bool = False) -> np.ndarray:
    double, single = samples or (None, None)
    with torch.no_grad():
        out = model(
            **transformer_args(inputs, guidance, torch.from_numpy),
            controlnet_block_samples=double,
            controlnet_single_block_samples=single,
            controlnet_blocks_repeat=repeat,
        ).sample
    return out.numpy()


def theirs_controlnet(model, inputs: dict, guidance: bool, scale: float, mode=None):
    with torch.no_grad():
        double, single = model(
            **transformer_args(inputs, guidance, torch.from_numpy),
            controlnet_cond=torch.from_numpy(inputs["controlnet_cond"]),
            controlnet_mode=None if mode is None else torch.from_numpy(mode),
            conditioning_scale=scale,
            return_dict=False,
        )
    return double, single


def ours_controlnet(model: FluxControlNetModel, inputs: dict, guidance: bool, scale: float, mode=None):
    return model(
        **transformer_args(inputs, guidance, jnp.asarray),
        controlnet_cond=jnp.asarray(inputs["controlnet_cond"]),
        controlnet_mode=None if mode is None else jnp.asarray(mode),
        conditioning_scale=scale,
    )


def assert_samples_match(ours, theirs, what: str) -> None:
    assert len(ours) == len(theirs), what
    for i, (mine, reference) in enumerate(zip(ours, theirs, strict=True)):
        assert_matches(mine, reference.numpy(), f"{what} {i}")


@pytest.mark.parametrize("guidance", [True, False], ids=["dev-guidance", "schnell"])
def test_transformer_matches_diffusers(guidance, tmp_path):
    config = {**TINY, "guidance_embeds": guidance}
    inputs = make_inputs(config)
    theirs = theirs_transformer(saved_reference(TorchFluxTransformer, config, tmp_path, 0), inputs, guidance)
    ours = from_pretrained(FluxTransformer2DModel, tmp_path)
    assert ours.config == FluxTransformerConfig.from_dict(config)
    assert_matches(ours(**transformer_args(inputs, guidance, jnp.asarray)), theirs, "Flux transformer")


@pytest.mark.parametrize("num_mode", [None, 3], ids=["plain", "union"])
def test_controlnet_matches_diffusers(num_mode, tmp_path):
    """Two blocks per stack, so that our stacks run as scans and keep every block's output."""
    config = {**TINY, "num_layers": 2, "num_single_layers": 2, "guidance_embeds": True, "num_mode": num_mode}
    inputs = make_inputs(config, seed=1)
    mode = None if num_mode is None else np.array([[0], [2]], np.int64)
    reference = saved_reference(TorchFluxControlNet, config, tmp_path, 1)
    theirs = theirs_controlnet(reference, inputs, True, 0.7, mode)
    ours = ours_controlnet(from_pretrained(FluxControlNetModel, tmp_path), inputs, True, 0.7, mode)
    assert_samples_match(ours.controlnet_block_samples, theirs[0], "ControlNet double-stream sample")
    assert_samples_match(ours.controlnet_single_block_samples, theirs[1], "ControlNet single-stream sample")


@pytest.mark.parametrize("repeat", [False, True], ids=["interval", "xlabs-repeat"])
def test_transformer_with_controlnet_residuals_matches_diffusers(repeat, tmp_path):
    """Fewer ControlNet blocks than transformer blocks: each sample serves several blocks (diffusers'
    interval rule, or cycling with `controlnet_blocks_repeat`); scanned and unrolled stacks agree."""
    transformer_config = {**TINY, "num_layers": 3, "num_single_layers": 4}
    controlnet_config = {**TINY, "num_layers": 2, "num_single_layers": 3}
    inputs = make_inputs(TINY, seed=2)
    transformer = saved_reference(TorchFluxTransformer, transformer_config, tmp_path / "transformer", 2)
    controlnet = saved_reference(TorchFluxControlNet, controlnet_config, tmp_path / "controlnet", 3)
    samples = theirs_controlnet(controlnet, inputs, False, 0.8)
    theirs = theirs_transformer(transformer, inputs, False, samples, repeat)

    ours_samples = ours_controlnet(
        from_pretrained(FluxControlNetModel, tmp_path / "controlnet"), inputs, False, 0.8
    )
    for scan in (True, False):
        ours = from_pretrained(
            FluxTransformer2DModel, tmp_path / "transformer", options=ModelOptions(scan_layers=scan)
        )
        out = ours(
            **transformer_args(inputs, False, jnp.asarray),
            controlnet_block_samples=ours_samples.controlnet_block_samples,
            controlnet_single_block_samples=ours_samples.controlnet_single_block_samples,
            controlnet_blocks_repeat=repeat,
        )
        assert_matches(out, theirs, f"transformer with ControlNet residuals (scan_layers={scan})")


def test_from_transformer_equals_diffusers(tmp_path):
    """Embedders and the leading blocks copied, the controlnet layers at zero: the same state dict."""
    config = {**TINY, "num_layers": 3, "num_single_layers": 3, "guidance_embeds": True}
    transformer = saved_reference(TorchFluxTransformer, config, tmp_path, 4)
    heads = {"attention_head_dim": 16, "num_attention_heads": 2}
    theirs = TorchFluxControlNet.from_transformer(transformer, num_layers=2, num_single_layers=1, **heads)
    ours = FluxControlNetModel.from_transformer(
        from_pretrained(FluxTransformer2DModel, tmp_path), num_layers=2, num_single_layers=1
    )
    expected = {key: value.numpy() for key, value in theirs.state_dict().items()}
    actual = torch_state_dict(ours)
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(actual[key], value, err_msg=key)
    written = ours.config.to_dict()
    for key in (*TINY, "guidance_embeds", "num_mode"):
        assert written[key] == theirs.config[key], key


def test_remat_and_scan_keep_the_forward_and_give_gradients():
    config = FluxTransformerConfig.from_dict({**TINY, "num_layers": 2, "num_single_layers": 2})
    inputs = transformer_args(make_inputs(TINY, seed=5), False, jnp.asarray)
    outputs = {}
    for remat in ("none", "blocks", "dots"):
        model = FluxTransformer2DModel(config, ModelOptions(remat=remat), rngs=nnx.Rngs(0))
        graphdef, state = nnx.split(model)

        def loss(state, graphdef=graphdef):
            return jnp.mean(nnx.merge(graphdef, state)(**inputs) ** 2)

        value, grads = jax.value_and_grad(loss)(state)
        assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads)), remat
        outputs[remat] = float(value)
    assert outputs["blocks"] == pytest.approx(outputs["none"], rel=1e-6)
    assert outputs["dots"] == pytest.approx(outputs["none"], rel=1e-6)


def test_flux_dev_builds_abstractly_at_its_size():
    """The real FLUX.1-dev transformer of the published config (`published_configs`, what --dry_run
    sizes), shapes only: nothing is allocated."""
    model = FluxTransformer2DModel.abstract(FluxTransformerConfig.from_dict(FLUX_DEV_TRANSFORMER_CONFIG))
    parameters = sum(leaf.size for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree.leaves(nnx.state(model)))
    assert parameters == pytest.approx(FLUX_DEV_PARAMETERS, rel=0.01)


def test_unsupported_flux_configs_fail_loudly():
    with pytest.raises(UnsupportedConfigError, match="conditioning_embedding_channels"):
        FluxControlNetConfig.from_dict({**TINY, "conditioning_embedding_channels": 16})
    with pytest.raises(UnsupportedConfigError, match="axes_dims_rope"):
        FluxTransformerConfig.from_dict({**TINY, "axes_dims_rope": [4, 4, 4]})
