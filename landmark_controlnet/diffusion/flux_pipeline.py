"""A FLUX.1 pipeline folder as the project's models, and Flux ControlNet-guided sampling.

    flux = load_flux("black-forest-labs/FLUX.1-dev")
    controlnet = from_pretrained(FluxControlNetModel, "out/controlnet")
    generator = FluxControlNetGenerator(flux, nnx.graphdef(controlnet), steps=28, guidance_scale=3.5)
    images = generator(nnx.to_pure_dict(nnx.state(controlnet)), ["a hand"], conditioning, seed=0)

The folder is what diffusers' FluxPipeline writes (`model_index.json`, `transformer/`, `vae/`,
`text_encoder/` + `tokenizer/` (CLIP), `text_encoder_2/` + `tokenizer_2/` (T5), `scheduler/`), local or a
Hub repo id. Sampling follows diffusers' FluxControlNetPipeline (InstantX-style ControlNets, which take
the conditioning image's VAE latents): the prompt's CLIP pooled output and T5 sequence, latents packed
in 2x2 patches, the flow-match Euler steps shifted by the image size, the guidance scale given to a
guidance-distilled transformer (no classifier-free guidance), the ControlNet's residuals added.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Unpack

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from conditioners.errors import OptionError

from .clip import CLIPTextModel
from .flow_match import FlowMatchEulerSampler, FlowMatchPlan
from .flux import FluxTransformer2DModel
from .loading import (
    MissingFileError,
    PipelineLoad,
    component_loader,
    index_says,
    is_flux,
    open_folder,
)
from .pipeline import shared_parts, tokenize
from .pixels import photo_input
from .t5 import T5EncoderModel, encode_t5_prompt
from .vae import AutoencoderKL

Array = jax.Array

T5_TOKENIZER_FILES = ("tokenizer.json", "spiece.model")  # either one makes a tokenizer
OPTIONAL_T5_TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json")
MAX_SEQUENCE_LENGTH = 512  # FLUX.1-dev's (schnell uses 256)
DEFAULT_GUIDANCE = 3.5  # FluxControlNetPipeline's guidance_scale
PATCH = 2  # latents are packed in 2x2 patches
NO_FLUX_NEGATIVE_PROMPT = (
    "--negative-prompt: a FLUX.1 base model takes no negative prompt (its guidance is distilled, "
    "not classifier-free); leave it empty"
)


@dataclass
class Flux:
    """The frozen parts of a FLUX.1 pipeline and its scheduler's config."""

    tokenizer: Any
    text_encoder: CLIPTextModel
    tokenizer_2: Any
    text_encoder_2: T5EncoderModel
    vae: AutoencoderKL
    transformer: FluxTransformer2DModel
    scheduler_config: dict[str, Any] = field(default_factory=dict)

    def frozen_models(self) -> dict[str, nnx.Module]:
        """The models by their folder name."""
        return {
            "text_encoder": self.text_encoder,
            "text_encoder_2": self.text_encoder_2,
            "vae": self.vae,
            "transformer": self.transformer,
        }

    def token_ids(self, prompts: list[str], max_sequence_length: int = MAX_SEQUENCE_LENGTH) -> dict:
        """CLIP's ids (77, as trained) and T5's, padded to `max_sequence_length`, by encoder folder."""
        t5_ids = self.tokenizer_2(
            prompts,
            max_length=max_sequence_length,
            padding="max_length",
            truncation=True,
            return_tensors="np",
        ).input_ids
        return {"text_encoder": tokenize(self.tokenizer, prompts), "text_encoder_2": t5_ids.astype(np.int32)}

    @property
    def sampler(self) -> FlowMatchEulerSampler:
        return FlowMatchEulerSampler.from_config(self.scheduler_config)


def is_flux_folder(
    location: str | os.PathLike, revision: str | None = None, token: str | bool | None = None
) -> bool:
    """Whether `location`'s model_index.json names a Flux pipeline (False without one)."""
    return index_says(is_flux, location, revision, token)


