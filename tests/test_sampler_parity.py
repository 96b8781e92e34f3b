"""The JAX sampler (`ControlNetGenerator`: validation, `evaluate`, `refine-hands`) against the
released diffusers pipelines: same weights (perturbed, so that the ControlNet's zero convs count),
same initial latents, DDIM from the same scheduler config, classifier-free guidance on and control
strength 0.5. A sign-flipped guidance term, a dropped strength or zeroed size ids would change the
picture far beyond the tolerance."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from diffusion_parity import perturb
from flax import nnx

from landmark_controlnet.diffusion import ControlNetModel, from_pretrained
from landmark_controlnet.diffusion.pipeline import ControlNetGenerator, load_stable_diffusion
from landmark_controlnet.training.tiny_sd import write_tiny_sd

SIZE, STEPS, GUIDANCE, STRENGTH, SEED = 64, 4, 3.0, 0.5, 3
PROMPTS = ["a hand waving", "two hands"]


def conditioning_images(batch: int) -> np.ndarray:
    """Landmark-like drawings: coloured lines on black, one per row."""
    pictures = np.zeros((batch, SIZE, SIZE, 3), np.uint8)
    for i in range(batch):
        pictures[i, 10 + 8 * i : 14 + 8 * i, 8:56] = (255, 200 - 60 * i, 40 * i)
        pictures[i, 8:56, 30 + 6 * i : 33 + 6 * i] = (30, 255, 120)
    return pictures


def torch_controlnet(folder: Path, unet_class, out: Path):
    import diffusers

    unet = unet_class.from_pretrained(folder, subfolder="unet")
    # from_unet draws its new layers from torch's global generator: seeded, so that the ControlNet
    # does not depend on what drew from it before (test order, imports)
    torch.manual_seed(0)
    controlnet = perturb(diffusers.ControlNetModel.from_unet(unet), seed=7)
    controlnet.save_pretrained(out)
    return controlnet


def initial_latents(sd, batch: int) -> np.ndarray:
    """What ControlNetGenerator draws for `SEED`: (B, h, w, C), DDIM's init_noise_sigma being 1."""
    shape = (
        batch,
        SIZE // sd.vae.config.downscale,
        SIZE // sd.vae.config.downscale,
        sd.unet.config.out_channels,
    )
    return np.asarray(jax.random.normal(jax.random.PRNGKey(SEED), shape))


def ours(folder: Path, controlnet_folder: Path, photos=None, masks=None) -> tuple[np.ndarray, np.ndarray]:
    sd = load_stable_diffusion(folder)
    graph, params = nnx.split(from_pretrained(ControlNetModel, controlnet_folder))
    generator = ControlNetGenerator(sd, graph, STEPS, GUIDANCE)
    images = generator(
        params, PROMPTS, conditioning_images(len(PROMPTS)), SEED, STRENGTH, photos=photos, masks=masks
    )
    return images, initial_latents(sd, len(PROMPTS))


def to_torch(latents: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(latents.transpose(0, 3, 1, 2)))


def theirs(pipeline, latents: np.ndarray, **inputs) -> np.ndarray:
    from PIL import Image

    pipeline.set_progress_bar_config(disable=True)
    pipeline.to(dtype=torch.float64)  # the reference computed exactly (see assert_same_images)
    control = [Image.fromarray(c) for c in conditioning_images(len(PROMPTS))]
    with torch.no_grad():
        images = pipeline(
            PROMPTS, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
            controlnet_conditioning_scale=STRENGTH, latents=to_torch(latents).double(), output_type="np",
            height=SIZE, width=SIZE, **{"image": control, **inputs},
        ).images  # fmt: skip
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)


