"""An SDXL ControlNet, made from the tiny SDXL UNet as the trainer makes it and written by `save_controlnet`,
is what diffusers expects of one: its config carries the text_time add-embeds, PyTorch's ControlNetModel
loads it with every key matched, computes what ours computes with the pooled text and size ids, and
StableDiffusionXLControlNetPipeline generates with it. The model card shows the SDXL pipeline."""

from __future__ import annotations

import json
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from flax import nnx
from tiny_models import perturb

from landmark_controlnet.diffusion import TextTimeConditioning, UNet2DConditionModel, from_pretrained
from landmark_controlnet.training.export import save_controlnet, write_model_card
from landmark_controlnet.training.models import controlnet_from_unet, controlnet_options
from landmark_controlnet.training.tiny_sd import HIDDEN, HIDDEN_2, SDXL_TIME_DIM, SDXL_UNET, write_tiny_sd
from tests.diffusion_parity import RELATIVE_TOLERANCE, assert_matches, nchw, nhwc

SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0"
SD15_BASE = "stable-diffusion-v1-5/stable-diffusion-v1-5"
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    return write_tiny_sd(tmp_path_factory.mktemp("sdxl") / "tiny-sdxl", sdxl=True)


@pytest.fixture(scope="module")
def controlnet(sdxl):
    unet = from_pretrained(UNet2DConditionModel, sdxl, subfolder="unet")
    model = controlnet_from_unet(unet, 0, controlnet_options(jnp.float32))
    perturb(model, 0, scale=0.05)  # else its zero-initialised output convolutions make every residual 0
    return model


@pytest.fixture(scope="module")
def exported(controlnet, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sdxl-controlnet") / "controlnet"
    save_controlnet(controlnet, folder)
    return folder


@pytest.fixture(scope="module")
def theirs(exported):
    """diffusers' ControlNetModel from the export, after checking every key matched."""
    from diffusers import ControlNetModel as TorchControlNet

    model, info = TorchControlNet.from_pretrained(exported, output_loading_info=True)
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        assert not info[kind], f"diffusers reports {kind}: {info[kind]}"
    return model.eval()


@pytest.fixture(scope="module")
def batch() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "sample": rng.standard_normal((2, 8, 8, 4), np.float32),
        "timesteps": np.array([10, 700], np.int64),
        "context": rng.standard_normal((2, 7, HIDDEN + HIDDEN_2), np.float32),
        "image": rng.uniform(0, 1, (2, 64, 64, 3)).astype(np.float32),
        "text_embeds": rng.standard_normal((2, HIDDEN_2), np.float32),
        "time_ids": np.array([[1024, 1024, 0, 0, 1024, 1024], [768, 512, 64, 0, 1024, 1024]], np.float32),
    }


@partial(jax.jit, static_argnums=0, compiler_options=FAST_COMPILE)
def _forward(graphdef, params, batch):
    residuals = nnx.merge(graphdef, params)(
        batch["sample"],
        batch["timesteps"],
        batch["context"],
        batch["image"],
        added_conditioning=TextTimeConditioning(batch["text_embeds"], batch["time_ids"]),
    )
    return [*residuals.down_block_residuals, residuals.mid_block_residual]


def run_ours(controlnet, batch) -> list[np.ndarray]:
    graphdef, params = nnx.split(controlnet)
    return [np.asarray(r) for r in _forward(graphdef, params, batch)]


def run_theirs(model, batch) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        down, mid = model(
            torch.from_numpy(nchw(batch["sample"]).copy()),
            torch.from_numpy(batch["timesteps"]),
            encoder_hidden_states=torch.from_numpy(batch["context"]),
            controlnet_cond=torch.from_numpy(nchw(batch["image"]).copy()),
            added_cond_kwargs={
                "text_embeds": torch.from_numpy(batch["text_embeds"]),
                "time_ids": torch.from_numpy(batch["time_ids"]),
            },
            return_dict=False,
        )
    return [nhwc(r.numpy()) for r in (*down, mid)]


