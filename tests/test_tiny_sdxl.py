"""The tiny SDXL pipeline folder (`write_tiny_sd(sdxl=True)`) that the SDXL training tests stand on.

It must be what a real SDXL repo is to both sides: PyTorch diffusers runs it as a
StableDiffusionXLPipeline, and our models load every part of it and compute what diffusers does.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from tiny_models import perturb

from landmark_controlnet.diffusion import (
    CLIPTextModel,
    CLIPTextModelWithProjection,
    TextTimeConditioning,
    UNet2DConditionModel,
    encode_sdxl_prompt,
    from_pretrained,
    is_sdxl,
    read_model_index,
)
from landmark_controlnet.diffusion.pipeline import load_tokenizer, tokenize
from landmark_controlnet.training.tiny_sd import write_tiny_sd

PROMPTS = ["a hand making a peace sign", "a close portrait"]


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    return write_tiny_sd(tmp_path_factory.mktemp("sdxl") / "tiny-sdxl", sdxl=True)


def test_diffusers_runs_it_as_an_sdxl_pipeline(sdxl):
    import torch
    from diffusers import StableDiffusionXLPipeline

    pipeline = StableDiffusionXLPipeline.from_pretrained(sdxl)
    images = pipeline(
        PROMPTS[0], height=64, width=64, num_inference_steps=2, output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images  # fmt: skip
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()


def test_our_models_load_it_and_match_diffusers_unet(sdxl):
    import torch
    from diffusers import UNet2DConditionModel as TorchUNet

    assert is_sdxl(read_model_index(sdxl))
    ids = [
        jnp.asarray(tokenize(load_tokenizer(sdxl, subfolder=sub), PROMPTS))
        for sub in ("tokenizer", "tokenizer_2")
    ]
    first = from_pretrained(CLIPTextModel, sdxl, subfolder="text_encoder")
    second = from_pretrained(CLIPTextModelWithProjection, sdxl, subfolder="text_encoder_2")
    context, pooled = encode_sdxl_prompt(first, second, *ids)
    assert context.shape == (2, 77, 32 + 48) and pooled.shape == (2, 48)

    unet = from_pretrained(UNet2DConditionModel, sdxl, subfolder="unet")
    rng = np.random.default_rng(0)
    latents = rng.standard_normal((2, 8, 8, 4)).astype(np.float32)
    time_ids = np.array([[512, 384, 0, 16, 64, 64], [64, 64, 0, 0, 64, 64]], np.float32)
    timesteps = np.array([10, 700])
    ours = np.asarray(
        unet(
            jnp.asarray(latents),
            jnp.asarray(timesteps),
            context,
            TextTimeConditioning(pooled, jnp.asarray(time_ids)),
        )
    )
    reference = TorchUNet.from_pretrained(sdxl, subfolder="unet").eval()
    with torch.no_grad():
        theirs = (
            reference(
                torch.from_numpy(latents.transpose(0, 3, 1, 2).copy()),
                torch.from_numpy(timesteps),
                encoder_hidden_states=torch.from_numpy(np.asarray(context)),
                added_cond_kwargs={
                    "text_embeds": torch.from_numpy(np.asarray(pooled)),
                    "time_ids": torch.from_numpy(time_ids),
                },
            )
            .sample.numpy()
            .transpose(0, 2, 3, 1)
        )
    assert np.abs(ours - theirs).max() <= 1e-4 * np.abs(theirs).max()


def test_the_controlnet_sampler_generates_with_an_sdxl_base(sdxl):
    """Both encoders, the pooled text and the size ids reach the sampler's UNet and ControlNet."""
    from flax import nnx

    from landmark_controlnet.diffusion.pipeline import ControlNetGenerator, load_stable_diffusion
    from landmark_controlnet.training.models import controlnet_from_unet, controlnet_options

    sd = load_stable_diffusion(sdxl)
    assert sd.is_sdxl and sd.tokenizer_2 is not None
    controlnet = controlnet_from_unet(sd.unet, 0, controlnet_options(jnp.float32))
    perturb(controlnet, 0, scale=0.05)  # else a no-op: its output convolutions start at zero
    graph, state = nnx.split(controlnet)
    params = nnx.to_pure_dict(state)
    generator = ControlNetGenerator(sd, graph, steps=2)
    conditioning = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    images = generator(params, PROMPTS, conditioning, seed=0)
    assert images.shape == (2, 64, 64, 3) and images.dtype == np.uint8
    other_prompts = generator(params, PROMPTS[::-1], conditioning, seed=0)
    assert not np.array_equal(images, other_prompts)
    weaker = generator(params, PROMPTS, conditioning, seed=0, strength=0.2)
    assert not np.array_equal(images, weaker)
