"""The frozen Stable Diffusion parts and the trainable ControlNet: the project's own NNX models.

The train step is a pure function of weights: each model is split once into its graph (structure,
static) and its weights (a plain nested dict of arrays, `nnx.to_pure_dict`), which is what the step
takes, the optimiser updates and checkpoints hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.traverse_util import flatten_dict, unflatten_dict

from conditioners.errors import OptionError
from landmark_controlnet.diffusion import (
    ControlNetConfig,
    ControlNetModel,
    ModelOptions,
    encode_prompt,
    encode_sdxl_prompt,
    from_pretrained,
)
from landmark_controlnet.diffusion.options import ATTENTION_KERNELS, REMAT_POLICIES
from landmark_controlnet.diffusion.pipeline import StableDiffusion, load_stable_diffusion
from landmark_controlnet.diffusion.pretrained import InitKeys

# The UNet parts a ControlNet starts from (whatever levels the UNet has, not a fixed four).
COPIED_FROM_UNET = ("conv_in", "time_embedding", "add_embedding", "down_blocks", "mid_block")
LATENT_CHANNELS = 4


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
) -> StableDiffusion:
    """The frozen models with their weights in the compute dtype; `abstract`: their shapes alone,
    from the configs."""
    return load_stable_diffusion(location, revision=revision, options=compute.frozen, abstract=abstract)


def native_resolution(sd: StableDiffusion) -> int:
    """The size the base model was trained at: 512 for SD 1.x, 768 for SD 2.x, 1024 for SDXL."""
    return sd.unet.config.sample_size * sd.vae.config.downscale


def controlnet_options(dtype: jnp.dtype, remat: str = "none", attention: str = "auto") -> ModelOptions:
    """The ControlNet computes in `dtype` and keeps float32 master weights."""
    return Compute(dtype, controlnet_remat=remat, attention=attention).trained


def controlnet_from_unet(unet: Any, seed: int, options: ModelOptions) -> ControlNetModel:
    """A ControlNet shaped like `unet`, its encoder copied from the UNet, the rest freshly initialised.

    Only the fresh weights are initialised, in one compiled program: initialising each weight eagerly
    compiled one program per shape, and most of them would be overwritten by the UNet's anyway."""
    # An inpainting UNet takes 9 channels; its ControlNet sees the 4 latent channels only.
    config = ControlNetConfig.from_unet(unet.config, in_channels=LATENT_CHANNELS)
    graphdef, abstract = nnx.split(ControlNetModel.abstract(config, options))
    wanted = flatten_dict(nnx.to_pure_dict(abstract))
    unet_weights = flatten_dict(nnx.to_pure_dict(nnx.state(unet, nnx.Param)))
    copied = {
        key: jnp.asarray(unet_weights[key], value.dtype)
        for key, value in wanted.items()
        if str(key[0]).startswith(COPIED_FROM_UNET)
        and key in unet_weights
        and unet_weights[key].shape == value.shape
    }

    @jax.jit
    def fresh() -> dict:  # the whole init traced, the copied weights' part dropped by the compiler
        built = ControlNetModel(config, options, rngs=InitKeys(seed))
        weights = flatten_dict(nnx.to_pure_dict(nnx.state(built)))
        return {key: value for key, value in weights.items() if key not in copied}

    nnx.replace_by_pure_dict(abstract, unflatten_dict({**fresh(), **copied}))
    return nnx.merge(graphdef, abstract)


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


def token_batch(sd: StableDiffusion, captions: list[str]) -> dict[str, np.ndarray]:
    """Every text encoder's token ids of `captions`, by batch key."""
    return {TOKEN_KEYS[name]: ids for name, ids in sd.token_ids(captions).items()}


def split_models(sd: StableDiffusion, controlnet: ControlNetModel) -> tuple[Graphs, dict[str, Any], Any]:
    """(graphs, frozen weights by model name, the ControlNet's weights), all weights as pure dicts."""
    parts = {**sd.text_models(), "vae": sd.vae, "unet": sd.unet, "controlnet": controlnet}
    graphs, weights = {}, {}
    for name, model in parts.items():
        graphs[name], state = nnx.split(model)
        weights[name] = nnx.to_pure_dict(state)
    controlnet_params = weights.pop("controlnet")
    return Graphs(**graphs), weights, controlnet_params
