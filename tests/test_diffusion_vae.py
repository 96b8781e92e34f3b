"""Our NNX AutoencoderKL against diffusers' PyTorch AutoencoderKL, loaded from what diffusers saves."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from diffusion_parity import SafetensorsFiles, assert_matches, load_ours, nchw, nhwc, perturb
from flax import nnx
from safetensors.numpy import save_file

from landmark_controlnet.diffusion.config import UnsupportedConfigError
from landmark_controlnet.diffusion.loading import SafetensorsSource, from_pretrained
from landmark_controlnet.diffusion.vae import AutoencoderKL, AutoencoderKLConfig, DiagonalGaussian
from landmark_controlnet.diffusion.weights import WeightsError, load_module, parameter_paths, torch_key

WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"

# Stable Diffusion's VAE structure (4 blocks, 2 resnets each, 4 latent channels) at small widths.
SD_STRUCTURE = {
    "block_out_channels": [32, 64, 64, 64],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 2,
    "latent_channels": 4,
    # 8 groups: XLA's CPU compiler takes 10+ s over some GroupNorm reductions (32 channels in 16 groups).
    "norm_num_groups": 8,
    "sample_size": 64,
}
# The variant without mid-block attention and without the 1x1 quant convs (same shapes: no new compiles).
BARE_VARIANT = {
    **SD_STRUCTURE,
    "mid_block_add_attention": False,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}
# FLUX.1's VAE: the same blocks with 16 latent channels, no 1x1 quant convs, and a shift before scaling.
FLUX_SHIFT, FLUX_SCALE = 0.1159, 0.3611
FLUX_STRUCTURE = {
    **SD_STRUCTURE,
    "latent_channels": 16,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "shift_factor": FLUX_SHIFT,
    "scaling_factor": FLUX_SCALE,
}
# black-forest-labs/FLUX.1-dev's vae/config.json.
FLUX_VAE_CONFIG = {
    "_class_name": "AutoencoderKL",
    "_diffusers_version": "0.30.0.dev0",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True,
    "in_channels": 3,
    "latent_channels": 16,
    "latents_mean": None,
    "latents_std": None,
    "layers_per_block": 2,
    "mid_block_add_attention": True,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 1024,
    "scaling_factor": FLUX_SCALE,
    "shift_factor": FLUX_SHIFT,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "use_post_quant_conv": False,
    "use_quant_conv": False,
}
CURRENT_TO_LEGACY = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


@dataclass
class Reference:
    folder: Path
    images: np.ndarray  # NHWC
    latents: np.ndarray  # NHWC
    mean: np.ndarray  # NHWC, diffusers' outputs from here on
    logvar: np.ndarray
    decoded: np.ndarray


def build_reference(folder: Path, structure: dict, seed: int) -> Reference:
    """Save a perturbed diffusers AutoencoderKL to `folder` and record its outputs on random inputs."""
    import torch
    from diffusers import AutoencoderKL as TorchAutoencoderKL

    torch.manual_seed(seed)
    model = perturb(TorchAutoencoderKL(**structure), seed)
    model.save_pretrained(folder, safe_serialization=True)

    rng = np.random.default_rng(seed)
    side = structure["sample_size"]
    latent_side = side // 2 ** (len(structure["block_out_channels"]) - 1)
    images = rng.uniform(-1, 1, (2, side, side, 3)).astype(np.float32)
    channels = structure.get("latent_channels", 4)
    latents = rng.standard_normal((2, latent_side, latent_side, channels)).astype(np.float32)
    with torch.no_grad():
        posterior = model.encode(torch.from_numpy(nchw(images))).latent_dist
        decoded = model.decode(torch.from_numpy(nchw(latents))).sample
    return Reference(folder, images, latents, nhwc(posterior.mean), nhwc(posterior.logvar), nhwc(decoded))


def load_vae(folder: Path) -> AutoencoderKL:
    return load_ours(AutoencoderKL, AutoencoderKLConfig.from_json_file(folder / "config.json"), folder)


@pytest.fixture(scope="module")
def sd_reference(tmp_path_factory) -> Reference:
    return build_reference(tmp_path_factory.mktemp("sd_vae"), SD_STRUCTURE, seed=0)


@pytest.fixture(scope="module")
def sd_outputs(sd_reference):
    """Our encode/decode on the reference inputs, computed once for the parity and legacy tests."""
    return run_ours(load_vae(sd_reference.folder), sd_reference)


def run_ours(vae: AutoencoderKL, reference: Reference) -> dict[str, np.ndarray]:
    posterior = vae.encode(jnp.asarray(reference.images))
    return {
        "mean": np.asarray(posterior.mean),
        "logvar": np.asarray(posterior.logvar),
        "decoded": np.asarray(vae.decode(jnp.asarray(reference.latents))),
    }


@pytest.mark.parametrize("output", ["mean", "logvar", "decoded"])
def test_sd_structure_matches_diffusers(sd_reference, sd_outputs, output):
    assert_matches(sd_outputs[output], getattr(sd_reference, output), output)


def test_variant_without_attention_or_quant_convs_matches_diffusers(tmp_path):
    reference = build_reference(tmp_path, BARE_VARIANT, seed=1)
    vae = load_vae(tmp_path)
    assert vae.quant_conv is None and vae.post_quant_conv is None
    assert vae.encoder.mid_block.attentions[0] is None
    for name, value in run_ours(vae, reference).items():
        assert_matches(value, getattr(reference, name), name)


def test_flux_structure_matches_diffusers(tmp_path):
    reference = build_reference(tmp_path, FLUX_STRUCTURE, seed=2)
    vae = from_pretrained(AutoencoderKL, tmp_path)
    assert vae.quant_conv is None and vae.post_quant_conv is None
    assert (vae.config.shift_factor, vae.config.scaling_factor) == (FLUX_SHIFT, FLUX_SCALE)
    outputs = run_ours(vae, reference)
    for name, value in outputs.items():
        assert_matches(value, getattr(reference, name), name)
    # FLUX's training script and pipeline: (z - shift) * scale into the transformer, z / scale + shift out.
    latents = vae.to_latents(vae.encode(jnp.asarray(reference.images)))
    assert latents.shape[-1] == 16
    assert_matches(latents, (reference.mean - FLUX_SHIFT) * FLUX_SCALE, "to_latents")
    diffusion_latents = (reference.latents - FLUX_SHIFT) * FLUX_SCALE
    decoded = vae.decode(vae.from_latents(jnp.asarray(diffusion_latents)))
    assert_matches(decoded, reference.decoded, "decode(from_latents)")


def test_flux_config_builds_without_quant_convs():
    config = AutoencoderKLConfig.from_dict(FLUX_VAE_CONFIG)
    assert config.downscale == 8 and config.latent_channels == 16
    vae = AutoencoderKL.abstract(config)
    keys = {torch_key(path): variable.get_raw_value().shape for path, variable in parameter_paths(vae)}
    assert not any(key.startswith(("quant_conv.", "post_quant_conv.")) for key in keys)
    assert keys["encoder.conv_out.weight"] == (3, 3, 512, 32)  # NNX layout; mean and logvar
    assert keys["decoder.conv_in.weight"] == (3, 3, 16, 512)
    assert config.to_dict()["shift_factor"] == FLUX_SHIFT


def test_parameter_keys_are_diffusers_state_dict_keys(sd_reference):
    saved = set(SafetensorsFiles(sd_reference.folder / WEIGHTS_FILE).keys())
    config = AutoencoderKLConfig.from_json_file(sd_reference.folder / "config.json")
    ours = {
        torch_key(path)
        for path, _ in parameter_paths(nnx.eval_shape(lambda: AutoencoderKL(config, rngs=nnx.Rngs(0))))
    }
    assert ours == saved
    assert "encoder.down_blocks.0.downsamplers.0.conv.weight" in ours
    assert "encoder.down_blocks.3.downsamplers.0.conv.weight" not in ours  # the last block keeps its size
    assert "decoder.up_blocks.0.resnets.2.conv1.weight" in ours  # layers_per_block + 1 resnets


def write_legacy_checkpoint(reference: Reference, folder: Path, conv_shaped: bool) -> Path:
    """The reference weights under pre-0.14 diffusers attention names, optionally as 1x1 convs."""
    folder.mkdir()
    shutil.copy(reference.folder / "config.json", folder / "config.json")
    source = SafetensorsFiles(reference.folder / WEIGHTS_FILE)
    pattern = re.compile(
        r"^((?:en|de)coder\.mid_block\.attentions\.0\.)(to_q|to_k|to_v|to_out\.0)\.(weight|bias)$"
    )
    tensors = {}
    for key in source.keys():  # noqa: SIM118 (not a dict)
        tensor = source.get(key)
        match = pattern.match(key)
        if match:
            prefix, name, leaf = match.groups()
            key = f"{prefix}{CURRENT_TO_LEGACY[name]}.{leaf}"
            if conv_shaped and leaf == "weight":
                tensor = tensor[:, :, None, None]
        tensors[key] = np.ascontiguousarray(tensor)
    save_file(tensors, str(folder / WEIGHTS_FILE))
    return folder


def test_legacy_attention_names_load_through_from_pretrained(sd_reference, sd_outputs, tmp_path):
    folder = write_legacy_checkpoint(sd_reference, tmp_path / "legacy", conv_shaped=False)
    legacy_keys = set(SafetensorsFiles(folder / WEIGHTS_FILE).keys())
    assert "encoder.mid_block.attentions.0.query.weight" in legacy_keys
    assert not any(".to_q." in key for key in legacy_keys)
    with pytest.raises(WeightsError, match="missing weight"):
        load_vae(folder)  # without legacy_key the checkpoint does not fit

    outputs = run_ours(from_pretrained(AutoencoderKL, folder), sd_reference)
    for name, value in outputs.items():
        np.testing.assert_array_equal(value, sd_outputs[name], err_msg=name)


def test_legacy_conv_shaped_attention_loads_with_legacy_tensor(sd_reference, sd_outputs, tmp_path):
    folder = write_legacy_checkpoint(sd_reference, tmp_path / "legacy", conv_shaped=True)
    config = AutoencoderKLConfig.from_json_file(folder / "config.json")

    with SafetensorsSource([folder / WEIGHTS_FILE], AutoencoderKL.legacy_key) as renamed:
        assert renamed.get("decoder.mid_block.attentions.0.to_q.weight").ndim == 4
        renamed_but_conv_shaped = r"attentions\.0\.to_[qkv]\.weight' has shape \(64, 64, 1, 1\)"
        with pytest.raises(WeightsError, match=renamed_but_conv_shaped):
            load_module(AutoencoderKL.abstract(config), renamed)
    outputs = run_ours(from_pretrained(AutoencoderKL, folder), sd_reference)
    for name, value in outputs.items():
        np.testing.assert_array_equal(value, sd_outputs[name], err_msg=name)


def test_diffusers_reads_the_same_legacy_names(sd_reference, tmp_path):
    """The legacy layout written above is the one diffusers itself still converts on load."""
    import torch
    from diffusers import AutoencoderKL as TorchAutoencoderKL

    folder = write_legacy_checkpoint(sd_reference, tmp_path / "legacy", conv_shaped=False)
    model = TorchAutoencoderKL.from_pretrained(folder).eval()
    with torch.no_grad():
        decoded = model.decode(torch.from_numpy(nchw(sd_reference.latents))).sample
    np.testing.assert_array_equal(nhwc(decoded), sd_reference.decoded)


@pytest.mark.parametrize(
    ("legacy", "current"),
    [
        ("encoder.mid_block.attentions.0.query.weight", "encoder.mid_block.attentions.0.to_q.weight"),
        ("encoder.mid_block.attentions.0.key.bias", "encoder.mid_block.attentions.0.to_k.bias"),
        ("decoder.mid_block.attentions.0.value.weight", "decoder.mid_block.attentions.0.to_v.weight"),
        ("decoder.mid_block.attentions.0.proj_attn.bias", "decoder.mid_block.attentions.0.to_out.0.bias"),
        (
            "decoder.mid_block.attentions.0.group_norm.weight",
            "decoder.mid_block.attentions.0.group_norm.weight",
        ),
        ("decoder.mid_block.attentions.0.to_q.weight", "decoder.mid_block.attentions.0.to_q.weight"),
        ("encoder.down_blocks.0.resnets.0.conv1.weight", "encoder.down_blocks.0.resnets.0.conv1.weight"),
    ],
)
def test_legacy_key(legacy, current):
    assert AutoencoderKL.legacy_key(legacy) == current


def test_legacy_tensor_squeezes_only_conv_shaped_attention_projections():
    conv = np.arange(12, dtype=np.float32).reshape(3, 4, 1, 1)
    assert AutoencoderKL.legacy_tensor("encoder.mid_block.attentions.0.to_q.weight", conv).shape == (3, 4)
    conv1d = conv[:, :, :, 0]
    squeezed = AutoencoderKL.legacy_tensor("decoder.mid_block.attentions.0.to_out.0.weight", conv1d)
    np.testing.assert_array_equal(squeezed, conv[:, :, 0, 0])
    for key in ("encoder.conv_out.weight", "quant_conv.weight", "decoder.mid_block.attentions.0.to_q.bias"):
        assert AutoencoderKL.legacy_tensor(key, conv) is conv


def abstract_vae(**config) -> AutoencoderKL:
    """A VAE without weights (nnx.eval_shape): the latents helpers read only its config."""
    config = AutoencoderKLConfig.from_dict({"block_out_channels": (8,), "norm_num_groups": 4, **config})
    return nnx.eval_shape(lambda: AutoencoderKL(config, rngs=nnx.Rngs(0)))


def test_scaling_and_shift_round_trip():
    vae = abstract_vae(scaling_factor=1.5305, shift_factor=0.0609)  # SD3's values
    z = jax.random.normal(jax.random.key(0), (2, 4, 4, 4))
    latents = vae.to_latents(z)
    np.testing.assert_allclose(latents, (np.asarray(z) - 0.0609) * 1.5305, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(vae.from_latents(latents), z, rtol=1e-6, atol=1e-6)


def test_without_shift_factor_latents_are_only_scaled():
    vae = abstract_vae()
    assert vae.config.shift_factor is None and vae.config.scaling_factor == 0.18215
    z = jax.random.normal(jax.random.key(1), (1, 2, 2, 4))
    np.testing.assert_allclose(vae.to_latents(z), np.asarray(z) * 0.18215, rtol=1e-6)
    np.testing.assert_allclose(vae.from_latents(vae.to_latents(z)), z, rtol=1e-6, atol=1e-7)


def test_to_latents_of_a_posterior_takes_its_mode_or_a_sample():
    vae = abstract_vae(scaling_factor=2.0, shift_factor=0.5)
    posterior = DiagonalGaussian.from_moments(jax.random.normal(jax.random.key(2), (1, 4, 4, 8)))
    np.testing.assert_allclose(vae.to_latents(posterior), (posterior.mean - 0.5) * 2.0, rtol=1e-6)
    key = jax.random.key(3)
    sampled = vae.to_latents(posterior, key)
    np.testing.assert_allclose(sampled, (posterior.sample(key) - 0.5) * 2.0, rtol=1e-6)
    assert not np.allclose(sampled, vae.to_latents(posterior))


def test_posterior_clips_logvar_and_samples_with_its_moments():
    mean, logvar = jnp.full((1, 64, 64, 4), 2.0), jnp.full((1, 64, 64, 4), np.log(9.0))
    posterior = DiagonalGaussian.from_moments(jnp.concatenate([mean, logvar], axis=-1))
    np.testing.assert_allclose(posterior.std, 3.0, rtol=1e-6)
    assert posterior.mode() is posterior.mean
    draws = np.asarray(posterior.sample(jax.random.key(4)))
    assert abs(draws.mean() - 2.0) < 0.1 and abs(draws.std() - 3.0) < 0.1

    extreme = DiagonalGaussian.from_moments(jnp.array([[[[0.0, 0.0, -100.0, 100.0]]]]))
    np.testing.assert_array_equal(extreme.logvar, [[[[-30.0, 20.0]]]])


def test_posterior_is_a_pytree():
    posterior = DiagonalGaussian.from_moments(jnp.ones((1, 2, 2, 8)))
    doubled = jax.jit(lambda p: jax.tree.map(lambda x: 2 * x, p))(posterior)
    assert isinstance(doubled, DiagonalGaussian)
    np.testing.assert_array_equal(doubled.mean, 2 * posterior.mean)


@pytest.mark.parametrize(
    "change",
    [
        {"down_block_types": ["DownEncoderBlock2D", "AttnDownEncoderBlock2D"]},
        {"up_block_types": ["UpDecoderBlock2D", "AttnUpDecoderBlock2D"]},
        {"act_fn": "gelu"},
        {"latents_mean": [0.0] * 4, "latents_std": [1.0] * 4},
        {"block_out_channels": [32, 64, 64]},
    ],
)
def test_unsupported_configs_raise(change):
    values = {
        "block_out_channels": [32, 64],
        "down_block_types": ["DownEncoderBlock2D"] * 2,
        "up_block_types": ["UpDecoderBlock2D"] * 2,
        **change,
    }
    with pytest.raises(UnsupportedConfigError):
        AutoencoderKLConfig.from_dict(values)


def test_config_round_trips_through_diffusers_json(sd_reference):
    saved = json.loads((sd_reference.folder / "config.json").read_text())
    config = AutoencoderKLConfig.from_dict(saved)
    assert config.block_out_channels == (32, 64, 64, 64) and config.downscale == 8
    written = config.to_dict()
    assert written["_class_name"] == "AutoencoderKL"
    assert {k: v for k, v in written.items() if not k.startswith("_")} == {
        k: v for k, v in saved.items() if not k.startswith("_")
    }
    assert AutoencoderKLConfig.from_dict(written) == config
