"""Tiny random models the tests create and save locally (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

TINY_VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "a",
    "photo",
    "of",
    "hand",
    "person",
    "face",
    "the",
]


def tiny_blip(folder: Path) -> Path:
    """A BLIP captioning model with 2 tiny layers, its processor and a 12-word tokenizer."""
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(TINY_VOCAB) + "\n")
    tokenizer = BertTokenizer(str(vocab), do_lower_case=True)
    tokenizer.add_special_tokens({"bos_token": "[CLS]", "eos_token": "[SEP]"})
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 64,
        "bos_token_id": tokenizer.cls_token_id,
        "eos_token_id": tokenizer.sep_token_id,
        "sep_token_id": tokenizer.sep_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    config = BlipConfig(text_config=text, vision_config=vision, projection_dim=32)
    model = BlipForConditionalGeneration(config)
    model.config.text_config.bos_token_id = tokenizer.cls_token_id
    processor = BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def perturb(model, seed: int, scale: float = 0.02) -> None:
    """Add seeded Gaussian noise to every parameter of an NNX `model`, in place.

    A fresh ControlNet's output convolutions are zero-initialised, so an unperturbed one is a no-op
    and a comparison through it proves nothing. Small noise: a large constant offset makes the
    residuals swamp everything else (float32 then hides the inputs a test wants to see)."""
    import jax
    from flax import nnx

    leaves, tree = jax.tree_util.tree_flatten(nnx.state(model, nnx.Param))
    key = jax.random.key(seed)
    noisy = [p + scale * jax.random.normal(jax.random.fold_in(key, i), p.shape) for i, p in enumerate(leaves)]
    nnx.update(model, jax.tree_util.tree_unflatten(tree, noisy))


def tiny_controlnet(base: Path, folder: Path, seed: int) -> Path:
    """A perturbed ControlNet for the tiny SD at `base` (`write_tiny_sd`), saved as the trainer exports."""
    import jax.numpy as jnp

    from landmark_controlnet.diffusion.export import save_pretrained
    from landmark_controlnet.training.models import controlnet_from_unet, controlnet_options, load_base_model

    controlnet = controlnet_from_unet(load_base_model(str(base)).unet, seed, controlnet_options(jnp.float32))
    perturb(controlnet, seed, scale=0.05)  # else a no-op: its output convolutions start at zero
    save_pretrained(controlnet, folder)
    return folder
