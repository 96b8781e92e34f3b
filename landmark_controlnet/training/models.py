"""The frozen Stable Diffusion parts and the trainable ControlNet: the project's own NNX models.

The train step is a pure function of weights: each model is split once into its graph (structure,
static) and its weights (a plain nested dict of arrays, `nnx.to_pure_dict`), which is what the step
takes, the optimiser updates and checkpoints hold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.traverse_util import flatten_dict

from conditioners.errors import OptionError
from landmark_controlnet.diffusion import (
    ControlNetConfig,
    ControlNetModel,
    ModelOptions,
    encode_prompt,
    encode_sdxl_prompt,
    from_pretrained,
)
from landmark_controlnet.diffusion.flux_controlnet import FluxControlNetConfig, FluxControlNetModel
from landmark_controlnet.diffusion.flux_pipeline import Flux, encode_flux_prompt, is_flux_folder, load_flux
from landmark_controlnet.diffusion.loading import abstract_pretrained
from landmark_controlnet.diffusion.options import ATTENTION_KERNELS, REMAT_POLICIES
from landmark_controlnet.diffusion.pipeline import StableDiffusion, load_stable_diffusion

# The UNet parts a ControlNet starts from (whatever levels the UNet has, not a fixed four).
COPIED_FROM_UNET = ("conv_in", "time_embedding", "add_embedding", "down_blocks", "mid_block")
LATENT_CHANNELS = 4
FLUX_SAMPLE_SIZE = 128  # FluxPipeline's default latent size: 1024 px


@dataclass(frozen=True)
class Compute:
    """How the step computes: the dtype, each model's remat policy and the attention kernel."""

    dtype: Any = jnp.float32
    unet_remat: str = "none"
    controlnet_remat: str = "none"
    attention: str = "auto"
    scan_layers: bool = True

    @classmethod
    def from_flags(cls, dtype: Any, remat: str, controlnet_remat: str | None, attention: str) -> Compute:
        """Checked: a name that is not a policy or a kernel is a one-line OptionError."""
        for flag, value, allowed in (
            ("--gradient_checkpointing", remat, REMAT_POLICIES),
            ("--controlnet_gradient_checkpointing", controlnet_remat or remat, REMAT_POLICIES),
            ("--attention", attention, ATTENTION_KERNELS),
        ):
            if value not in allowed:
                raise OptionError(f"{flag} {value!r}: one of {', '.join(allowed)}")
        return cls(dtype, remat, controlnet_remat or remat, attention)

    @property
    def frozen(self) -> ModelOptions:
        """The frozen models keep their weights in the compute dtype: they are never updated."""
        return ModelOptions(self.dtype, self.dtype, self.unet_remat, self.attention, self.scan_layers)

    @property
    def trained(self) -> ModelOptions:
        """The ControlNet computes in the compute dtype and keeps float32 master weights."""
        return ModelOptions(self.dtype, jnp.float32, self.controlnet_remat, self.attention, self.scan_layers)


def compute_of(args: Any, dtype: Any) -> Compute:
    """The trainer's flags (--gradient_checkpointing, --controlnet_gradient_checkpointing, --attention)."""
    return Compute.from_flags(
        dtype, args.gradient_checkpointing, args.controlnet_gradient_checkpointing, args.attention
    )


def load_base_model(
    location: str,
    revision: str | None = None,
    compute: Compute = Compute(),
    abstract: bool = False,
    on_host: bool = False,
) -> StableDiffusion:
    """The frozen models with their weights in the compute dtype; `abstract`: their shapes alone,
    from the configs; `on_host`: in host memory, for the trainer to lay out on its mesh."""
    return load_stable_diffusion(
        location, revision=revision, options=compute.frozen, abstract=abstract, on_host=on_host
    )


def native_resolution(base: StableDiffusion | Flux) -> int:
    """The size the base model was trained at: 512 for SD 1.x, 768 for SD 2.x, 1024 for SDXL and FLUX.1
    (FluxPipeline's default: 128 latent pixels)."""
    sample_size = FLUX_SAMPLE_SIZE if isinstance(base, Flux) else base.unet.config.sample_size
    return sample_size * base.vae.config.downscale