def load_flux(
    location: str | os.PathLike,
    **arguments: Unpack[PipelineLoad],
) -> Flux:
    """Tokenizers, text encoders, VAE, transformer and scheduler config of a FLUX.1 pipeline folder or
    repo, each model filled one tensor at a time (`loading.from_pretrained`).

    `abstract=True` reads the configs alone: the models hold ShapeDtypeStructs (sizing, `--dry_run`)."""
    load = component_loader(**arguments)
    revision, token = arguments.get("revision"), arguments.get("token")
    return Flux(
        **shared_parts(location, load, revision, token),
        tokenizer_2=load_t5_tokenizer(location, revision=revision, token=token),
        text_encoder_2=load(T5EncoderModel, location, subfolder="text_encoder_2"),
        transformer=load(FluxTransformer2DModel, location, subfolder="transformer"),
    )


def load_t5_tokenizer(
    location: str | os.PathLike,
    subfolder: str = "tokenizer_2",
    revision: str | None = None,
    token: str | bool | None = None,
):
    """transformers' T5TokenizerFast from a pipeline's tokenizer_2 folder (its files only, no remote code)."""
    from transformers import T5TokenizerFast

    folder = open_folder(location, subfolder, revision, token)
    fetched = {name: folder.fetch(name) for name in (*T5_TOKENIZER_FILES, *OPTIONAL_T5_TOKENIZER_FILES)}
    present = [fetched[name] for name in T5_TOKENIZER_FILES if fetched[name] is not None]
    if not present:
        raise MissingFileError(
            f"{folder.describe()}: neither {' nor '.join(T5_TOKENIZER_FILES)} found (no T5 tokenizer there)"
        )
    return T5TokenizerFast.from_pretrained(str(present[0].parent))


# -- prompts and latents -----------------------------------------------------------------------------


def encode_flux_prompt(
    clip: CLIPTextModel, t5: T5EncoderModel, clip_ids: Array, t5_ids: Array
) -> tuple[Array, Array]:
    """(prompt_embeds, pooled_prompt_embeds): T5's last hidden state (batch, tokens, d_model), the
    transformer's context, and CLIP's pooled output (batch, hidden), its conditioning vector."""
    return encode_t5_prompt(t5, t5_ids), clip(clip_ids).pooled_output


def text_ids(tokens: int) -> Array:
    """The text tokens' position ids: all zeros, (tokens, 3)."""
    return jnp.zeros((tokens, 3), jnp.float32)


def latent_image_ids(rows: int, cols: int) -> Array:
    """The position id [0, row, col] of each packed token, row-major, (rows * cols, 3)."""
    grid = jnp.stack(jnp.meshgrid(jnp.arange(rows), jnp.arange(cols), indexing="ij"), axis=-1)
    return jnp.concatenate([jnp.zeros((rows, cols, 1)), grid], axis=-1).reshape(-1, 3).astype(jnp.float32)


