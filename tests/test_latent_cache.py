"""--cache_latents: a step on cached latents and embeddings is the step on photos and captions."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from builders.rows import open_dataset
from landmark_controlnet.training import data as input_data
from landmark_controlnet.training.flags import parse_args
from landmark_controlnet.training.latent_cache import Encoders, build_latent_cache
from landmark_controlnet.training.models import (
    controlnet_from_unet,
    controlnet_options,
    load_base_model,
    split_models,
    token_batch,
)
from landmark_controlnet.training.step import LossConfig, diffusion_loss
from landmark_controlnet.training.tiny_sd import write_tiny_sd
from tests.tiny_models import perturb

COLUMNS = input_data.Columns()


def _setup(root, hand_build, sdxl: bool) -> dict:
    _, builder = hand_build.copy_to(root)
    sd = load_base_model(str(write_tiny_sd(root / "tiny-sd", sdxl=sdxl)))
    controlnet = controlnet_from_unet(sd.unet, 0, controlnet_options(jnp.float32))
    # Perturbed: zero-initialised output convolutions would make the ControlNet a no-op. Small random
    # offsets: a large constant one makes its residuals swamp the latents and the text.
    perturb(controlnet, seed=1, scale=0.02)
    graphs, frozen, params = split_models(sd, controlnet)
    frozen["noise_schedule"] = sd.noise_schedule
    raw = COLUMNS.raw(open_dataset(str(builder)))
    text_weights = {name: frozen[name] for name in sd.text_models()}
    encoders = Encoders(graphs, frozen["vae"], text_weights, jnp.float32, per_device=1)

    def tokens(captions):
        return token_batch(sd, captions)

    options = input_data.ExampleOptions(64, random_flip=True, proportion_empty_prompts=0.3, size_ids=sdxl)
    cache = build_latent_cache(raw, COLUMNS, options, encoders, tokens, root / "cache")
    return {"root": root, "raw": raw, "encoders": encoders, "tokens": tokens, "cache": cache,
            "graphs": graphs, "frozen": frozen, "params": params, "options": options}  # fmt: skip


@pytest.fixture(scope="module")
def setup(tmp_path_factory, hand_build):
    return _setup(tmp_path_factory.mktemp("latents"), hand_build, sdxl=False)


@pytest.fixture(scope="module")
def sdxl_setup(tmp_path_factory, hand_build):
    return _setup(tmp_path_factory.mktemp("sdxl_latents"), hand_build, sdxl=True)


def _batch(examples: list[dict]) -> dict[str, jnp.ndarray]:
    return {k: jnp.asarray(np.stack([e[k] for e in examples])) for k in examples[0] if k != "caption"}


def _cached_and_uncached(setup: dict) -> tuple[dict, dict, list]:
    """Batches of every row made twice, from photos and captions and from the cache, with the same
    per-row generators (so the same flips and empty prompts)."""
    options = setup["options"]
    rows = input_data.rows_of(setup["raw"][:])
    for index, row in enumerate(rows):
        row[input_data.ROW_INDEX] = index
    draws = [input_data.example_draws(options, _rng(i)) for i in range(len(rows))]
    assert {flip for flip, _ in draws} == {True, False} and {empty for _, empty in draws} == {True, False}
    uncached = [input_data.prepare_example(r, COLUMNS, options, _rng(i)) for i, r in enumerate(rows)]
    cached = [setup["cache"].example(r, COLUMNS, options, _rng(i)) for i, r in enumerate(rows)]
    plain = _batch(uncached)
    plain.update({k: jnp.asarray(v) for k, v in setup["tokens"]([e["caption"] for e in uncached]).items()})
    return plain, _batch(cached), draws


def _rng(row: int) -> np.random.Generator:
    return np.random.default_rng([5, row])


def _loss(setup: dict, batch: dict) -> float:
    key = jax.random.PRNGKey(3)
    step_loss = jax.jit(diffusion_loss, static_argnums=(4, 5))
    return float(step_loss(setup["params"], setup["frozen"], batch, key, setup["graphs"], LossConfig()))


def test_a_step_on_cached_latents_has_the_loss_of_the_uncached_step(setup):
    plain, from_cache, draws = _cached_and_uncached(setup)
    assert "pixel_values" not in from_cache and "input_ids" not in from_cache
    expected = _loss(setup, plain)
    assert _loss(setup, from_cache) == pytest.approx(expected, rel=1e-5, abs=1e-7)
    # The check can fail: the other flip variant's latents, or other rows' texts, give another loss.
    other_variant = [setup["cache"].moments[i, int(not flip)] for i, (flip, _) in enumerate(draws)]
    swapped = {**from_cache, "latent_moments": jnp.asarray(np.stack(other_variant))}
    assert abs(_loss(setup, swapped) - expected) > 1e-3 * expected
    rolled = {**from_cache, "text_embeddings": jnp.roll(from_cache["text_embeddings"], 1, axis=0)}
    assert abs(_loss(setup, rolled) - expected) > 1e-4 * expected


def test_an_sdxl_cache_holds_the_pooled_text_and_gives_the_uncached_loss(sdxl_setup):
    plain, from_cache, _ = _cached_and_uncached(sdxl_setup)
    assert (sdxl_setup["cache"].directory / "pooled.npy").exists()
    assert "input_ids_2" in plain and "text_embeds" in from_cache
    np.testing.assert_array_equal(plain["time_ids"], from_cache["time_ids"])
    expected = _loss(sdxl_setup, plain)
    assert _loss(sdxl_setup, from_cache) == pytest.approx(expected, rel=1e-5, abs=1e-7)
    rolled = {**from_cache, "text_embeds": jnp.roll(from_cache["text_embeds"], 1, axis=0)}
    assert abs(_loss(sdxl_setup, rolled) - expected) > 1e-5 * expected


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
    again = _build(setup, setup["options"])
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
