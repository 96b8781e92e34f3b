"""The published config.json values of stable-diffusion-v1-5 and stable-diffusion-xl-base-1.0, for
sizing them without downloading them: `write_config_folder(folder, "sdxl")` writes a pipeline folder
of configs alone, which `--dry_run` reads (it never reads a weight), and the benchmarks build these
models at full size with random weights."""

from __future__ import annotations

import json
from pathlib import Path

# stable-diffusion-v1-5/stable-diffusion-v1-5, unet/config.json.
SD15_UNET_CONFIG = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.6.0",
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

# stable-diffusion-xl-base-1.0, unet/config.json (the keys that differ from diffusers' defaults).
SDXL_UNET_CONFIG = {
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "projection_class_embeddings_input_dim": 2816,  # 1280 pooled + 6 ids x 256
    "sample_size": 128,
    "transformer_layers_per_block": [1, 2, 10],
    "use_linear_projection": True,
}
SDXL_POOLED = 1280  # text_encoder_2's projection_dim

# vae/config.json (the same structure in both; SDXL's scaling factor differs, which costs nothing).
VAE_CONFIG = {
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 512,
}

# text_encoder/config.json: CLIP ViT-L/14's text tower (SD 1.5's and SDXL's first encoder).
SD15_TEXT_CONFIG = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "projection_dim": 768,
}
# stable-diffusion-xl-base-1.0, text_encoder_2/config.json: OpenCLIP ViT-bigG/14's text tower.
SDXL_TEXT_2_CONFIG = {
    "hidden_act": "gelu",
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "projection_dim": SDXL_POOLED,
}
PUBLISHED = {
    "sd15": {"unet": SD15_UNET_CONFIG, "vae": VAE_CONFIG, "text_encoder": SD15_TEXT_CONFIG},
    "sdxl": {
        "unet": SDXL_UNET_CONFIG,
        "vae": VAE_CONFIG,
        "text_encoder": SD15_TEXT_CONFIG,
        "text_encoder_2": SDXL_TEXT_2_CONFIG,
    },
}


def write_config_folder(folder: Path, model: str) -> Path:
    """A pipeline folder of `model` (`sd15` or `sdxl`) with config.json files and no weights; its
    tokenizers are the tiny test tokenizer with CLIP's 77 tokens, which is all sizing needs."""
    from .tiny_sd import MODEL_INDEX, SCHEDULER, SDXL_MODEL_INDEX, write_tokenizer

    folder = Path(folder)
    index = SDXL_MODEL_INDEX if model == "sdxl" else MODEL_INDEX
    _write_json(folder / "model_index.json", index)
    _write_json(folder / "scheduler" / "scheduler_config.json", SCHEDULER)
    for name, config in PUBLISHED[model].items():
        _write_json(folder / name / "config.json", config)
    for name in ("tokenizer", "tokenizer_2") if model == "sdxl" else ("tokenizer",):
        write_tokenizer(folder / name)
    return folder


def _write_json(path: Path, values: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(values, indent=2) + "\n")