def controlnet_options(dtype: jnp.dtype, remat: str = "none", attention: str = "auto") -> ModelOptions:
    """The ControlNet computes in `dtype` and keeps float32 master weights."""
    return Compute(dtype, controlnet_remat=remat, attention=attention).trained


def controlnet_from_unet(unet: Any, seed: int, options: ModelOptions) -> ControlNetModel:
    """A ControlNet shaped like `unet`, its encoder copied from the UNet, the rest freshly initialised
    (in one compiled program: `PretrainedModule.partly_copied`)."""
    # An inpainting UNet takes 9 channels; its ControlNet sees the 4 latent channels only.
    config = ControlNetConfig.from_unet(unet.config, in_channels=LATENT_CHANNELS)
    unet_weights = flatten_dict(nnx.to_pure_dict(nnx.state(unet, nnx.Param)))
    return ControlNetModel.partly_copied(
        config, options, unet_weights, lambda path: str(path[0]).startswith(COPIED_FROM_UNET), seed
    )


def load_controlnet(location: str, revision: str | None, options: ModelOptions) -> ControlNetModel:
    return from_pretrained(ControlNetModel, location, revision=revision, options=options)


# The batch key of each text encoder's token ids.
TOKEN_KEYS = {"text_encoder": "input_ids", "text_encoder_2": "input_ids_2"}


@dataclass(frozen=True)
class Graphs:
    """The structure of every model the step runs (static under jit); weights come separately.
    SDXL adds `text_encoder_2` (with projection)."""

    text_encoder: Any
    vae: Any
    unet: Any
    controlnet: Any
    text_encoder_2: Any = None

    @property
    def is_sdxl(self) -> bool:
        return self.text_encoder_2 is not None

    def merge(self, frozen: dict[str, Any], controlnet_params: Any) -> tuple[Any, Any, Any]:
        """(vae, unet, controlnet) as modules, inside a traced function."""
        return (
            nnx.merge(self.vae, frozen["vae"]),
            nnx.merge(self.unet, frozen["unet"]),
            nnx.merge(self.controlnet, controlnet_params),
        )

    def encode_text(self, frozen: dict[str, Any], token_ids: dict[str, jax.Array]) -> tuple[Any, Any]:
        """(context, pooled) from the token ids by batch key (`TOKEN_KEYS`); pooled is None but for SDXL,
        whose context is both encoders' penultimate states side by side."""
        first = nnx.merge(self.text_encoder, frozen["text_encoder"])
        if not self.is_sdxl:
            return encode_prompt(first, token_ids[TOKEN_KEYS["text_encoder"]]), None
        second = nnx.merge(self.text_encoder_2, frozen["text_encoder_2"])
        return encode_sdxl_prompt(first, second, *(token_ids[key] for key in TOKEN_KEYS.values()))


def token_batch(
    base: StableDiffusion | Flux, captions: list[str], max_sequence_length: int | None = None
) -> dict[str, np.ndarray]:
    """Every text encoder's token ids of `captions`, by batch key; FLUX.1's T5 ids padded to
    `max_sequence_length`."""
    lengths = {} if max_sequence_length is None else {"max_sequence_length": max_sequence_length}
    return {TOKEN_KEYS[name]: ids for name, ids in base.token_ids(captions, **lengths).items()}


def split_models(sd: StableDiffusion, controlnet: ControlNetModel) -> tuple[Graphs, dict[str, Any], Any]:
    """(graphs, frozen weights by model name, the ControlNet's weights), all weights as pure dicts."""
    parts = {**sd.text_models(), "vae": sd.vae, "unet": sd.unet, "controlnet": controlnet}
    graphs, weights = {}, {}
    for name, model in parts.items():
        graphs[name], state = nnx.split(model)
        weights[name] = nnx.to_pure_dict(state)
    controlnet_params = weights.pop("controlnet")
    return Graphs(**graphs), weights, controlnet_params


# -- FLUX.1 --------------------------------------------------------------------------------------


def is_flux_base(location: str, revision: str | None = None) -> bool:
    """Whether the base model is a FLUX.1 pipeline (its model_index.json names one)."""
    return is_flux_folder(location, revision)


