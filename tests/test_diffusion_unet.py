"""Our Flax UNet2DConditionModel and ControlNetModel against PyTorch diffusers, on perturbed random
weights saved by diffusers itself: the real SD 1.5 configs at full width once, and SD 2.1, SDXL and the
inpainting UNet with their real block structure at scaled-down widths."""

from __future__ import annotations

import gc

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import ControlNetModel as TorchControlNet
from diffusers import UNet2DConditionModel as TorchUNet
from flax import nnx

from landmark_controlnet.diffusion.controlnet import ControlNetModel
from landmark_controlnet.diffusion.loading import from_pretrained
from landmark_controlnet.diffusion.options import ModelOptions
from landmark_controlnet.diffusion.unet import TextTimeConditioning, UNet2DConditionModel, UNetConfig
from tests.diffusion_parity import assert_matches, nhwc, perturb

SD15_UNET = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
# lllyasviel/control_v11p_sd15_openpose's config.json.
SD15_CONTROLNET = {
    **{
        k: v
        for k, v in SD15_UNET.items()
        if k not in ("out_channels", "sample_size", "up_block_types", "center_input_sample")
    },
    "class_embed_type": None,
    "conditioning_embedding_out_channels": [16, 32, 96, 256],
    "controlnet_conditioning_channel_order": "rgb",
    "num_class_embeds": None,
    "only_cross_attention": False,
    "projection_class_embeddings_input_dim": None,
    "resnet_time_scale_shift": "default",
    "upcast_attention": False,
    "use_linear_projection": False,
}
# SD 2.1's structure (linear projection, per-block head counts, upcast attention); widths / 8.
SD21_UNET = {
    **SD15_UNET,
    "attention_head_dim": [5, 10, 20, 20],
    "block_out_channels": [40, 80, 160, 160],
    "cross_attention_dim": 64,
    "norm_num_groups": 8,
    "use_linear_projection": True,
    "upcast_attention": True,
}
# SDXL's structure: three blocks, text_time add-embeds, transformer depths [1, 2, 10]; widths / 8.
SDXL_UNET = {
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [40, 80, 160],
    "cross_attention_dim": 96,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "in_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 8,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 32 + 6 * 8,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True,
}
SD15_SMALL = {
    **SD15_UNET,
    "block_out_channels": [32, 64, 64, 64],
    "norm_num_groups": 8,
    "cross_attention_dim": 48,
}
INPAINT_UNET = {**SD15_SMALL, "in_channels": 9}
# Two levels, one layer each: enough to check remat and dtypes, cheap to differentiate.
TINY_UNET = {
    **SD15_UNET,
    "block_out_channels": [16, 32],
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "attention_head_dim": 2,
    "cross_attention_dim": 16,
}
UNET_ONLY = (
    "out_channels",
    "sample_size",
    "up_block_types",
    "reverse_transformer_layers_per_block",
    "center_input_sample",
)


def controlnet_config_for(unet: dict, **changes) -> dict:
    return {**{k: v for k, v in unet.items() if k not in UNET_ONLY}, "in_channels": 4, **changes}