def pack_latents(latents: Array) -> Array:
    """(B, h, w, C) latents -> (B, h/2 * w/2, 4C) tokens, each 2x2 patch's channels ordered
    (channel, row, column) as diffusers packs them."""
    batch, height, width, channels = latents.shape
    patches = latents.reshape(batch, height // PATCH, PATCH, width // PATCH, PATCH, channels)
    patches = patches.transpose(0, 1, 3, 5, 2, 4)
    return patches.reshape(batch, (height // PATCH) * (width // PATCH), channels * PATCH * PATCH)


def unpack_latents(tokens: Array, height: int, width: int) -> Array:
    """The inverse of `pack_latents`: (B, h/2 * w/2, 4C) -> (B, h, w, C) for latent size (h, w)."""
    batch, _, packed = tokens.shape
    channels = packed // (PATCH * PATCH)
    patches = tokens.reshape(batch, height // PATCH, width // PATCH, channels, PATCH, PATCH)
    return patches.transpose(0, 1, 4, 2, 5, 3).reshape(batch, height, width, channels)


def to_uint8(decoded: Array) -> Array:
    """VAE output in [-1, 1] -> 8-bit RGB, rounded as diffusers' image processor does."""
    return ((decoded.astype(jnp.float32) / 2 + 0.5).clip(0, 1) * 255).round().astype(jnp.uint8)


# -- sampling ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FluxInputs:
    """What every denoising step of one call sees (a pytree)."""

    prompt_embeds: Array
    pooled: Array
    txt_ids: Array
    img_ids: Array
    control: Array
    strength: Array
    guidance: Array
    mode: Array | None


jax.tree_util.register_dataclass(
    FluxInputs,
    data_fields=["prompt_embeds", "pooled", "txt_ids", "img_ids", "control", "strength", "guidance", "mode"],
    meta_fields=[],
)


class FluxControlNetGenerator:
    """Text-to-image with a FLUX.1 transformer and a Flux ControlNet (diffusers' FluxControlNetPipeline).

    The prompt and the conditioning image are encoded by one jitted function, each Euler step is one
    jitted function (compiled once per batch shape), and the decoder a third. The ControlNet's
    parameters come with each call (training updates them); the frozen models' are held. Returns
    (B, H, W, 3) uint8 at the conditioning images' size; H and W must be multiples of 16.

    The conditioning latents are the VAE posterior's mode: diffusers' pipeline draws a sample from it
    with the call's generator, which differs by the posterior's spread (small for FLUX.1's VAE).
    """

    def __init__(
        self,
        flux: Flux,
        controlnet_graph: Any,
        steps: int = 28,
        guidance_scale: float = DEFAULT_GUIDANCE,
        max_sequence_length: int = MAX_SEQUENCE_LENGTH,
    ):
        self.flux = flux
        self.steps = steps
        self.guidance_scale = guidance_scale
        self.max_sequence_length = max_sequence_length
        self.sampler = flux.sampler
        split = {name: nnx.split(model) for name, model in flux.frozen_models().items()}
        self._graphs = {name: graph for name, (graph, _) in split.items()} | {"controlnet": controlnet_graph}
        self._frozen = {name: state for name, (_, state) in split.items()}
        self._prepare = jax.jit(self._prepare_inputs)
        self._step = jax.jit(self._denoise_step)
        self._decode = jax.jit(self._decode_latents, static_argnums=(2, 3))

    def __call__(
        self,
        controlnet_params: Any,
        prompts: list[str],
        conditioning: np.ndarray,
        *args,
        negative_prompts: list[str] | None = None,
        **kwargs,
    ) -> np.ndarray:
        """(B, H, W, 3) uint8 images: `latents` with the same arguments, decoded. Called as
        `pipeline.ControlNetGenerator` is, but `negative_prompts` must be empty (OptionError)."""
        if negative_prompts and any(negative_prompts):
            raise OptionError(NO_FLUX_NEGATIVE_PROMPT)
        latents = self.latents(controlnet_params, prompts, conditioning, *args, **kwargs)
        height, width = conditioning.shape[1:3]
        scale = self.flux.vae.config.downscale
        return np.asarray(self._decode(self._frozen["vae"], latents, height // scale, width // scale))

    def latents(
        self,
        controlnet_params: Any,
        prompts: list[str],
        conditioning: np.ndarray,
        seed: int = 0,
        strength: float = 1.0,
        control_mode: int | None = None,
        noise: np.ndarray | None = None,
    ) -> Array:
        """The packed latents after the last step, (B, tokens, 64), before decoding. `conditioning` (B, H,
        W, 3) uint8; `strength` is diffusers' controlnet_conditioning_scale (0 leaves the transformer
        alone); `control_mode` a union ControlNet's mode. `noise` (B, H/8, W/8, 16) replaces the seed's
        initial latents."""
        latent_shape = self._latent_shape(prompts, conditioning)
        ids = self.flux.token_ids(list(prompts), self.max_sequence_length)
        mode = None if control_mode is None else jnp.full((len(prompts), 1), control_mode, jnp.int32)
        inputs = self._prepare(
            self._frozen,
            jax.tree.map(jnp.asarray, ids),
            photo_input(conditioning),  # the VAE encodes it: [-1, 1], as diffusers' image processor
            jnp.float32(strength),
            jnp.float32(self.guidance_scale),
            mode,
        )
        if noise is None:
            noise = jax.random.normal(jax.random.PRNGKey(seed), latent_shape)
        elif noise.shape != latent_shape:
            raise ValueError(f"noise is {noise.shape}, not {latent_shape}")
        latents = pack_latents(jnp.asarray(noise, jnp.float32))
        plan = self.sampler.flux_plan(self.steps, latents.shape[1])  # shifted by the image size
        for index in range(self.steps):
            latents = self._step(self._frozen, controlnet_params, plan, jnp.int32(index), latents, inputs)
        return latents

    def _latent_shape(self, prompts: list[str], conditioning: np.ndarray) -> tuple[int, int, int, int]:
        """(B, H/8, W/8, 16), once the sizes are checked: one prompt per image, whole 2x2 patches."""
        batch, height, width = conditioning.shape[:3]
        multiple = self.flux.vae.config.downscale * PATCH
        if height % multiple or width % multiple:
            raise ValueError(
                f"conditioning images are {height}x{width}: both must be multiples of {multiple}"
            )
        if len(prompts) != batch:
            raise ValueError(f"{len(prompts)} prompts for {batch} conditioning images")
        scale = self.flux.vae.config.downscale
        return batch, height // scale, width // scale, self.flux.vae.config.latent_channels

    def _model(self, frozen: dict, name: str) -> nnx.Module:
        return nnx.merge(self._graphs[name], frozen[name])

    def _prepare_inputs(self, frozen, ids, pixels, strength, guidance, mode) -> FluxInputs:
        """The prompts' embeddings and the conditioning images' packed latents, once per call."""
        vae = self._model(frozen, "vae")
        embeds, pooled = encode_flux_prompt(
            self._model(frozen, "text_encoder"),
            self._model(frozen, "text_encoder_2"),
            ids["text_encoder"],
            ids["text_encoder_2"],
        )
        latents = vae.to_latents(vae.encode(pixels))
        rows, cols = latents.shape[1] // PATCH, latents.shape[2] // PATCH
        return FluxInputs(
            prompt_embeds=embeds,
            pooled=pooled,
            txt_ids=text_ids(embeds.shape[1]),
            img_ids=latent_image_ids(rows, cols),
            control=pack_latents(latents),
            strength=strength,
            guidance=guidance,
            mode=mode,
        )

    def _denoise_step(
        self, frozen, controlnet_params, plan: FlowMatchPlan, index: Array, latents: Array, inputs: FluxInputs
    ) -> Array:
        """One Euler step: the ControlNet's residuals, the transformer's velocity, x + dsigma v."""
        transformer = self._model(frozen, "transformer")
        controlnet = self._model({"controlnet": controlnet_params}, "controlnet")
        timestep = jnp.asarray(plan.timesteps, jnp.float32)[index] / 1000  # as diffusers divides it
        common = dict(
            encoder_hidden_states=inputs.prompt_embeds,
            pooled_projections=inputs.pooled,
            timestep=timestep,
            img_ids=inputs.img_ids,
            txt_ids=inputs.txt_ids,
        )
        residuals = controlnet(
            latents,
            inputs.control,
            guidance=_guidance(controlnet, inputs.guidance),
            controlnet_mode=inputs.mode,
            conditioning_scale=inputs.strength,
            **common,
        )
        velocity = transformer(
            latents,
            guidance=_guidance(transformer, inputs.guidance),
            controlnet_block_samples=residuals.controlnet_block_samples,
            controlnet_single_block_samples=residuals.controlnet_single_block_samples,
            **common,
        )
        return plan.step(None, velocity, index, latents)[0]

    def _decode_latents(self, vae_state, latents: Array, height: int, width: int) -> Array:
        vae = self._model({"vae": vae_state}, "vae")
        return to_uint8(vae.decode(vae.from_latents(unpack_latents(latents, height, width))))


def _guidance(model: nnx.Module, scale: Array) -> Array | None:
    """The guidance scale for a guidance-distilled model (FLUX.1-dev and its ControlNets), else None."""
    return scale if model.config.guidance_embeds else None


# -- the model card ----------------------------------------------------------------------------------


def flux_model_card_use(base_model: str, size: int = 1024) -> list[str]:
    """The model card's usage lines: the exported ControlNet with diffusers' FluxControlNetPipeline over
    `base_model`, in bfloat16 on CUDA (FLUX.1's dtype), at `size` pixels."""
    return [
        "```python",
        "import torch",
        "from diffusers import FluxControlNetModel, FluxControlNetPipeline",
        "from diffusers.utils import load_image",
        "controlnet = FluxControlNetModel.from_pretrained(PATH_OR_REPO, torch_dtype=torch.bfloat16)",
        "pipe = FluxControlNetPipeline.from_pretrained(",
        f'    "{base_model}", controlnet=controlnet, torch_dtype=torch.bfloat16',
        ').to("cuda")',
        f"image = load_image(CONDITIONING_IMAGE).resize(({size}, {size}))  # a landmark drawing",
        "pipe(",
        f"    PROMPT, control_image=image, height={size}, width={size}, controlnet_conditioning_scale=0.7,",
        f"    num_inference_steps=28, guidance_scale={DEFAULT_GUIDANCE},",
        ').images[0].save("out.png")',
        "```",
        "",
    ]
