"""FLUX.1 pipeline folders: the tiny folder diffusers runs, our loading, prompt encoding, packing and
ControlNet sampling against diffusers' FluxPipeline and FluxControlNetPipeline, and the Flux ControlNet
we export loading strictly in diffusers."""

from __future__ import annotations

import json

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import FluxControlNetModel as TorchFluxControlNet
from diffusers import FluxControlNetPipeline, FluxPipeline
from diffusers.pipelines.flux import pipeline_flux_controlnet
from flax import nnx

from conditioners.errors import OptionError
from landmark_controlnet.diffusion.export import save_pretrained
from landmark_controlnet.diffusion.flux_controlnet import FluxControlNetModel
from landmark_controlnet.diffusion.flux_pipeline import (
    FluxControlNetGenerator,
    encode_flux_prompt,
    flux_model_card_use,
    is_flux_folder,
    latent_image_ids,
    load_flux,
    load_t5_tokenizer,
    pack_latents,
    text_ids,
    unpack_latents,
)
from landmark_controlnet.diffusion.loading import MissingFileError, from_pretrained, is_sdxl, read_model_index
from landmark_controlnet.training.tiny_flux import LATENT_CHANNELS, TRANSFORMER, write_tiny_flux
from tests.diffusion_parity import assert_matches, nchw, nhwc, perturb
from tests.test_diffusion_flux import make_inputs, ours_controlnet, theirs_controlnet

SIZE = 64  # pixels: 8x8 latents, 4x4 packed tokens
LATENT = SIZE // 8
TEXT_LENGTH = 24  # max_sequence_length: short, for speed; diffusers allows any up to 512
PROMPTS = ["a photo of a hand", "a woman making a peace sign"]
STEPS = 2
GUIDANCE = 3.5
STRENGTH = 0.7
CONTROLNET_LAYERS = {"num_layers": 1, "num_single_layers": 1}


@pytest.fixture(scope="module")
def tiny_flux(tmp_path_factory):
    return write_tiny_flux(tmp_path_factory.mktemp("tiny_flux"))


@pytest.fixture(scope="module")
def flux(tiny_flux):
    return load_flux(tiny_flux)


@pytest.fixture(scope="module")
def torch_pipe(tiny_flux):
    return FluxPipeline.from_pretrained(tiny_flux)


@pytest.fixture(scope="module")
def torch_controlnet(torch_pipe, tmp_path_factory):
    """diffusers' ControlNet from the tiny transformer, every weight perturbed (its zero layers too),
    saved by diffusers; returns (the torch model, its folder)."""
    torch.manual_seed(3)
    model = TorchFluxControlNet.from_transformer(
        torch_pipe.transformer,
        **CONTROLNET_LAYERS,
        attention_head_dim=TRANSFORMER["attention_head_dim"],
        num_attention_heads=TRANSFORMER["num_attention_heads"],
    )
    return saved_perturbed(model, tmp_path_factory.mktemp("torch_flux_controlnet"), seed=3)


def saved_perturbed(model, folder, seed: int):
    perturb(model, seed=seed, scale=0.05).save_pretrained(folder)
    return model, folder


def fresh_torch_controlnet(folder, seed: int, guidance_embeds: bool, num_mode: int | None = None):
    """A random diffusers ControlNet shaped for the tiny transformer (a union one with `num_mode`)."""
    torch.manual_seed(seed)
    config = {**TRANSFORMER, **CONTROLNET_LAYERS, "guidance_embeds": guidance_embeds, "num_mode": num_mode}
    model = TorchFluxControlNet(**config)
    return saved_perturbed(model, folder, seed)


def conditioning_images(seed: int, batch: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, SIZE, SIZE, 3), dtype=np.uint8)


def initial_noise(seed: int, batch: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, LATENT, LATENT, LATENT_CHANNELS), np.float32)


def controlnet_pipeline(torch_pipe, controlnet) -> FluxControlNetPipeline:
    return FluxControlNetPipeline(**torch_pipe.components, controlnet=controlnet)


