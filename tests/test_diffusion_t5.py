"""Parity of the NNX T5 encoder with transformers' PyTorch T5EncoderModel (FLUX.1's text_encoder_2).

Each reference is a scaled-down T5 with every parameter perturbed, saved by `save_pretrained` (the real
safetensors layout and config.json) and loaded into ours from that folder.
"""

from __future__ import annotations

import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from diffusion_parity import assert_matches, perturb
from flax import nnx

from landmark_controlnet.diffusion import weights
from landmark_controlnet.diffusion.config import UnsupportedConfigError
from landmark_controlnet.diffusion.loading import abstract_pretrained, from_pretrained
from landmark_controlnet.diffusion.options import ModelOptions
from landmark_controlnet.diffusion.t5 import (
    T5Config,
    T5EncoderModel,
    encode_t5_prompt,
    relative_position_buckets,
)
from landmark_controlnet.diffusion.weights import WeightsError

LENGTH = 48  # past the 8 exact offsets of 32 buckets: the logarithmic buckets are exercised

# FLUX.1's text_encoder_2 (google/t5-v1_1-xxl: 24 layers, d_model 4096, 64 heads of 64, d_ff 10240) at
# toy widths, with its buckets; the original T5 (relu, ungated) with few buckets, so offsets past
# max_distance share the last one.
T5_V1_1 = dict(
    vocab_size=300, d_model=64, d_kv=16, d_ff=96, num_layers=3, num_heads=4, feed_forward_proj="gated-gelu",
    relative_attention_num_buckets=32, relative_attention_max_distance=128,
)  # fmt: skip
T5_RELU = dict(
    vocab_size=300, d_model=64, d_kv=16, d_ff=96, num_layers=2, num_heads=4, feed_forward_proj="relu",
    relative_attention_num_buckets=8, relative_attention_max_distance=16,
)  # fmt: skip


def perturbed_reference(settings: dict, seed: int, directory: Path) -> transformers.T5EncoderModel:
    torch.manual_seed(seed)
    config = transformers.T5Config(dropout_rate=0.0, **settings)
    model = perturb(transformers.T5EncoderModel(config), seed, scale=0.05)
    model.save_pretrained(directory, safe_serialization=True)
    return model


