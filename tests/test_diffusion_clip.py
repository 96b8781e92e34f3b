"""Parity of the NNX CLIP text encoders with transformers' PyTorch CLIPTextModel(WithProjection).

Each reference is a scaled-down copy of a released encoder's structure, with every parameter perturbed,
saved by `save_pretrained` (the real safetensors layout and config.json) and loaded into ours from there.
"""

from __future__ import annotations

import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from landmark_controlnet.diffusion import weights
from landmark_controlnet.diffusion.clip import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTextWithProjectionConfig,
    encode_prompt,
    encode_sdxl_prompt,
    eos_positions,
)
from landmark_controlnet.diffusion.config import UnsupportedConfigError
from landmark_controlnet.diffusion.loading import from_pretrained
from landmark_controlnet.diffusion.weights import WeightsError
from tests.diffusion_parity import perturb

LENGTH = 77
BOS, EOS = 49406, 49407
ADDED_TOKEN = 49408  # a token added after the original vocabulary (textual inversion): higher than EOS

# Released structures, narrower and shallower, with their activation and EOS rule. Two attention shapes
# only (head_dim 32; 2 and 3 heads) and one batch size, since XLA's CPU compile of each attention shape
# dominates the run time.
SD1 = dict(  # openai/clip-vit-large-patch14, as in SD 1.x's text_encoder (legacy eos_token_id=2)
    hidden_size=64, intermediate_size=256, num_attention_heads=2, num_hidden_layers=2,
    hidden_act="quick_gelu", projection_dim=64, bos_token_id=0, eos_token_id=2, pad_token_id=1,
    vocab_size=49409,
)  # fmt: skip
SD2 = dict(  # OpenCLIP ViT-H/14 in the HF CLIP format, with the fixed eos_token_id and an added token
    hidden_size=96, intermediate_size=384, num_attention_heads=3, num_hidden_layers=3,
    hidden_act="gelu", projection_dim=48, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=0,
    vocab_size=49409,
)  # fmt: skip
SDXL_1 = dict(SD1, vocab_size=49408)  # SDXL's text_encoder is SD 1.x's
SDXL_2 = dict(  # OpenCLIP ViT-bigG/14 with its text_projection (legacy eos_token_id=2, as released)
    hidden_size=96, intermediate_size=384, num_attention_heads=3, num_hidden_layers=3,
    hidden_act="gelu", projection_dim=80, bos_token_id=0, eos_token_id=2, pad_token_id=1,
)  # fmt: skip


def prompt_ids(lengths: list[int], pad: int, seed: int, added_token_at: int | None = None) -> np.ndarray:
    """Tokenizer-shaped rows: BOS, `n` word ids, EOS, then `pad` up to 77 (SD 1.x pads with EOS, SD 2.x
    with 0). `added_token_at` puts an id above EOS in the first row, where the two EOS rules disagree."""
    rng = np.random.default_rng(seed)
    rows = np.full((len(lengths), LENGTH), pad, dtype=np.int64)
    for row, n in zip(rows, lengths, strict=True):
        row[0] = BOS
        row[1 : n + 1] = rng.integers(300, 40000, size=n)
        row[n + 1] = EOS
    if added_token_at is not None:
        rows[0, added_token_at] = ADDED_TOKEN
    return rows


def perturbed_reference(class_name: str, settings: dict, seed: int, directory: Path):
    torch.manual_seed(seed)
    config = transformers.CLIPTextConfig(max_position_embeddings=LENGTH, **settings)
    model = perturb(getattr(transformers, class_name)(config), seed)
    model.save_pretrained(directory, safe_serialization=True)
    return model


def load_ours(cls, directory: Path, source=None):
    if source is None:
        return from_pretrained(cls, directory)
    config = cls.config_class.from_json_file(directory / "config.json")
    return weights.load_module(cls.abstract(config), source, cls.ignore_unexpected)


def torch_outputs(model, input_ids: np.ndarray, attention_mask: np.ndarray | None = None):
    mask = None if attention_mask is None else torch.from_numpy(attention_mask)
    with torch.no_grad():
        return model(torch.from_numpy(input_ids), attention_mask=mask, output_hidden_states=True)


def assert_close(ours, theirs) -> None:
    ours, theirs = np.asarray(ours), theirs.detach().numpy()
    assert ours.shape == theirs.shape
    error, scale = np.max(np.abs(ours - theirs)), np.max(np.abs(theirs))
    assert error <= 1e-4 * scale, f"max error {error:.3g} against max |reference| {scale:.3g}"


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sd1_text_encoder")
    reference = perturbed_reference("CLIPTextModel", SD1, seed=1, directory=directory)
    return reference, load_ours(CLIPTextModel, directory), directory


