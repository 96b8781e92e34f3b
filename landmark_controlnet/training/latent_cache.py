"""--cache_latents: each row's VAE posterior and each caption's text embedding, computed once.

Later steps read them instead of running the VAE encoder and the text encoder; the step's loss is
the same (it samples the cached posterior with the same key). What is stored:
- `moments.npy`: (rows, variants, h, w, 2 x latent channels) float32, the posterior's mean and
  log-variance of the framed photo; variant 1 is the mirrored photo (with --random_flip);
- `text.npy`: (captions, tokens, hidden) float32, one per distinct caption, the empty prompt first;
  SDXL adds `pooled.npy`, (captions, projection) float32, the second encoder's pooled projection;
- `caption_index.npy`: each row's caption in `text.npy`.
A FLUX.1 run stores T5's `prompt_embeds.npy` and CLIP's `pooled_prompt_embeds.npy` instead of the
text files, and `conditioning_moments.npy`, the conditioning image's posterior (encoded from [-1, 1], as
diffusers' train_controlnet_flux.py normalises it; variant 1 re-drawn mirrored), which its step samples.

The folder is named by a hash of everything the values depend on (the dataset's rows, the VAE's
and text encoder's weights, the resolution, the variants), so a changed input never reads stale
values. Arrays are filled chunk by chunk, and a chunk counts as done only after its values are
flushed: a killed pre-pass resumes at the first chunk not done.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from landmark_controlnet.diffusion.pixels import photo_input

from . import data as input_data

log = logging.getLogger("train_flax_controlnet")
CACHE_HOME = Path("~/.cache/landmark-controlnet/latents")
TEXT_FILES = {
    "text_embeddings": "text.npy",
    "text_embeds": "pooled.npy",
    "prompt_embeds": "prompt_embeds.npy",
    "pooled_prompt_embeds": "pooled_prompt_embeds.npy",
}
SD_TEXT_KEYS = ("text_embeddings", "text_embeds")  # the context, and SDXL's pooled projection
FLUX_TEXT_KEYS = ("prompt_embeds", "pooled_prompt_embeds")  # T5's sequence, CLIP's pooled output


@dataclass(frozen=True)
class CacheKey:
    """What the cached values depend on."""

    dataset: str  # a hash of the rows' captions, their count and the data files
    encoders: str  # a hash of the VAE's and text encoder's weights (and so their dtype)
    resolution: int
    variants: int  # 1, or 2 with --random_flip
    model: str | None = None  # "flux" for FLUX.1 runs (which also cache the conditioning latents)
    text_tokens: int | None = None  # FLUX.1: --max_sequence_length, T5's padded length

    @property
    def digest(self) -> str:
        """A hash of the fields that are set (a Stable Diffusion key hashes as before FLUX.1 existed)."""
        fields = {name: value for name, value in asdict(self).items() if value is not None}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def default_cache_root(dataset_name: str) -> Path:
    """Beside a local dataset (a hidden folder: never published), else under ~/.cache."""
    path = Path(dataset_name)
    if path.is_dir():
        return path / ".latent_cache"
    return CACHE_HOME.expanduser() / re.sub(r"[^A-Za-z0-9._-]+", "--", dataset_name)


def weights_digest(*trees: Any) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for tree in trees:
        for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(tree), key=lambda item: str(item[0])):
            value = np.asarray(leaf)
            digest.update(f"{jax.tree_util.keystr(path)}{value.dtype}{value.shape}".encode())
            digest.update(value.tobytes())
    return digest.hexdigest()


def dataset_digest(dataset: Any, captions: list[str]) -> str:
    files = sorted(
        (Path(f["filename"]).name, Path(f["filename"]).stat().st_size) for f in dataset.cache_files
    )
    digest = hashlib.blake2b(json.dumps([len(dataset), files]).encode(), digest_size=16)
    for caption in captions:
        digest.update(caption.encode() + b"\0")
    return digest.hexdigest()


class ChunkedArray:
    """A .npy file filled in chunks of its first axis, with a flag per chunk once it is on disk."""

    def __init__(self, path: Path, shape: tuple[int, ...], chunk: int):
        self.path, self.chunk = path, chunk
        self.flags_path = path.with_suffix(".done.npy")
        chunks = -(-shape[0] // chunk)
        if self.path.exists() and self.flags_path.exists():
            self.values = np.load(path, mmap_mode="r+")
            self.done = np.load(self.flags_path, mmap_mode="r+")
            if self.values.shape == shape and self.done.shape == (chunks,):
                return
        self.values = np.lib.format.open_memmap(path, "w+", np.float32, shape)
        self.done = np.lib.format.open_memmap(self.flags_path, "w+", np.bool_, (chunks,))

    def missing(self) -> list[int]:
        return [int(c) for c in np.flatnonzero(~self.done)]

    def rows(self, chunk: int) -> range:
        return range(chunk * self.chunk, min((chunk + 1) * self.chunk, self.values.shape[0]))

    def write(self, chunk: int, values: np.ndarray) -> None:
        self.values[self.rows(chunk).start : self.rows(chunk).stop] = values
        self.values.flush()
        self.done[chunk] = True
        self.done.flush()

    @property
    def complete(self) -> bool:
        return bool(self.done.all())


class LatentCache:
    """The cached values of one dataset under one key; `example` is the loader's `prepare`."""

    def __init__(
        self,
        directory: Path,
        moments: np.ndarray,
        text: dict[str, np.ndarray],
        caption_index: np.ndarray,
        conditioning_moments: np.ndarray | None = None,
    ):
        self.directory = directory
        self.moments = moments
        self.text = text  # by batch key: `text_embeddings` (and SDXL's `text_embeds`), or FLUX.1's
        self.caption_index = caption_index
        self.conditioning_moments = conditioning_moments  # FLUX.1 runs: the conditioning's posterior

    def example(
        self, row: dict[str, Any], columns: input_data.Columns, options: input_data.ExampleOptions, rng
    ) -> dict[str, Any]:
        """What `prepare_example` gives for this row and generator, with the encoders' outputs
        in place of the photo and the caption."""
        flip, empty = input_data.example_draws(options, rng)
        index = row[input_data.ROW_INDEX]
        caption = 0 if empty else self.caption_index[index]
        if self.conditioning_moments is None:
            conditioning = input_data.prepare_conditioning(row, columns, options, flip)
        else:
            conditioning = {
                "conditioning_latent_moments": np.array(self.conditioning_moments[index, int(flip)])
            }
        return {
            "latent_moments": np.array(self.moments[index, int(flip)]),
            **conditioning,
            **{key: np.array(values[caption]) for key, values in self.text.items()},
        }