def make_inputs(unet: dict, latent: int, batch: int = 2, tokens: int = 77, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    context_dim = unet["cross_attention_dim"]
    inputs = {
        "sample": rng.standard_normal((batch, unet["in_channels"], latent, latent), np.float32),
        "control_sample": rng.standard_normal((batch, 4, latent, latent), np.float32),
        "timesteps": np.array([10, 700][:batch], np.int64),
        "context": rng.standard_normal((batch, tokens, context_dim), np.float32),
        "image": rng.uniform(0, 1, (batch, 3, latent * 8, latent * 8)).astype(np.float32),
    }
    if unet.get("addition_embed_type") == "text_time":
        pooled = unet["projection_class_embeddings_input_dim"] - 6 * unet["addition_time_embed_dim"]
        inputs["text_embeds"] = rng.standard_normal((batch, pooled), np.float32)
        inputs["time_ids"] = np.tile(np.array([[1024, 768, 0, 16, 1024, 1024]], np.float32), (batch, 1))
    return inputs


def run_theirs(unet: TorchUNet, controlnet: TorchControlNet, inputs: dict, scale: float) -> dict:
    added = (
        {
            "text_embeds": torch.from_numpy(inputs["text_embeds"]),
            "time_ids": torch.from_numpy(inputs["time_ids"]),
        }
        if "text_embeds" in inputs
        else None
    )
    t, context = torch.from_numpy(inputs["timesteps"]), torch.from_numpy(inputs["context"])
    with torch.no_grad():
        down, mid = controlnet(
            torch.from_numpy(inputs["control_sample"]),
            t,
            context,
            torch.from_numpy(inputs["image"]),
            conditioning_scale=scale,
            added_cond_kwargs=added,
            return_dict=False,
        )
        noise = unet(
            torch.from_numpy(inputs["sample"]),
            t,
            context,
            added_cond_kwargs=added,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        ).sample
    return {"down": [nhwc(d.numpy()) for d in down], "mid": nhwc(mid.numpy()), "noise": nhwc(noise.numpy())}


def run_ours(unet: UNet2DConditionModel, controlnet: ControlNetModel, inputs: dict, scale: float) -> dict:
    added = (
        TextTimeConditioning(jnp.asarray(inputs["text_embeds"]), jnp.asarray(inputs["time_ids"]))
        if "text_embeds" in inputs
        else None
    )
    t, context = jnp.asarray(inputs["timesteps"]), jnp.asarray(inputs["context"])
    residuals = controlnet(
        jnp.asarray(nhwc(inputs["control_sample"])),
        t,
        context,
        jnp.asarray(nhwc(inputs["image"])),
        conditioning_scale=scale,
        added_conditioning=added,
    )
    noise = unet(
        jnp.asarray(nhwc(inputs["sample"])),
        t,
        context,
        added_conditioning=added,
        down_block_additional_residuals=residuals.down_block_residuals,
        mid_block_additional_residual=residuals.mid_block_residual,
    )
    return {"down": list(residuals.down_block_residuals), "mid": residuals.mid_block_residual, "noise": noise}


def reference_pair(unet_config: dict, controlnet_config: dict, folder, seed: int):
    torch.manual_seed(seed)
    unet = perturb(TorchUNet(**unet_config), seed)
    controlnet = perturb(TorchControlNet(**controlnet_config), seed + 1)
    unet.save_pretrained(folder / "unet")
    controlnet.save_pretrained(folder / "controlnet")
    return unet, controlnet


def our_pair(folder, options: ModelOptions | None = None):
    """Loaded as a user loads an existing PyTorch UNet and ControlNet (e.g. control_v11p) to fine-tune."""
    options = options or ModelOptions()
    return (
        from_pretrained(UNet2DConditionModel, folder, subfolder="unet", options=options),
        from_pretrained(ControlNetModel, folder / "controlnet", options=options),
    )


def assert_pair_matches(ours: dict, theirs: dict, case: str) -> None:
    assert len(ours["down"]) == len(theirs["down"]), case
    for i, (mine, reference) in enumerate(zip(ours["down"], theirs["down"], strict=True)):
        assert_matches(mine, reference, f"{case}: ControlNet down residual {i}")
    assert_matches(ours["mid"], theirs["mid"], f"{case}: ControlNet mid residual")
    assert_matches(ours["noise"], theirs["noise"], f"{case}: UNet output with the ControlNet residuals")


def test_sd15_unet_and_controlnet_at_full_width_match_diffusers(tmp_path):
    """The real SD 1.5 UNet and control_v11p ControlNet configs, at 64 px (8x8 latents)."""
    inputs = make_inputs(SD15_UNET, latent=8)
    unet, controlnet = reference_pair(SD15_UNET, SD15_CONTROLNET, tmp_path, seed=0)
    theirs = run_theirs(unet, controlnet, inputs, scale=0.8)
    del unet, controlnet
    gc.collect()
    ours = run_ours(*our_pair(tmp_path), inputs, scale=0.8)
    assert_pair_matches(ours, theirs, "SD 1.5")


SCALED_CASES = {
    "sd21": (SD21_UNET, controlnet_config_for(SD21_UNET)),
    "sdxl": (SDXL_UNET, controlnet_config_for(SDXL_UNET, transformer_layers_per_block=[1, 2, 3])),
    "inpainting": (
        INPAINT_UNET,
        controlnet_config_for(INPAINT_UNET, controlnet_conditioning_channel_order="bgr"),
    ),
}


@pytest.mark.parametrize("case", list(SCALED_CASES))
def test_scaled_unets_and_controlnets_match_diffusers(case, tmp_path):
    unet_config, controlnet_config = SCALED_CASES[case]
    inputs = make_inputs(unet_config, latent=16, seed=3)
    unet, controlnet = reference_pair(unet_config, controlnet_config, tmp_path, seed=7)
    theirs = run_theirs(unet, controlnet, inputs, scale=0.6)
    ours = run_ours(*our_pair(tmp_path), inputs, scale=0.6)
    assert_pair_matches(ours, theirs, case)


def _tiny_unet(options: ModelOptions) -> UNet2DConditionModel:
    return UNet2DConditionModel(UNetConfig.from_dict(TINY_UNET), options, rngs=nnx.Rngs(0))


def _loss(model: UNet2DConditionModel, inputs: dict) -> jax.Array:
    noise = model(
        jnp.asarray(nhwc(inputs["sample"])), jnp.asarray(inputs["timesteps"]), jnp.asarray(inputs["context"])
    )
    return jnp.mean(noise.astype(jnp.float32) ** 2)


def _gradient_jaxpr(model: UNet2DConditionModel, inputs: dict) -> str:
    graphdef, state = nnx.split(model)
    return str(jax.make_jaxpr(jax.grad(lambda s: _loss(nnx.merge(graphdef, s), inputs)))(state))


def test_bf16_compute_keeps_fp32_master_weights():
    inputs = make_inputs(TINY_UNET, latent=8, tokens=8)
    full = _tiny_unet(ModelOptions())
    half = _tiny_unet(ModelOptions(dtype=jnp.bfloat16))
    assert {leaf.dtype for leaf in jax.tree.leaves(nnx.state(half, nnx.Param))} == {jnp.dtype(jnp.float32)}
    args = (
        jnp.asarray(nhwc(inputs["sample"])),
        jnp.asarray(inputs["timesteps"]),
        jnp.asarray(inputs["context"]),
    )
    out_full, out_half = full(*args), half(*args)
    assert out_half.dtype == jnp.bfloat16
    assert_matches(out_half, out_full, "bf16 against fp32", tolerance=5e-2)
