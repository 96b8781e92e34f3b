"""The published config.json values of stable-diffusion-v1-5, stable-diffusion-xl-base-1.0 and FLUX.1-dev,
for sizing them without downloading them: `write_config_folder(folder, "sdxl")` writes a pipeline folder
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
# black-forest-labs/FLUX.1-dev: transformer/, vae/ and text_encoder_2/ config.json (its text_encoder/ is
# CLIP ViT-L/14's text tower, SD 1.5's); its scheduler is tiny_flux.SCHEDULER.
FLUX_DEV_TRANSFORMER_CONFIG = {
    "_class_name": "FluxTransformer2DModel",
    "attention_head_dim": 128,
    "axes_dims_rope": [16, 56, 56],
    "guidance_embeds": True,
    "in_channels": 64,
    "joint_attention_dim": 4096,
    "num_attention_heads": 24,
    "num_layers": 19,
    "num_single_layers": 38,
    "patch_size": 1,
    "pooled_projection_dim": 768,
}
FLUX_VAE_CONFIG = {
    **VAE_CONFIG,
    "latent_channels": 16,
    "sample_size": 1024,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}
FLUX_CLIP_CONFIG = {**SD15_TEXT_CONFIG, "hidden_act": "quick_gelu"}
T5_XXL_CONFIG = {  # google/t5-v1_1-xxl's encoder
    "architectures": ["T5EncoderModel"],
    "d_ff": 10240,
    "d_kv": 64,
    "d_model": 4096,
    "dense_act_fn": "gelu_new",
    "feed_forward_proj": "gated-gelu",
    "is_gated_act": True,
    "layer_norm_epsilon": 1e-06,
    "model_type": "t5",
    "num_heads": 64,
    "num_layers": 24,
    "relative_attention_max_distance": 128,
    "relative_attention_num_buckets": 32,
    "tie_word_embeddings": False,
    "vocab_size": 32128,
}
FLUX_MODEL_INDEX = {
    "_class_name": "FluxPipeline",
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "T5EncoderModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "T5TokenizerFast"],
    "transformer": ["diffusers", "FluxTransformer2DModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
PUBLISHED = {
    "sd15": {"unet": SD15_UNET_CONFIG, "vae": VAE_CONFIG, "text_encoder": SD15_TEXT_CONFIG},
    "sdxl": {
        "unet": SDXL_UNET_CONFIG,
        "vae": VAE_CONFIG,
        "text_encoder": SD15_TEXT_CONFIG,
        "text_encoder_2": SDXL_TEXT_2_CONFIG,
    },
    "flux-dev": {
        "transformer": FLUX_DEV_TRANSFORMER_CONFIG,
        "vae": FLUX_VAE_CONFIG,
        "text_encoder": FLUX_CLIP_CONFIG,
        "text_encoder_2": T5_XXL_CONFIG,
    },
}


def write_config_folder(folder: Path, model: str) -> Path:
    """A pipeline folder of `model` (`sd15`, `sdxl` or `flux-dev`) with config.json files and no weights;
    its tokenizers are the tiny test ones (CLIP's with 77 tokens, FLUX.1's T5 one with 512), which is all
    sizing needs."""
    from .tiny_flux import SCHEDULER as FLUX_SCHEDULER
    from .tiny_flux import write_t5_tokenizer
    from .tiny_sd import MODEL_INDEX, SCHEDULER, SDXL_MODEL_INDEX, write_tokenizer

    folder = Path(folder)
    index, scheduler = {
        "sdxl": (SDXL_MODEL_INDEX, SCHEDULER),
        "flux-dev": (FLUX_MODEL_INDEX, FLUX_SCHEDULER),
    }.get(model, (MODEL_INDEX, SCHEDULER))
    _write_json(folder / "model_index.json", index)
    _write_json(folder / "scheduler" / "scheduler_config.json", scheduler)
    for name, config in PUBLISHED[model].items():
        _write_json(folder / name / "config.json", config)
    write_tokenizer(folder / "tokenizer")
    if model == "sdxl":
        write_tokenizer(folder / "tokenizer_2")
    elif model == "flux-dev":
        write_t5_tokenizer(folder / "tokenizer_2")
    return folder


def _write_json(path: Path, values: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(values, indent=2) + "\n")