def prompt_ids(lengths: list[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokenizer-shaped rows: `n` word ids, EOS (1), then padding (0) to LENGTH; and their masks."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((len(lengths), LENGTH), dtype=np.int64)
    for row, n in zip(ids, lengths, strict=True):
        row[:n] = rng.integers(2, T5_V1_1["vocab_size"], size=n)
        row[n] = 1
    mask = (np.arange(LENGTH)[None, :] <= np.array(lengths)[:, None]).astype(np.int64)
    return ids, mask


def torch_hidden(model, ids: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    attention_mask = None if mask is None else torch.from_numpy(mask)
    with torch.no_grad():
        return model(torch.from_numpy(ids), attention_mask=attention_mask).last_hidden_state.numpy()


@pytest.fixture(scope="module")
def v1_1(tmp_path_factory):
    directory = tmp_path_factory.mktemp("t5_v1_1")
    reference = perturbed_reference(T5_V1_1, seed=1, directory=directory)
    return reference, from_pretrained(T5EncoderModel, directory), directory


def test_v1_1_parity_with_attention_mask(v1_1):
    reference, ours, _ = v1_1
    ids, mask = prompt_ids([5, 30, LENGTH - 1], seed=10)
    assert_matches(ours(jnp.asarray(ids), jnp.asarray(mask)), torch_hidden(reference, ids, mask), "masked")
    # The padded positions matter: without the mask the outputs differ (FLUX passes none).
    unmasked = torch_hidden(reference, ids)
    assert not np.allclose(unmasked, torch_hidden(reference, ids, mask), atol=1e-3)
    assert_matches(encode_t5_prompt(ours, jnp.asarray(ids)), unmasked, "unmasked")


def test_unscanned_layers_give_the_same_output(v1_1):
    _, ours, directory = v1_1
    unrolled = from_pretrained(T5EncoderModel, directory, options=ModelOptions(scan_layers=False))
    ids, mask = prompt_ids([7, 20, 40], seed=11)
    np.testing.assert_allclose(
        unrolled(jnp.asarray(ids), jnp.asarray(mask)), ours(jnp.asarray(ids), jnp.asarray(mask)), atol=1e-5
    )


def test_original_t5_relu_parity_past_max_distance(tmp_path):
    reference = perturbed_reference(T5_RELU, seed=2, directory=tmp_path)
    ours = from_pretrained(T5EncoderModel, tmp_path)
    assert not ours.config.is_gated_act and ours.config.dense_act_fn == "relu"
    ids, mask = prompt_ids([3, 25, 44], seed=12)
    assert_matches(ours(jnp.asarray(ids), jnp.asarray(mask)), torch_hidden(reference, ids, mask), "relu")


@pytest.mark.parametrize(("buckets", "max_distance"), [(32, 128), (8, 16), (64, 256)])
def test_relative_position_buckets_equal_transformers(buckets, max_distance):
    from transformers.models.t5.modeling_t5 import T5Attention

    length = 600  # FLUX.1-dev encodes 512 tokens
    offsets = torch.arange(length)[None, :] - torch.arange(length)[:, None]
    theirs = T5Attention._relative_position_bucket(offsets, True, buckets, max_distance).numpy()
    np.testing.assert_array_equal(relative_position_buckets(length, length, buckets, max_distance), theirs)


def test_parameter_keys_are_the_checkpoint_keys(v1_1):
    _, _, directory = v1_1
    abstract = abstract_pretrained(T5EncoderModel, directory)
    shapes = {
        weights.torch_key(path): v.get_raw_value().shape for path, v in weights.parameter_paths(abstract)
    }
    ours = set(shapes)
    assert "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight" in ours
    assert "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight" not in ours
    assert "encoder.block.2.layer.1.DenseReluDense.wi_1.weight" in ours
    assert "shared.weight" in ours and "encoder.final_layer_norm.weight" in ours
    assert shapes["encoder.block.0.layer.0.SelfAttention.q.weight"] == (64, 64)  # (in, out) = (64, 4 x 16)


def test_tied_embedding_copy_is_accepted(v1_1):
    _, ours, directory = v1_1
    tensors = dict(weights.torch_state_dict(ours))
    tensors["encoder.embed_tokens.weight"] = tensors["shared.weight"]  # as older transformers saved it
    config = T5Config.from_json_file(directory / "config.json")
    reloaded = weights.load_module(
        T5EncoderModel.abstract(config), weights.DictTensorSource(tensors), T5EncoderModel.ignore_unexpected
    )
    ids, _ = prompt_ids([4, 9, 12], seed=13)
    np.testing.assert_array_equal(reloaded(jnp.asarray(ids)), ours(jnp.asarray(ids)))


def test_missing_key_names_it(v1_1):
    _, ours, _ = v1_1
    tensors = weights.torch_state_dict(ours)
    key = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    partial = {k: v for k, v in tensors.items() if k != key}
    with pytest.raises(WeightsError, match=re.escape(key)):
        weights.load_module(T5EncoderModel.abstract(ours.config), weights.DictTensorSource(partial))


def test_config_from_saved_json(v1_1):
    _, _, directory = v1_1
    config = T5Config.from_json_file(directory / "config.json")
    assert (config.d_model, config.num_layers, config.num_heads, config.d_kv) == (64, 3, 4, 16)
    assert config.is_gated_act and config.dense_act_fn == "gelu_new"
    assert config.extra["model_type"] == "t5"
    assert T5Config.from_dict(config.to_dict()) == config


def test_abstract_construction_allocates_nothing():
    config = T5Config.from_dict({**T5_V1_1, "d_model": 4096, "d_ff": 10240, "num_heads": 64, "d_kv": 64})
    model = nnx.eval_shape(lambda: T5EncoderModel(config, rngs=nnx.Rngs(0)))
    embedding = model.shared.embedding.get_raw_value()
    assert embedding.shape == (300, 4096) and not hasattr(embedding, "addressable_data")


@pytest.mark.parametrize("value", ["gated-gelu-x", "swiglu", "geglu-gelu", "gated-tanh"])
def test_unsupported_feed_forward_raises(value):
    with pytest.raises(UnsupportedConfigError, match="feed_forward_proj"):
        T5Config.from_dict({"feed_forward_proj": value})


def test_decoder_config_raises():
    with pytest.raises(UnsupportedConfigError, match="is_decoder"):
        T5Config.from_dict({"is_decoder": True})