def test_the_export_has_sdxl_config_and_loads_in_diffusers_strictly(exported, theirs):
    config = json.loads((exported / "config.json").read_text())
    assert config["_class_name"] == "ControlNetModel"
    assert config["addition_embed_type"] == "text_time"
    assert config["addition_time_embed_dim"] == SDXL_TIME_DIM
    assert config["projection_class_embeddings_input_dim"] == HIDDEN_2 + 6 * SDXL_TIME_DIM
    assert config["transformer_layers_per_block"] == SDXL_UNET["transformer_layers_per_block"]
    assert config["cross_attention_dim"] == HIDDEN + HIDDEN_2
    # diffusers read the SDXL parts of the config (not defaults), as the loaded model shows
    assert theirs.config.addition_embed_type == "text_time"
    assert list(theirs.config.transformer_layers_per_block) == SDXL_UNET["transformer_layers_per_block"]
    assert theirs.add_embedding.linear_1.in_features == HIDDEN_2 + 6 * SDXL_TIME_DIM


def test_diffusers_computes_what_ours_computes_with_the_added_conditioning(controlnet, theirs, batch):
    ours, reference = run_ours(controlnet, batch), run_theirs(theirs, batch)
    # down: conv_in's, one per resnet (one a level, 3 levels), one per downsampler (2); then the mid's
    assert len(ours) == len(reference) == 1 + 3 + 2 + 1
    for i, (mine, their) in enumerate(zip(ours, reference, strict=True)):
        what = "mid residual" if i == len(ours) - 1 else f"down residual {i}"
        assert_matches(mine, their, what)

    # The size ids reach the residuals (through the time embedding), so ignoring them would fail above.
    resized = {**batch, "time_ids": batch["time_ids"][::-1].copy()}
    other_ours, other_reference = run_ours(controlnet, resized), run_theirs(theirs, resized)
    mid, other_mid = reference[-1], other_reference[-1]
    assert np.abs(mid - other_mid).max() > 100 * RELATIVE_TOLERANCE * np.abs(mid).max()
    assert_matches(other_ours[-1], other_mid, "mid residual with other time_ids")


def test_sdxl_controlnet_pipeline_generates_with_the_export(sdxl, theirs):
    import torch
    from diffusers import StableDiffusionXLControlNetPipeline
    from PIL import Image

    pipeline = StableDiffusionXLControlNetPipeline.from_pretrained(sdxl, controlnet=theirs)

    def generate(seed: int) -> np.ndarray:
        """64 px: 8x8 latents, which the tiny UNet's two downsamplers take to 2x2."""
        conditioning = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        return pipeline(
            "a hand making a peace sign", image=Image.fromarray(conditioning), height=64, width=64,
            num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0),
        ).images  # fmt: skip

    images = generate(seed=2)
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()
    assert not np.array_equal(images, generate(seed=3)), "the conditioning image did not reach the UNet"


def _card(folder, base_model: str, **kwargs) -> tuple[dict, str, str]:
    """(YAML header, text, the python snippet of its Use section) of a card written into `folder`."""
    folder.mkdir()
    text = write_model_card(folder, base_model, "user/hands", {}, None, None, **kwargs).read_text()
    header = yaml.safe_load(text.split("---")[1])
    snippet = text.split("## Use")[1].split("```python\n")[1].split("```")[0]
    compile(snippet, "model card", "exec")  # it is Python, its placeholders (PATH_OR_REPO, PROMPT) names
    return header, text, snippet


def test_the_sdxl_model_card_shows_the_sdxl_pipeline(tmp_path):
    header, card, snippet = _card(tmp_path / "sdxl", SDXL_BASE, sdxl=True)
    assert "stable-diffusion-xl" in header["tags"]
    assert f'StableDiffusionXLControlNetPipeline.from_pretrained(\n    "{SDXL_BASE}"' in snippet
    assert "ControlNetModel.from_pretrained(" in snippet and "torch_dtype=torch.float16" in snippet
    assert ".resize((1024, 1024))" in snippet and "height=1024, width=1024" in snippet
    assert "StableDiffusionControlNetPipeline" not in card

    header, card, snippet = _card(tmp_path / "sd", SD15_BASE)
    assert "stable-diffusion-xl" not in header["tags"]
    assert "StableDiffusionXLControlNetPipeline" not in card and "1024" not in card
    assert f'StableDiffusionControlNetPipeline.from_pretrained(\n    "{SD15_BASE}"' in snippet