@dataclass
class Encoders:
    """The frozen VAE and text encoder(s) as pure functions of their weights, run data-parallel
    over this host's devices (each host fills its own cache)."""

    graphs: Any
    vae_weights: Any
    text_weights: dict[str, Any]  # by model name: `text_encoder`, and SDXL's (or FLUX.1's) `text_encoder_2`
    dtype: Any
    per_device: int = 8  # rows (or captions) per device in one batch: the unit a resume skips by
    text_keys: tuple[str, str] = SD_TEXT_KEYS  # the batch keys of `encode_text`'s (context, pooled)
    conditioning_latents: bool = False  # FLUX.1: also cache the conditioning images' posteriors

    def __post_init__(self) -> None:
        self.mesh = Mesh(np.array(jax.local_devices()), ("data",))
        replicated = NamedSharding(self.mesh, P())
        self.split = NamedSharding(self.mesh, P("data"))
        self.vae_weights = jax.device_put(self.vae_weights, replicated)
        self.text_weights = jax.device_put(self.text_weights, replicated)
        graphs, dtype = self.graphs, self.dtype

        def moments(weights: Any, photos: jax.Array) -> jax.Array:
            posterior = nnx.merge(graphs.vae, weights).encode(photo_input(photos, dtype))
            return jnp.concatenate([posterior.mean, posterior.logvar], axis=-1).astype(jnp.float32)

        context_key, pooled_key = self.text_keys

        def text(weights: Any, token_ids: dict[str, jax.Array]) -> dict[str, jax.Array]:
            context, pooled = graphs.encode_text(weights, token_ids)
            embedded = {context_key: context.astype(jnp.float32)}
            if pooled is not None:
                embedded[pooled_key] = pooled.astype(jnp.float32)
            return embedded

        self._moments, self._text = jax.jit(moments), jax.jit(text)

    @property
    def batch(self) -> int:
        return self.per_device * len(self.mesh.devices)

    def moments(self, photos: np.ndarray) -> np.ndarray:
        """The posteriors' (mean, log-variance) of framed uint8 photos, as the train step encodes them."""
        return self._run(self._moments, self.vae_weights, photos)

    def text(self, token_ids: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._run(self._text, self.text_weights, token_ids)

    def _run(self, function: Callable, weights: Any, inputs: Any) -> Any:
        """`function` over `inputs` (an array or a dict of arrays of equal length) in batches."""
        count = len(jax.tree_util.tree_leaves(inputs)[0])
        outputs = []
        for start in range(0, count, self.batch):
            span = slice(start, min(start + self.batch, count))
            padded = jax.tree_util.tree_map(lambda x, span=span: self._padded(x[span]), inputs)
            output = function(weights, jax.device_put(padded, self.split))
            outputs.append(jax.tree_util.tree_map(lambda x, n=span.stop - start: np.asarray(x)[:n], output))
        return jax.tree_util.tree_map(lambda *parts: np.concatenate(parts), *outputs)

    def _padded(self, part: np.ndarray) -> np.ndarray:
        """A short part padded with its last row: one compiled shape."""
        return np.concatenate([part, np.repeat(part[-1:], self.batch - len(part), axis=0)])


def build_latent_cache(
    dataset: Any,
    columns: input_data.Columns,
    options: input_data.ExampleOptions,
    encoders: Encoders,
    tokenize: Callable[[list[str]], dict[str, np.ndarray]],
    root: Path,
    threads: int = 4,
) -> LatentCache:
    """Fill (or finish) the cache of `dataset` (raw: images as bytes) under `root`."""
    captions = [input_data.caption_text(c) for c in dataset[columns.caption]]
    distinct = [""] + sorted(set(captions) - {""})
    variants = 2 if options.random_flip else 1
    shapes = {name: value.shape[1:] for name, value in encoders.text(tokenize([""])).items()}
    flux = ("flux", shapes[FLUX_TEXT_KEYS[0]][0]) if encoders.conditioning_latents else ()
    key = CacheKey(
        dataset_digest(dataset, captions),
        weights_digest(encoders.vae_weights, encoders.text_weights),
        options.resolution,
        variants,
        *flux,
    )
    directory = root / key.digest
    if jax.process_count() > 1:  # hosts need not share a disk: each fills and reads its own
        directory = directory / f"host-{jax.process_index()}"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "key.json").write_text(json.dumps(asdict(key), indent=1))
    caption_index = _caption_index(captions, distinct)
    np.save(directory / "caption_index.npy", caption_index)

    text = _cache_text(directory, encoders, tokenize, distinct, shapes)
    pictures = _Pictures(dataset, encoders, options, variants, threads)
    moments = pictures.cache(directory / "moments.npy", "caching latents", _photo_variants, columns)
    conditioning = None
    if encoders.conditioning_latents:
        path = directory / "conditioning_moments.npy"
        conditioning = pictures.cache(path, "caching conditioning latents", _conditioning_variants, columns)
    log.info("latent cache: %s", directory)
    return LatentCache(directory, moments, text, caption_index, conditioning)


