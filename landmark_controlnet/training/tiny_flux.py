"""A tiny random FLUX.1-shaped pipeline in the diffusers folder layout, for offline CPU tests.

`write_tiny_flux(folder)` writes what `diffusers.FluxPipeline.save_pretrained` writes for FLUX.1-dev:
model_index.json, transformer/, vae/ (16 latent channels, no quant convs, a shift factor), text_encoder/
(CLIP) and tokenizer/, text_encoder_2/ (T5 v1.1, gated GELU) and tokenizer_2/ (a T5 Unigram tokenizer
built here, so nothing is downloaded) and scheduler/ (flow-match Euler with FLUX.1's dynamic shift). The
weights are random (torch default init), PyTorch safetensors; `diffusion.flux_pipeline.load_flux` and
PyTorch diffusers' FluxPipeline both load the folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .tiny_sd import HIDDEN, WORDS, _quiet, _text_config, write_tokenizer

if TYPE_CHECKING:
    from transformers import T5TokenizerFast

T5_WIDTH = 32  # T5's d_model == the transformer's joint_attention_dim
LATENT_CHANNELS = 16
TRANSFORMER = {
    "patch_size": 1,
    "in_channels": 4 * LATENT_CHANNELS,  # 2x2 latent patches packed into channels
    "num_layers": 2,
    "num_single_layers": 2,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": T5_WIDTH,
    "pooled_projection_dim": HIDDEN,  # CLIP's pooled output
    "axes_dims_rope": [4, 4, 8],
}
T5 = {
    "d_model": T5_WIDTH,
    "d_kv": 8,
    "d_ff": 48,
    "num_layers": 2,
    "num_heads": 4,
    "feed_forward_proj": "gated-gelu",  # T5 v1.1, as google/t5-v1_1-xxl
    "relative_attention_num_buckets": 8,
    "relative_attention_max_distance": 16,
    "dropout_rate": 0.0,
}
VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,  # 3 downsamplers -> factor 8, as FLUX.1's
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [8, 8, 16, 16],
    "layers_per_block": 1,
    "latent_channels": LATENT_CHANNELS,
    "norm_num_groups": 4,
    "sample_size": 64,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "shift_factor": 0.1159,  # FLUX.1's
    "scaling_factor": 0.3611,
}
# black-forest-labs/FLUX.1-dev's scheduler/scheduler_config.json.
SCHEDULER = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}
T5_MAX_LENGTH = 512  # FLUX.1-dev's max_sequence_length
# Unigram scores: whole words beat their letters; letters keep any lower-case text tokenizable.
WORD_SCORE, CHARACTER_SCORE = -1.0, -5.0
CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789,.'-!?"


def write_tiny_flux(folder: str | Path, seed: int = 0, guidance_embeds: bool = True) -> Path:
    """Write the tiny pipeline into `folder` (created) and return it.

    `guidance_embeds` makes the transformer guidance-distilled (FLUX.1-dev) or not (FLUX.1-schnell's
    shape). Takes a few seconds on CPU."""
    import diffusers
    import torch
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with _quiet(), torch.random.fork_rng():  # leave the caller's torch RNG as it was
        torch.manual_seed(seed)
        clip_tokenizer = write_tokenizer(folder / "tokenizer")
        t5_tokenizer = write_t5_tokenizer(folder / "tokenizer_2")
        pipeline = diffusers.FluxPipeline(
            scheduler=diffusers.FlowMatchEulerDiscreteScheduler(**SCHEDULER),
            vae=diffusers.AutoencoderKL(**VAE),
            text_encoder=CLIPTextModel(_text_config(clip_tokenizer, HIDDEN, hidden_act="quick_gelu")).eval(),
            tokenizer=clip_tokenizer,
            text_encoder_2=T5EncoderModel(T5Config(vocab_size=len(t5_tokenizer), **T5)).eval(),
            tokenizer_2=t5_tokenizer,
            transformer=diffusers.FluxTransformer2DModel(**TRANSFORMER, guidance_embeds=guidance_embeds),
        )
        pipeline.save_pretrained(folder, safe_serialization=True)  # model_index.json and every part
    return folder


def write_t5_tokenizer(sub: Path) -> T5TokenizerFast:
    """A real T5TokenizerFast (Unigram, SentencePiece's metaspace) over the WORDS and single letters:
    T5's special ids (pad 0, eos 1, unk 2), no sentinel tokens; saved as tokenizer.json."""
    from transformers import T5TokenizerFast

    scores = {"<pad>": 0.0, "</s>": 0.0, "<unk>": 0.0, "\u2581": -2.0}
    for word in WORDS:
        scores.setdefault("\u2581" + word, WORD_SCORE)
    for c in CHARACTERS:  # a one-letter word keeps its word score
        scores.setdefault(c, CHARACTER_SCORE)
        scores.setdefault("\u2581" + c, CHARACTER_SCORE)
    tokenizer = T5TokenizerFast(vocab=list(scores.items()), extra_ids=0, model_max_length=T5_MAX_LENGTH)
    sub.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(sub)
    return tokenizer