def load_flux_base(
    location: str,
    revision: str | None = None,
    compute: Compute = Compute(),
    abstract: bool = False,
    on_host: bool = False,
) -> Flux:
    """FLUX.1's frozen models with their weights in the compute dtype; `abstract`: their shapes alone;
    `on_host`: in host memory."""
    return load_flux(location, revision=revision, options=compute.frozen, abstract=abstract, on_host=on_host)


def flux_controlnet(
    flux: Flux, args: Any, options: ModelOptions, abstract: bool = False
) -> FluxControlNetModel:
    """--controlnet_model_name_or_path's Flux ControlNet, else a new one of --num_double_layers and
    --num_single_layers blocks made from the transformer (diffusers' `FluxControlNetModel.from_transformer`:
    its embedders and first blocks copied, its output layers at zero)."""
    location, revision = args.controlnet_model_name_or_path, args.controlnet_revision
    if location:
        load = abstract_pretrained if abstract else from_pretrained
        return load(FluxControlNetModel, location, revision=revision, options=options)
    layers = {"num_layers": args.num_double_layers, "num_single_layers": args.num_single_layers}
    if abstract:
        config = FluxControlNetConfig(**{**flux.transformer.config.shared(), **layers})
        return FluxControlNetModel.abstract(config, options)
    return FluxControlNetModel.from_transformer(
        flux.transformer, **layers, options=options, rngs=nnx.Rngs(args.seed)
    )


@dataclass(frozen=True)
class FluxEncoderGraphs:
    """The structure of FLUX.1's VAE and text encoders (CLIP, T5), for --cache_latents: `encode_text` as
    `Graphs.encode_text`, giving (T5's prompt embeddings, CLIP's pooled output)."""

    vae: Any
    text_encoder: Any
    text_encoder_2: Any

    def encode_text(self, weights: dict[str, Any], token_ids: dict[str, jax.Array]) -> tuple[Any, Any]:
        clip = nnx.merge(self.text_encoder, weights["text_encoder"])
        t5 = nnx.merge(self.text_encoder_2, weights["text_encoder_2"])
        return encode_flux_prompt(clip, t5, *(token_ids[key] for key in TOKEN_KEYS.values()))


def split_flux_encoders(flux: Flux) -> tuple[FluxEncoderGraphs, Any, dict[str, Any]]:
    """(graphs, the VAE's weights, the text encoders' weights by name), weights as pure dicts."""
    graphs, weights = {}, {}
    for name in ("vae", "text_encoder", "text_encoder_2"):
        graphs[name], state = nnx.split(getattr(flux, name))
        weights[name] = nnx.to_pure_dict(state)
    vae = weights.pop("vae")
    return FluxEncoderGraphs(**graphs), vae, weights


# -- either family ---------------------------------------------------------------------------------


@dataclass
class TrainedModels:
    """What a run trains with, for a Stable Diffusion or a FLUX.1 base model: the graphs and frozen
    inputs of its step (`frozen`: weights and schedule, laid out on the devices), the ControlNet's
    weights, the step's loss and maker (`step.make_train_step` or `flux_step.make_flux_train_step`,
    one signature), and the encoders --cache_latents runs."""

    base: StableDiffusion | Flux
    graphs: Any
    frozen: dict[str, Any]
    params: Any
    loss_config: Any
    loss_fn: Callable
    make_step: Callable
    encoder_graphs: Any
    vae_weights: Any
    text_weights: dict[str, Any]

    @property
    def is_flux(self) -> bool:
        return isinstance(self.base, Flux)

    @property
    def is_sdxl(self) -> bool:
        return not self.is_flux and self.base.is_sdxl


def load_models(
    args: Any, compute: Compute, abstract: bool = False, mark: Callable[[str], None] = lambda _: None
) -> TrainedModels:
    """The base model of --pretrained_model_name_or_path and the ControlNet to train (`abstract`: shapes
    alone); sets --resolution to the base model's own when not given. `mark(phase)` after each model."""
    location, revision = args.pretrained_model_name_or_path, args.revision
    if is_flux_base(location, revision):
        return _flux_models(args, compute, abstract, mark)
    return _sd_models(args, compute, abstract, mark)


