"""A tiny random Stable Diffusion 1.5-shaped model in the diffusers folder layout, for offline CPU tests.

`write_tiny_sd(folder)` writes model_index.json plus unet/, vae/, text_encoder/, tokenizer/ and scheduler/
(PyTorch safetensors), loadable part by part, by `diffusion.pipeline.load_stable_diffusion`, or by
PyTorch diffusers as a pipeline; `sdxl=True` adds text_encoder_2/ and tokenizer_2/ as SDXL has. The
weights are random (torch default init); nothing is downloaded.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

# Words that get whole-word BPE tokens; anything else falls back to byte-level characters.
WORDS = (
    "a", "an", "the", "of", "and", "with", "in", "on", "photo", "picture", "person", "man", "woman", "hand",
    "hands", "face", "gesture", "making", "holding", "pose", "body", "open", "palm", "fist", "finger",
    "up", "thumbs", "peace", "sign", "close", "portrait", "high", "quality",
)  # fmt: skip
HIDDEN = 32  # text encoder width == UNet cross_attention_dim
MAX_LENGTH = 77

UNET = {
    "sample_size": 8,  # 64 px images / VAE factor 8
    "out_channels": 4,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [32, 32, 64, 64],
    "layers_per_block": 1,
    "cross_attention_dim": HIDDEN,
    # Like SD 1.5's `8`, diffusers reads this as the number of heads (2 heads of 16/32 channels).
    "attention_head_dim": 2,
    "norm_num_groups": 32,
}
VAE = {
    "sample_size": 64,
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,  # 3 downsamplers -> factor 8, as in SD
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [8, 8, 16, 16],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 4,
    "scaling_factor": 0.18215,
}
SCHEDULER = {
    "_class_name": "DDPMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "clip_sample": False,
    "set_alpha_to_one": False,  # read by PNDM/DDIM, ignored by DDPM
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
# What SD 2.x (2.1 768-v) changes: linear projections, per-block head counts, upcast attention, an
# OpenCLIP-style text encoder (exact GELU) and v-prediction.
SD2_UNET = {"use_linear_projection": True, "attention_head_dim": [1, 2, 2, 2], "upcast_attention": True}
SD2_TEXT = {"hidden_act": "gelu"}
SD2_SCHEDULER = {"prediction_type": "v_prediction"}
# SDXL's shape at toy width: no attention in the first block, a transformer depth list, text_time
# add-embeds over the second encoder's pooled projection, two text encoders side by side.
HIDDEN_2 = 48  # the second (OpenCLIP bigG-like) encoder; the UNet sees HIDDEN + HIDDEN_2 channels
SDXL_TIME_DIM = 8
SDXL_UNET = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [32, 64, 64],
    "layers_per_block": 1,
    "transformer_layers_per_block": [1, 1, 2],
    "attention_head_dim": [1, 2, 2],
    "use_linear_projection": True,
    "cross_attention_dim": HIDDEN + HIDDEN_2,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": SDXL_TIME_DIM,
    "projection_class_embeddings_input_dim": HIDDEN_2 + 6 * SDXL_TIME_DIM,
    "norm_num_groups": 32,
}
SDXL_VAE = {"scaling_factor": 0.13025, "force_upcast": True}
MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "feature_extractor": [None, None],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "DDPMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
SDXL_MODEL_INDEX = {
    "_class_name": "StableDiffusionXLPipeline",
    "force_zeros_for_empty_prompt": True,
    "scheduler": ["diffusers", "DDPMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def write_tiny_sd(
    folder: Path, *, inpainting: bool = False, sd2: bool = False, sdxl: bool = False, seed: int = 0
) -> Path:
    """Write the tiny model into `folder` (created) and return it.

    The weights are PyTorch safetensors written by diffusers and transformers, as the real repos ship
    them. `inpainting` gives the UNet 9 input channels (latents + mask + masked-image latents); `sd2`
    makes it SD 2.1-shaped (SD2_*), v-prediction included; `sdxl` makes an SDXL pipeline folder (a
    second text encoder with projection and its tokenizer, the SDXL_* UNet and VAE). Takes a few
    seconds on CPU.
    """
    import diffusers
    import torch
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if sdxl and (sd2 or inpainting):
        raise ValueError("the tiny SDXL is text-to-image, epsilon-prediction only")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    index = {"_diffusers_version": diffusers.__version__, **(SDXL_MODEL_INDEX if sdxl else MODEL_INDEX)}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    (folder / "scheduler").mkdir(exist_ok=True)
    scheduler = {**SCHEDULER, **(SD2_SCHEDULER if sd2 else {}), "_diffusers_version": diffusers.__version__}
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2) + "\n")
    tokenizer = write_tokenizer(folder / "tokenizer")

    with _quiet(), torch.random.fork_rng():  # leave the caller's torch RNG as it was
        torch.manual_seed(seed)
        if sdxl:
            unet_config = SDXL_UNET
        else:
            unet_config = {**UNET, **(SD2_UNET if sd2 else {}), "in_channels": 9 if inpainting else 4}
        models = {
            "unet": diffusers.UNet2DConditionModel(**unet_config),
            "vae": diffusers.AutoencoderKL(**{**VAE, **(SDXL_VAE if sdxl else {})}),
            "text_encoder": CLIPTextModel(
                _text_config(tokenizer, HIDDEN, **(SD2_TEXT if sd2 else {"hidden_act": "quick_gelu"}))
            ).eval(),
        }
        if sdxl:
            write_tokenizer(folder / "tokenizer_2")
            second = _text_config(tokenizer, HIDDEN_2, hidden_act="gelu")
            models["text_encoder_2"] = CLIPTextModelWithProjection(second).eval()
        for name, model in models.items():
            model.save_pretrained(folder / name)  # config.json + (diffusion_pytorch_)model.safetensors
    return folder


def _text_config(tokenizer: CLIPTokenizer, hidden: int, **changes):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=MAX_LENGTH,
        projection_dim=hidden,
        # Real ids rather than CLIP's legacy 0/1/2, so pooling picks the first <|endoftext|>.
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **changes,
    )


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the libraries' logs meanwhile (model construction warnings that mean nothing here)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    levels = [(lib, lib.get_verbosity()) for lib in (diffusers_logging, transformers_logging)]
    for lib, _ in levels:
        lib.set_verbosity_error()
    try:
        yield
    finally:
        for lib, level in levels:
            lib.set_verbosity(level)


def byte_level_alphabet() -> list[str]:
    """The 256 characters byte-level BPE (GPT-2, CLIP) writes bytes as, in its vocabulary's order.

    Printable Latin-1 bytes stand for themselves and come first; the others follow, as U+0100 onwards.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