def _cache_text(
    directory: Path,
    encoders: Encoders,
    tokenize: Callable[[list[str]], dict[str, np.ndarray]],
    distinct: list[str],
    shapes: dict[str, tuple[int, ...]],
) -> dict[str, np.ndarray]:
    """Each distinct caption's embeddings, by batch key (read-only maps of the files)."""
    text = {
        name: ChunkedArray(directory / TEXT_FILES[name], (len(distinct), *shape), encoders.batch)
        for name, shape in shapes.items()
    }
    chunks = next(iter(text.values()))
    for chunk in _progress(chunks, "caching text embeddings"):
        embedded = encoders.text(tokenize([distinct[i] for i in chunks.rows(chunk)]))
        for name, values in embedded.items():
            text[name].write(chunk, values)
    return {name: np.load(array.path, mmap_mode="r") for name, array in text.items()}


@dataclass
class _Pictures:
    """Encodes one picture of every row (and its mirrored variant) into a posterior's moments."""

    dataset: Any
    encoders: Encoders
    options: input_data.ExampleOptions
    variants: int
    threads: int

    def cache(self, path: Path, description: str, pixels_of: Callable, columns: input_data.Columns):
        """(rows, variants, h, w, 2 x latent channels) of `pixels_of(row, columns, options, variants)`."""
        resolution = self.options.resolution
        first = self.encoders.moments(np.zeros((1, resolution, resolution, 3), np.uint8))
        shape = (len(self.dataset), self.variants, *first.shape[1:])
        moments = ChunkedArray(path, shape, self.encoders.batch)
        with ThreadPoolExecutor(self.threads, thread_name_prefix="cache-decode") as pool:
            for chunk in _progress(moments, description):
                span = moments.rows(chunk)
                rows = input_data.rows_of(self.dataset[span.start : span.stop])
                pixels = pool.map(lambda row: pixels_of(row, columns, self.options, self.variants), rows)
                values = self.encoders.moments(np.concatenate(list(pixels)))
                moments.write(chunk, values.reshape(len(rows), self.variants, *values.shape[1:]))
        return np.load(moments.path, mmap_mode="r")


def _caption_index(captions: list[str], distinct: list[str]) -> np.ndarray:
    position = {caption: i for i, caption in enumerate(distinct)}
    return np.array([position[c] for c in captions], np.int32)


def _photo_variants(
    row: dict[str, Any], columns: input_data.Columns, options: input_data.ExampleOptions, variants: int
) -> np.ndarray:
    photo = input_data.decode(row[columns.image], input_data.row_name(row))
    return np.stack([input_data.photo_values(photo, options.resolution, bool(v)) for v in range(variants)])


def _conditioning_variants(
    row: dict[str, Any], columns: input_data.Columns, options: input_data.ExampleOptions, variants: int
) -> np.ndarray:
    """The conditioning image as training frames it, and re-drawn mirrored: (variants, H, W, 3) uint8."""
    return np.stack(
        [
            input_data.prepare_conditioning(row, columns, options, bool(v))["conditioning_pixel_values"]
            for v in range(variants)
        ]
    )


def _progress(array: ChunkedArray, description: str) -> Iterator[int]:
    missing = array.missing()
    disabled = not missing or jax.process_index() != 0
    yield from tqdm(missing, desc=description, unit="chunk", disable=disabled)