def run_diffusers(
    pipe,
    images: np.ndarray,
    noise: np.ndarray,
    output_type: str,
    strength: float = STRENGTH,
    control_mode=None,
):
    """diffusers' pipeline from the same initial latents (packed by diffusers) and conditioning."""
    packed = pipe._pack_latents(torch.from_numpy(nchw(noise)), len(noise), LATENT_CHANNELS, LATENT, LATENT)
    with torch.no_grad():
        return pipe(
            PROMPTS[: len(images)],
            control_image=[diffusers.utils.numpy_to_pil(image[None] / 255.0)[0] for image in images],
            height=SIZE,
            width=SIZE,
            num_inference_steps=STEPS,
            guidance_scale=GUIDANCE,
            controlnet_conditioning_scale=strength,
            control_mode=control_mode,
            max_sequence_length=TEXT_LENGTH,
            latents=packed,
            output_type=output_type,
        ).images


@pytest.fixture
def posterior_mode(monkeypatch):
    """diffusers' ControlNet pipeline samples the conditioning image's VAE posterior with its generator;
    ours takes the mode. Make diffusers take the mode too, so the two are comparable."""
    monkeypatch.setattr(
        pipeline_flux_controlnet, "retrieve_latents", lambda output, generator=None: output.latent_dist.mode()
    )


def test_diffusers_runs_the_tiny_folder(tiny_flux):
    index = read_model_index(tiny_flux)
    assert is_flux_folder(tiny_flux) and not is_sdxl(index)
    assert json.loads((tiny_flux / "scheduler" / "scheduler_config.json").read_text())["use_dynamic_shifting"]
    pipe = FluxPipeline.from_pretrained(tiny_flux)
    assert pipe.transformer.config.guidance_embeds
    with torch.no_grad():
        image = pipe("a hand", height=SIZE, width=SIZE, num_inference_steps=STEPS, output_type="np").images
    assert image.shape == (1, SIZE, SIZE, 3) and np.isfinite(image).all()


def test_a_folder_without_model_index_is_not_flux(tmp_path):
    assert not is_flux_folder(tmp_path)


def test_abstract_load_reads_the_configs_alone(tiny_flux):
    flux = load_flux(tiny_flux, abstract=True)
    for name, model in flux.frozen_models().items():
        leaves = jax.tree.leaves(nnx.state(model))
        assert leaves and all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in leaves), name
    assert flux.transformer.config.guidance_embeds and flux.vae.config.latent_channels == LATENT_CHANNELS


def test_a_missing_t5_tokenizer_is_named(tmp_path):
    (tmp_path / "tokenizer_2").mkdir()
    with pytest.raises(MissingFileError, match="tokenizer.json nor spiece.model"):
        load_t5_tokenizer(tmp_path)


def test_prompt_embeddings_equal_diffusers(flux, torch_pipe):
    ids = flux.token_ids(PROMPTS, TEXT_LENGTH)
    embeds, pooled = encode_flux_prompt(
        flux.text_encoder,
        flux.text_encoder_2,
        jnp.asarray(ids["text_encoder"]),
        jnp.asarray(ids["text_encoder_2"]),
    )
    with torch.no_grad():
        theirs, theirs_pooled, theirs_ids = torch_pipe.encode_prompt(PROMPTS, max_sequence_length=TEXT_LENGTH)
    assert_matches(embeds, theirs.numpy(), "T5 prompt embeddings")
    assert_matches(pooled, theirs_pooled.numpy(), "CLIP pooled embeddings")
    np.testing.assert_array_equal(text_ids(embeds.shape[1]), theirs_ids.numpy())


