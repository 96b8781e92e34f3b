"""--cache_latents: a step on cached latents and embeddings is the step on photos and captions."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from landmark_controlnet.diffusion.pipeline import tokenize
from landmark_controlnet.training import data as input_data
from landmark_controlnet.training.flags import parse_args
from landmark_controlnet.training.latent_cache import Encoders, build_latent_cache
from landmark_controlnet.training.models import (
    controlnet_from_unet,
    controlnet_options,
    load_base_model,
    split_models,
)
from landmark_controlnet.training.step import LossConfig, diffusion_loss
from landmark_controlnet.training.tiny_sd import write_tiny_sd

OPTIONS = input_data.ExampleOptions(64, random_flip=True, proportion_empty_prompts=0.3)
COLUMNS = input_data.Columns()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, hand_build):
    root = tmp_path_factory.mktemp("latents")
    _, builder = hand_build.copy_to(root)
    sd = load_base_model(str(write_tiny_sd(root / "tiny-sd")))
    controlnet = controlnet_from_unet(sd.unet, 0, controlnet_options(jnp.float32))
    # Perturbed: zero-initialised output convolutions would make the ControlNet a no-op. Small random
    # offsets: a large constant one makes its residuals swamp the latents and the text.
    weights, tree = jax.tree_util.tree_flatten(nnx.state(controlnet, nnx.Param))
    keys = jax.random.split(jax.random.PRNGKey(1), len(weights))
    noisy = [w + 0.02 * jax.random.normal(k, w.shape) for w, k in zip(weights, keys, strict=True)]
    nnx.update(controlnet, jax.tree_util.tree_unflatten(tree, noisy))
    graphs, frozen, params = split_models(sd, controlnet)
    frozen["noise_schedule"] = sd.noise_schedule
    raw = COLUMNS.raw(input_data.open_dataset(str(builder)))
    encoders = Encoders(graphs, frozen["vae"], frozen["text_encoder"], jnp.float32, per_device=1)

    def tokens(captions):
        return tokenize(sd.tokenizer, captions)

    cache = build_latent_cache(raw, COLUMNS, OPTIONS, encoders, tokens, root / "cache")
    return {"root": root, "raw": raw, "encoders": encoders, "tokens": tokens, "cache": cache,
            "graphs": graphs, "frozen": frozen, "params": params}  # fmt: skip


def _batch(examples: list[dict]) -> dict[str, jnp.ndarray]:
    return {k: jnp.asarray(np.stack([e[k] for e in examples])) for k in examples[0] if k != "caption"}


def test_a_step_on_cached_latents_has_the_loss_of_the_uncached_step(setup):
    rows = input_data.rows_of(setup["raw"][:])
    for index, row in enumerate(rows):
        row[input_data.ROW_INDEX] = index
    seeds = [np.random.default_rng([5, i]) for i in range(len(rows))]
    draws = [input_data.example_draws(OPTIONS, np.random.default_rng([5, i])) for i in range(len(rows))]
    assert {flip for flip, _ in draws} == {True, False} and {empty for _, empty in draws} == {True, False}

    uncached = [input_data.prepare_example(r, COLUMNS, OPTIONS, g) for r, g in zip(rows, seeds, strict=True)]
    seeds = [np.random.default_rng([5, i]) for i in range(len(rows))]
    cached = [setup["cache"].example(r, COLUMNS, OPTIONS, g) for r, g in zip(rows, seeds, strict=True)]
    plain = _batch(uncached)
    plain["input_ids"] = jnp.asarray(setup["tokens"]([e["caption"] for e in uncached]))
    from_cache = _batch(cached)
    assert "pixel_values" not in from_cache and "input_ids" not in from_cache

    def loss(batch):
        key = jax.random.PRNGKey(3)
        return float(
            jax.jit(diffusion_loss, static_argnums=(4, 5))(
                setup["params"], setup["frozen"], batch, key, setup["graphs"], LossConfig()
            )
        )

    expected = loss(plain)
    assert loss(from_cache) == pytest.approx(expected, rel=1e-5, abs=1e-7)
    # The check can fail: the other flip variant's latents, or other rows' texts, give another loss.
    other_variant = [setup["cache"].moments[i, int(not flip)] for i, (flip, _) in enumerate(draws)]
    swapped = {**from_cache, "latent_moments": jnp.asarray(np.stack(other_variant))}
    assert abs(loss(swapped) - expected) > 1e-3 * expected
    rolled = {**from_cache, "text_embeddings": jnp.roll(from_cache["text_embeddings"], 1, axis=0)}
    assert abs(loss(rolled) - expected) > 1e-4 * expected


def test_a_cache_is_reused_resumed_and_keyed_on_what_it_depends_on(setup, monkeypatch):
    cache = setup["cache"]
    moments = cache.directory / "moments.npy"
    key = json.loads((cache.directory / "key.json").read_text())
    assert key["resolution"] == 64 and key["variants"] == 2
    expected = np.load(moments).copy()
    assert np.abs(expected).sum() > 0

    # A pre-pass killed after its first chunks: the chunk not flagged done is all that is encoded again.
    done = np.load(moments.with_suffix(".done.npy"), mmap_mode="r+")
    done[1:] = False
    done.flush()
    written = np.load(moments, mmap_mode="r+")
    written[setup["encoders"].batch :] = 0
    written.flush()
    encoded = []
    original = Encoders.moments
    monkeypatch.setattr(Encoders, "moments", lambda self, x: encoded.append(len(x)) or original(self, x))
    again = _build(setup, OPTIONS)
    assert again.directory == cache.directory
    rows = len(setup["raw"])
    assert sum(encoded) == 1 + 2 * (rows - setup["encoders"].batch)  # the shape probe, then the rows x 2
    np.testing.assert_array_equal(np.load(moments), expected)

    # A different resolution, or no flip variant, is a different cache.
    other = input_data.ExampleOptions(128, random_flip=False)
    resized = _build(setup, other)
    assert resized.directory != cache.directory
    assert resized.moments.shape[:2] == (rows, 1) and resized.moments.shape[2] == 2 * cache.moments.shape[2]


def _build(setup: dict, options: input_data.ExampleOptions):
    return build_latent_cache(
        setup["raw"], COLUMNS, options, setup["encoders"], setup["tokens"], setup["root"] / "cache"
    )


@pytest.mark.parametrize("flag", ["--streaming", "--inpainting"])
def test_cache_latents_refuses_what_it_cannot_cache(flag, capsys):
    argv = ["--pretrained_model_name_or_path", "m", "--dataset_name", "d", "--cache_latents", flag]
    with pytest.raises(SystemExit):
        parse_args([*argv, "--max_train_steps", "1"])
    assert "--cache_latents" in capsys.readouterr().err