def assert_same_images(ours_uint8: np.ndarray, theirs_uint8: np.ndarray) -> None:
    """uint8 on both sides: at most two levels apart where rounding falls differently, ~1e-3 of the
    range on average. Guidance 3 rather than 7.5: random tiny models amplify float32 rounding over
    strongly guided steps (at 7.5, diffusers' own float32 run of the SD 2.1 model is 4 levels from
    its float64 one, and latents moved by 1e-5 move it 71), whereas a wrong term moves it everywhere."""
    difference = np.abs(ours_uint8.astype(np.int16) - theirs_uint8.astype(np.int16))
    assert difference.max() <= 2 and difference.mean() / 255 < 1e-3, (difference.max(), difference.mean())
    assert ours_uint8.std() > 5  # a picture, not a flat field that would agree trivially


def ddim(pipeline) -> None:
    import diffusers

    pipeline.scheduler = diffusers.DDIMScheduler.from_config(pipeline.scheduler.config)


@pytest.mark.parametrize("sd2", [False, True], ids=["sd15", "sd21"])
def test_text_to_image_matches_diffusers(tmp_path, sd2):
    import diffusers

    folder = write_tiny_sd(tmp_path / "sd", sd2=sd2)
    controlnet = torch_controlnet(folder, diffusers.UNet2DConditionModel, tmp_path / "controlnet")
    images, latents = ours(folder, tmp_path / "controlnet")
    pipeline = diffusers.StableDiffusionControlNetPipeline.from_pretrained(
        folder, controlnet=controlnet, safety_checker=None, requires_safety_checker=False
    )
    ddim(pipeline)
    assert_same_images(images, theirs(pipeline, latents))


def test_sdxl_matches_diffusers(tmp_path):
    """Size ids of an uncropped picture at its own size, and zeros for the empty negative prompt."""
    import diffusers

    folder = write_tiny_sd(tmp_path / "sdxl", sdxl=True)
    controlnet = torch_controlnet(folder, diffusers.UNet2DConditionModel, tmp_path / "controlnet")
    images, latents = ours(folder, tmp_path / "controlnet")
    pipeline = diffusers.StableDiffusionXLControlNetPipeline.from_pretrained(folder, controlnet=controlnet)
    ddim(pipeline)
    assert_same_images(images, theirs(pipeline, latents))


def test_inpainting_matches_diffusers(tmp_path):
    """The 9-channel UNet: mask and masked-photo latents beside the latents, repainting everything
    inside the mask (denoising strength 1)."""
    import diffusers
    from PIL import Image

    folder = write_tiny_sd(tmp_path / "inpainting", inpainting=True)
    vae = diffusers.AutoencoderKL.from_pretrained(folder, subfolder="vae")
    with torch.no_grad():  # a near-zero posterior spread: diffusers samples the masked photo's latents
        channels = vae.quant_conv.bias.shape[0] // 2
        vae.quant_conv.bias[channels:] = -40.0
    vae.save_pretrained(folder / "vae")
    # An inpainting ControlNet sees the 4 latent channels alone (the UNet gets the other 5): made from
    # the text-to-image UNet of the same shape.
    plain = write_tiny_sd(tmp_path / "plain")
    controlnet = torch_controlnet(plain, diffusers.UNet2DConditionModel, tmp_path / "controlnet")
    rng = np.random.default_rng(5)
    photos = rng.integers(0, 256, (len(PROMPTS), SIZE, SIZE, 3), dtype=np.uint8)
    masks = np.zeros((len(PROMPTS), SIZE, SIZE), np.uint8)
    masks[:, 16:48, 8:40] = 255
    images, latents = ours(folder, tmp_path / "controlnet", photos=photos, masks=masks)
    pipeline = diffusers.StableDiffusionControlNetInpaintPipeline.from_pretrained(
        folder, controlnet=controlnet, safety_checker=None, requires_safety_checker=False
    )
    ddim(pipeline)
    repainted = theirs(
        pipeline, latents, strength=1.0,
        image=[Image.fromarray(p) for p in photos], mask_image=[Image.fromarray(m) for m in masks],
        control_image=[Image.fromarray(c) for c in conditioning_images(len(PROMPTS))],
    )  # fmt: skip
    assert_same_images(images, repainted)