def test_pack_unpack_and_ids_equal_diffusers():
    noise = initial_noise(seed=1)
    batch, height, width, channels = noise.shape
    theirs = FluxPipeline._pack_latents(torch.from_numpy(nchw(noise)), batch, channels, height, width)
    ours = pack_latents(jnp.asarray(noise))
    np.testing.assert_array_equal(ours, theirs.numpy())
    back = FluxPipeline._unpack_latents(theirs, SIZE, SIZE, vae_scale_factor=8)
    np.testing.assert_array_equal(unpack_latents(ours, height, width), nhwc(back.numpy()))
    np.testing.assert_array_equal(unpack_latents(ours, height, width), noise)
    ids = FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2, "cpu", torch.float32)
    np.testing.assert_array_equal(latent_image_ids(height // 2, width // 2), ids.numpy())


def assert_generator_equals_diffusers(flux, torch_pipe, torch_controlnet, control_mode=None) -> None:
    """Two steps, two prompts and conditioning images, the same initial noise: the final latents agree
    to 1e-4 of their scale (float32 throughout; what differs is the order of float32 sums in each
    model call: measured 5e-7), and the decoded pictures to one level of 255."""
    model, folder = torch_controlnet
    ours = from_pretrained(FluxControlNetModel, folder)
    generator = FluxControlNetGenerator(
        flux, nnx.graphdef(ours), steps=STEPS, guidance_scale=GUIDANCE, max_sequence_length=TEXT_LENGTH
    )
    params = nnx.state(ours)
    images, noise = conditioning_images(seed=4), initial_noise(seed=5)
    pipe = controlnet_pipeline(torch_pipe, model)
    run = dict(strength=STRENGTH, control_mode=control_mode, noise=noise)

    latents = generator.latents(params, PROMPTS, images, **run)
    theirs = run_diffusers(pipe, images, noise, "latent", control_mode=control_mode)
    assert_matches(latents, theirs.numpy(), "final packed latents")

    pictures = generator(params, PROMPTS, images, **run)
    theirs = np.stack(
        [np.asarray(p) for p in run_diffusers(pipe, images, noise, "pil", control_mode=control_mode)]
    )
    assert pictures.dtype == np.uint8 and pictures.shape == theirs.shape
    assert np.abs(pictures.astype(int) - theirs.astype(int)).max() <= 1


def test_generator_equals_diffusers_controlnet_pipeline(flux, torch_pipe, torch_controlnet, posterior_mode):
    assert_generator_equals_diffusers(flux, torch_pipe, torch_controlnet)


def test_union_controlnet_equals_diffusers(flux, torch_pipe, tmp_path, posterior_mode):
    union = fresh_torch_controlnet(tmp_path, seed=13, guidance_embeds=True, num_mode=3)
    assert_generator_equals_diffusers(flux, torch_pipe, union, control_mode=2)


def test_without_guidance_embeds_equals_diffusers(tmp_path, posterior_mode):
    """A FLUX.1-schnell-shaped transformer and ControlNet: no guidance embedder, no guidance passed."""
    folder = write_tiny_flux(tmp_path / "schnell", seed=1, guidance_embeds=False)
    torch_pipe = FluxPipeline.from_pretrained(folder)
    controlnet = fresh_torch_controlnet(tmp_path / "controlnet", seed=14, guidance_embeds=False)
    assert_generator_equals_diffusers(load_flux(folder), torch_pipe, controlnet)


def test_strength_zero_leaves_the_transformer_alone(flux, torch_controlnet):
    _, folder = torch_controlnet
    ours = from_pretrained(FluxControlNetModel, folder)
    generator = FluxControlNetGenerator(
        flux, nnx.graphdef(ours), steps=STEPS, max_sequence_length=TEXT_LENGTH
    )
    params, images = nnx.state(ours), conditioning_images(seed=6, batch=1)
    steered = generator.latents(params, PROMPTS[:1], images, seed=1, strength=1.0)
    unsteered = generator.latents(params, PROMPTS[:1], images, seed=1, strength=0.0)
    assert np.abs(np.asarray(steered) - np.asarray(unsteered)).max() > 1e-3
    # At strength 0 the conditioning image no longer matters.
    other = generator.latents(params, PROMPTS[:1], conditioning_images(seed=7, batch=1), seed=1, strength=0.0)
    np.testing.assert_allclose(np.asarray(other), np.asarray(unsteered), rtol=0, atol=1e-6)


def test_generator_refuses_sizes_it_cannot_pack(flux, torch_controlnet):
    ours = from_pretrained(FluxControlNetModel, torch_controlnet[1])
    generator = FluxControlNetGenerator(flux, nnx.graphdef(ours), steps=1, max_sequence_length=TEXT_LENGTH)
    with pytest.raises(ValueError, match="multiples of 16"):
        generator(nnx.state(ours), PROMPTS[:1], np.zeros((1, 40, 64, 3), np.uint8))


def test_generator_is_called_as_the_sd_one_but_refuses_negative_prompts(flux, torch_controlnet):
    """Called as `pipeline.ControlNetGenerator` is (evaluation, validation); non-empty negatives fail."""
    ours = from_pretrained(FluxControlNetModel, torch_controlnet[1])
    generator = FluxControlNetGenerator(flux, nnx.graphdef(ours), steps=1, max_sequence_length=TEXT_LENGTH)
    with pytest.raises(OptionError, match="takes no negative prompt"):
        generator(
            nnx.state(ours), PROMPTS[:1], np.zeros((1, 32, 32, 3), np.uint8), negative_prompts=["blurry"]
        )
    with pytest.raises(ValueError, match="multiples of 16"):  # past the check: empty negatives are none
        generator(
            nnx.state(ours), PROMPTS[:1], np.zeros((1, 40, 64, 3), np.uint8), 0, 1.0, negative_prompts=[""]
        )


def perturbed_controlnet(flux, seed: int) -> FluxControlNetModel:
    """Ours from the tiny transformer, every weight moved (the zero-initialised layers too)."""
    model = FluxControlNetModel.from_transformer(flux.transformer, **CONTROLNET_LAYERS)
    params = nnx.state(model, nnx.Param)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    moved = [leaf + 0.05 * jax.random.normal(key, leaf.shape) for leaf, key in zip(leaves, keys, strict=True)]
    nnx.update(model, jax.tree.unflatten(tree, moved))
    return model


def test_exported_controlnet_loads_strictly_in_diffusers_and_runs(flux, torch_pipe, tmp_path):
    ours = perturbed_controlnet(flux, seed=8)
    save_pretrained(ours, tmp_path / "controlnet")
    theirs, info = TorchFluxControlNet.from_pretrained(tmp_path / "controlnet", output_loading_info=True)
    assert not any(info[kind] for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    config = json.loads((tmp_path / "controlnet" / "config.json").read_text())
    assert config["_class_name"] == "FluxControlNetModel"
    assert {k: theirs.config[k] for k in ("num_layers", "num_single_layers", "guidance_embeds")} == {
        "num_layers": 1,
        "num_single_layers": 1,
        "guidance_embeds": True,
    }

    inputs = make_inputs(TRANSFORMER, seed=9)
    mine = ours_controlnet(ours, inputs, guidance=True, scale=0.8)
    reference = theirs_controlnet(theirs.eval(), inputs, guidance=True, scale=0.8)
    for ours_samples, their_samples in zip(mine, reference, strict=True):
        for a, b in zip(ours_samples, their_samples, strict=True):
            assert_matches(a, b.numpy(), "exported ControlNet residuals")

    pipe = controlnet_pipeline(torch_pipe, theirs)
    noise = initial_noise(seed=10, batch=1)
    first = run_diffusers(pipe, conditioning_images(seed=11, batch=1), noise, "np")
    second = run_diffusers(pipe, conditioning_images(seed=12, batch=1), noise, "np")
    assert np.isfinite(first).all() and np.isfinite(second).all()
    assert np.abs(first - second).max() > 1e-3


def test_model_card_use_shows_the_flux_controlnet_pipeline():
    lines = "\n".join(flux_model_card_use("black-forest-labs/FLUX.1-dev"))
    assert (
        "FluxControlNetModel.from_pretrained" in lines and "FluxControlNetPipeline.from_pretrained" in lines
    )
    assert '"black-forest-labs/FLUX.1-dev"' in lines and "controlnet_conditioning_scale" in lines