@pytest.fixture(scope="module")
def sd2(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sd2_text_encoder")
    reference = perturbed_reference("CLIPTextModel", SD2, seed=2, directory=directory)
    return reference, load_ours(CLIPTextModel, directory)


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    first_dir = tmp_path_factory.mktemp("sdxl_text_encoder")
    second_dir = tmp_path_factory.mktemp("sdxl_text_encoder_2")
    first = perturbed_reference("CLIPTextModel", SDXL_1, seed=3, directory=first_dir)
    second = perturbed_reference("CLIPTextModelWithProjection", SDXL_2, seed=4, directory=second_dir)
    ours = load_ours(CLIPTextModel, first_dir), load_ours(CLIPTextModelWithProjection, second_dir)
    return (first, second), ours


def test_sd1_parity_legacy_eos_rule(sd1):
    reference, ours, _ = sd1
    ids = prompt_ids([5, 20, LENGTH - 2], pad=EOS, seed=10, added_token_at=2)
    # transformers pools a legacy config at the highest id, here the added token, not the EOS.
    assert np.any(np.argmax(ids, axis=-1) != np.argmax(ids == EOS, axis=-1))
    theirs = torch_outputs(reference, ids)
    out = ours(jnp.asarray(ids))
    assert_close(out.last_hidden_state, theirs.last_hidden_state)
    assert_close(out.penultimate_hidden_state, theirs.hidden_states[-2])
    assert_close(out.pooled_output, theirs.pooler_output)
    assert_close(encode_prompt(ours, jnp.asarray(ids)), theirs.last_hidden_state)


def test_sd2_parity_first_eos_rule(sd2):
    reference, ours = sd2
    ids = prompt_ids([7, 30, 0], pad=0, seed=11, added_token_at=3)
    # The row with the added token is where "highest id" and "first EOS" pick different positions.
    assert np.any(np.argmax(ids, axis=-1) != np.argmax(ids == EOS, axis=-1))
    theirs = torch_outputs(reference, ids)
    out = ours(jnp.asarray(ids))
    assert_close(out.last_hidden_state, theirs.last_hidden_state)
    assert_close(out.penultimate_hidden_state, theirs.hidden_states[-2])
    assert_close(out.pooled_output, theirs.pooler_output)


def test_attention_mask_parity(sd2):
    reference, ours = sd2
    lengths = [4, 40, 0]
    ids = prompt_ids(lengths, pad=0, seed=12)
    mask = (np.arange(LENGTH)[None, :] < np.array(lengths)[:, None] + 2).astype(np.int64)
    theirs = torch_outputs(reference, ids, mask)
    out = ours(jnp.asarray(ids), jnp.asarray(mask))
    assert_close(out.last_hidden_state, theirs.last_hidden_state)
    assert_close(out.pooled_output, theirs.pooler_output)


def test_sdxl_pair_parity(sdxl):
    (first, second), (ours_1, ours_2) = sdxl
    # SDXL's first tokenizer pads with EOS, the second with 0.
    ids_1 = prompt_ids([6, 50, 75], pad=EOS, seed=13)
    ids_2 = prompt_ids([6, 50, 75], pad=0, seed=13)
    theirs_1, theirs_2 = torch_outputs(first, ids_1), torch_outputs(second, ids_2)
    context, pooled = encode_sdxl_prompt(ours_1, ours_2, jnp.asarray(ids_1), jnp.asarray(ids_2))
    assert context.shape[-1] == SDXL_1["hidden_size"] + SDXL_2["hidden_size"]
    assert_close(context, torch.cat([theirs_1.hidden_states[-2], theirs_2.hidden_states[-2]], dim=-1))
    assert_close(pooled, theirs_2.text_embeds)
    assert_close(ours_2(jnp.asarray(ids_2)).last_hidden_state, theirs_2.last_hidden_state)


def test_eos_rules():
    ids = jnp.asarray(prompt_ids([3, 10], pad=EOS, seed=14, added_token_at=2))
    np.testing.assert_array_equal(eos_positions(ids, 2), [2, 11])  # legacy: highest id
    np.testing.assert_array_equal(eos_positions(ids, EOS), [4, 11])  # the first EOS


def test_config_from_saved_json(sd1):
    _, ours, directory = sd1
    config = CLIPTextConfig.from_json_file(directory / "config.json")
    assert (config.hidden_size, config.num_hidden_layers, config.hidden_act) == (64, 2, "quick_gelu")
    assert config.extra["model_type"] == "clip_text_model"
    assert CLIPTextWithProjectionConfig.class_name == CLIPTextModelWithProjection.config_class.class_name


def test_unsupported_activation_raises():
    with pytest.raises(UnsupportedConfigError, match="hidden_act"):
        CLIPTextConfig.from_dict({"hidden_act": "relu"})


def test_position_ids_buffer_is_ignored(sd1):
    _, ours, directory = sd1
    tensors = dict(weights.torch_state_dict(ours))
    tensors["text_model.embeddings.position_ids"] = np.arange(LENGTH)[None]  # as SD 1.5's file has it
    reloaded = load_ours(CLIPTextModel, directory, weights.DictTensorSource(tensors))
    ids = jnp.asarray(prompt_ids([5, 9, 60], pad=EOS, seed=15))
    np.testing.assert_array_equal(reloaded(ids).pooled_output, ours(ids).pooled_output)


def test_missing_key_names_it(sdxl):
    _, (_, ours_2) = sdxl
    tensors = weights.torch_state_dict(ours_2)
    for key in ["text_projection.weight", "text_model.encoder.layers.1.self_attn.q_proj.bias"]:
        partial = {k: v for k, v in tensors.items() if k != key}
        config = ours_2.config
        with pytest.raises(WeightsError, match=re.escape(key)):
            weights.load_module(
                CLIPTextModelWithProjection.abstract(config), weights.DictTensorSource(partial)
            )
