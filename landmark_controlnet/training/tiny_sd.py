"""A tiny random Stable Diffusion 1.5-shaped model in the diffusers folder layout, for offline CPU tests.

`write_tiny_sd(folder)` writes model_index.json plus unet/, vae/, text_encoder/, tokenizer/, scheduler/
and feature_extractor/, loadable part by part or as a pipeline (the Flax pipelines need an explicit
`safety_checker=None`). The weights are random (torch default init) and nothing is downloaded.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
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
    # The Flax UNet hard-codes GroupNorm(32), so the torch twin must use 32 too for equal outputs.
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
MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "DDPMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def write_tiny_sd(
    folder: Path, *, inpainting: bool = False, pytorch: bool = True, flax: bool = True, seed: int = 0
) -> Path:
    """Write the tiny model into `folder` (created) and return it.

    `pytorch` writes the torch weights (see `_save_torch`), `flax` writes msgpack weights converted
    from those same torch weights, so both sets hold the same numbers. `inpainting` gives the UNet
    9 input channels (latents + mask + masked-image latents). Takes a few seconds on CPU.
    """
    import diffusers
    import torch
    from transformers import CLIPImageProcessor, CLIPTextConfig, CLIPTextModel

    if not (pytorch or flax):
        raise ValueError("write_tiny_sd needs pytorch=True or flax=True")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    index = {"_diffusers_version": diffusers.__version__, **MODEL_INDEX}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    (folder / "scheduler").mkdir(exist_ok=True)
    scheduler = {**SCHEDULER, "_diffusers_version": diffusers.__version__}
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2) + "\n")
    CLIPImageProcessor(crop_size=224, size={"shortest_edge": 224}).save_pretrained(
        folder / "feature_extractor"
    )
    tokenizer = _write_tokenizer(folder / "tokenizer")

    with _quiet(), torch.random.fork_rng():  # leave the caller's torch RNG as it was
        torch.manual_seed(seed)
        unet = diffusers.UNet2DConditionModel(**UNET, in_channels=9 if inpainting else 4)
        vae = diffusers.AutoencoderKL(**VAE)
        text_config = CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=HIDDEN,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=MAX_LENGTH,
            hidden_act="quick_gelu",
            projection_dim=HIDDEN,
            # Real ids rather than CLIP's legacy 0/1/2, so pooling picks the first <|endoftext|>.
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        text_encoder = CLIPTextModel(text_config).eval()
        for name, model in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder)):
            _save_torch(model, folder / name, weights=pytorch)
            if flax:
                _save_flax(model, folder / name)
    return folder


def _save_torch(model: torch.nn.Module, sub: Path, weights: bool) -> None:
    is_diffusers = hasattr(model, "save_config")
    if not weights:  # the torch config.json is what both frameworks read
        if is_diffusers:
            model.save_config(sub)
        else:
            model.config.save_pretrained(sub)
        return
    model.save_pretrained(sub)  # (diffusion_pytorch_)model.safetensors
    if is_diffusers:
        # Diffusers' Flax `from_pretrained(..., from_pt=True)` only reads diffusion_pytorch_model.bin;
        # real SD 1.5 repos ship both files too.
        model.save_pretrained(sub, safe_serialization=False)


def _save_flax(torch_model: torch.nn.Module, sub: Path) -> None:
    """Convert with the library's own converter (what `from_pt=True` runs) and save as msgpack.

    The converters only read key names and shapes of a random Flax init, so they get `jax.eval_shape`
    results instead of a real init, which on CPU runs op by op (~15 s of XLA compiles for the UNet).
    """
    import diffusers
    import jax

    state = torch_model.state_dict()
    torch_config = (sub / "config.json").read_text()
    if isinstance(torch_model, diffusers.ModelMixin):
        from diffusers.models.modeling_flax_pytorch_utils import convert_pytorch_state_dict_to_flax

        flax_cls = getattr(diffusers, "Flax" + type(torch_model).__name__)
        model = flax_cls.from_config(flax_cls.load_config(sub))
        shapes = SimpleNamespace(init_weights=lambda rng: jax.eval_shape(model.init_weights, rng))
    else:
        import transformers
        from transformers.modeling_flax_pytorch_utils import convert_pytorch_state_dict_to_flax

        flax_cls = getattr(transformers, "Flax" + type(torch_model).__name__)
        model = flax_cls(torch_model.config, _do_init=False)
        shapes = SimpleNamespace(base_model_prefix=model.base_model_prefix, params=model.params_shape_tree)
    model.save_pretrained(sub, params=convert_pytorch_state_dict_to_flax(state, shapes))
    # Flax's save rewrites config.json (Flax class name, no torch-only keys); keep the torch one.
    (sub / "config.json").write_text(torch_config)


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the libraries' logs meanwhile: every Flax diffusers module logs a deprecation notice."""
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


def _write_tokenizer(sub: Path) -> CLIPTokenizer:
    """A real CLIPTokenizer on a tiny byte-level BPE: all 256 bytes (plain and `</w>`) + the WORDS."""
    from transformers import CLIPTokenizer
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
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