def _sd_models(args: Any, compute: Compute, abstract: bool, mark: Callable[[str], None]) -> TrainedModels:
    from .step import LossConfig, diffusion_loss, make_train_step  # step imports this module

    # In host memory: the loop lays the frozen weights out on the mesh, so no chip holds a whole model.
    sd = load_base_model(args.pretrained_model_name_or_path, args.revision, compute, abstract, on_host=True)
    if not abstract:
        check_unet_channels(args, sd)
    args.resolution = args.resolution or native_resolution(sd)
    mark("base model")
    graphs, frozen, params = split_models(sd, sd_controlnet(sd, args, compute.trained, abstract))
    mark("ControlNet")
    text_weights = {name: frozen[name] for name in sd.text_models()}
    return TrainedModels(
        sd, graphs, {**frozen, "noise_schedule": sd.noise_schedule}, params,
        LossConfig(compute.dtype, args.snr_gamma), diffusion_loss, make_train_step,
        graphs, frozen["vae"], text_weights,
    )  # fmt: skip


def check_unet_channels(args: Any, sd: StableDiffusion) -> None:
    """--inpainting and the UNet's input channels must agree; say which way they disagree."""
    if args.inpainting:
        sd.check_inpainting(args.pretrained_model_name_or_path)
    elif sd.is_inpainting:
        raise OptionError(
            f"{args.pretrained_model_name_or_path} is an inpainting model (a 9-channel UNet): "
            "add --inpainting and train on rows with a mask column (the hand_repair builder makes them)"
        )


def sd_controlnet(sd: StableDiffusion, args: Any, options: ModelOptions, abstract: bool = False) -> Any:
    """--controlnet_model_name_or_path's ControlNet, else one made from the UNet (`abstract`: shapes)."""
    location, revision = args.controlnet_model_name_or_path, args.controlnet_revision
    if location:
        if abstract:
            return abstract_pretrained(ControlNetModel, location, revision=revision, options=options)
        return load_controlnet(location, revision, options)
    if abstract:
        config = ControlNetConfig.from_unet(sd.unet.config, in_channels=LATENT_CHANNELS)
        return ControlNetModel.abstract(config, options)
    return controlnet_from_unet(sd.unet, args.seed, options)


def check_flux_flags(args: Any) -> None:
    """FLUX.1 runs train on cached latents and embeddings, and are never inpainting runs."""
    if args.inpainting:
        raise OptionError("--inpainting needs a Stable Diffusion inpainting model, not FLUX.1")
    if not args.cache_latents and not args.dry_run:
        raise OptionError(
            "a FLUX.1 base model needs --cache_latents: its step reads cached T5 and CLIP embeddings and "
            "VAE latents, so neither text encoder (T5-XXL is 4.8 B parameters) sits on the devices"
        )


def _flux_models(args: Any, compute: Compute, abstract: bool, mark: Callable[[str], None]) -> TrainedModels:
    from landmark_controlnet.diffusion.flow_match import FlowMatchSchedule

    from .flux_step import (
        FlowMatchLossConfig,
        flux_ids,
        flux_loss_from_key,
        make_flux_train_step,
        split_flux_models,
    )

    check_flux_flags(args)
    flux = load_flux_base(args.pretrained_model_name_or_path, args.revision, compute, abstract, on_host=True)
    args.resolution = args.resolution or native_resolution(flux)
    mark("base model")
    controlnet = flux_controlnet(flux, args, compute.trained, abstract)
    latent = args.resolution // flux.vae.config.downscale
    schedule = FlowMatchSchedule.from_config(flux.scheduler_config)
    ids = flux_ids(latent, latent, args.max_sequence_length)
    graphs, frozen, params = split_flux_models(flux.transformer, controlnet, schedule, ids)
    mark("ControlNet")
    vae = flux.vae.config
    config = FlowMatchLossConfig(
        compute.dtype, args.weighting_scheme, args.logit_mean, args.logit_std, args.mode_scale,
        args.guidance_scale, args.weight_loss, vae.shift_factor or 0.0, vae.scaling_factor,
    )  # fmt: skip
    encoder_graphs, vae_weights, text_weights = split_flux_encoders(flux)
    return TrainedModels(
        flux, graphs, frozen, params, config, flux_loss_from_key, make_flux_train_step,
        encoder_graphs, vae_weights, text_weights,
    )  # fmt: skip