def write_tokenizer(sub: Path) -> CLIPTokenizer:
    """A real CLIPTokenizer on a tiny byte-level BPE: all 256 bytes (plain and `</w>`) + the WORDS."""
    from transformers import CLIPTokenizer

    chars = byte_level_alphabet()
    vocab = chars + [c + "</w>" for c in chars]
    # Learn merges the way BPE training does (most frequent pair first, until every word is one symbol);
    # replaying them in that order, as CLIPTokenizer does, turns each of WORDS into a single token.
    words = [(*w[:-1], w[-1] + "</w>") for w in WORDS]
    merges: list[str] = []
    while pairs := Counter(pair for w in words for pair in zip(w, w[1:], strict=False)):
        left, right = max(pairs, key=pairs.__getitem__)
        merges.append(f"{left} {right}")
        vocab.append(left + right)
        words = [_merge(w, left, right) for w in words]
    vocab = list(dict.fromkeys(vocab)) + ["<|startoftext|>", "<|endoftext|>"]
    sub.mkdir(parents=True, exist_ok=True)
    (sub / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    (sub / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(
        str(sub / "vocab.json"),
        str(sub / "merges.txt"),
        pad_token="<|endoftext|>",
        model_max_length=MAX_LENGTH,
    )
    tokenizer.save_pretrained(sub)
    return tokenizer


def _merge(word: tuple[str, ...], left: str, right: str) -> tuple[str, ...]:
    out: list[str] = []
    for symbol in word:
        if out and out[-1] == left and symbol == right:
            out[-1] = left + right
        else:
            out.append(symbol)
    return tuple(out)
