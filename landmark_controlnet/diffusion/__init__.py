"""Stable Diffusion models owned by this project (Flax NNX); no torch, no diffusers.

Modules mirror diffusers' and transformers' PyTorch classes, parameter path for state-dict key, and
load from their folders (`from_pretrained`); images and latents are NHWC. Training lives elsewhere.

    unet = from_pretrained(UNet2DConditionModel, "path/or/hub-id", subfolder="unet", variant="fp16")
    residuals = controlnet(latents, t, text, conditioning_image)
    noise = unet(latents, t, text, down_block_additional_residuals=residuals.down_block_residuals,
                 mid_block_additional_residual=residuals.mid_block_residual)
"""

from .clip import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTextWithProjectionConfig,
    encode_prompt,
    encode_sdxl_prompt,
)
from .config import ModelConfig, UnsupportedConfigError
from .controlnet import ControlNetConfig, ControlNetModel, ControlNetOutput
from .flux import FluxTransformer2DModel, FluxTransformerConfig
from .flux_controlnet import FluxControlNetConfig, FluxControlNetModel, FluxControlNetOutput
from .loading import (
    LoadingError,
    convert_single_file,
    from_pretrained,
    is_flux,
    is_sdxl,
    read_model_index,
)
from .options import ModelOptions
from .pretrained import PretrainedModule
from .schedulers import DDIMSampler, DPMSolverMultistepSampler, NoiseSchedule, sample
from .t5 import T5Config, T5EncoderModel
from .unet import TextTimeConditioning, UNet2DConditionModel, UNetConfig
from .vae import AutoencoderKL, AutoencoderKLConfig, DiagonalGaussian
from .weights import WeightsError

# config.json's `_class_name` (transformers: `architectures[0]`) -> our class. One line per model.
MODEL_CLASSES: dict[str, type[PretrainedModule]] = {
    cls.config_class.class_name: cls
    for cls in (
        UNet2DConditionModel,
        ControlNetModel,
        AutoencoderKL,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        T5EncoderModel,
        FluxTransformer2DModel,
        FluxControlNetModel,
    )
}

__all__ = [
    "MODEL_CLASSES",
    "AutoencoderKL",
    "AutoencoderKLConfig",
    "CLIPTextConfig",
    "CLIPTextModel",
    "CLIPTextModelWithProjection",
    "CLIPTextWithProjectionConfig",
    "ControlNetConfig",
    "ControlNetModel",
    "ControlNetOutput",
    "DDIMSampler",
    "DPMSolverMultistepSampler",
    "DiagonalGaussian",
    "FluxControlNetConfig",
    "FluxControlNetModel",
    "FluxControlNetOutput",
    "FluxTransformer2DModel",
    "FluxTransformerConfig",
    "LoadingError",
    "ModelConfig",
    "ModelOptions",
    "NoiseSchedule",
    "PretrainedModule",
    "T5Config",
    "T5EncoderModel",
    "TextTimeConditioning",
    "UNet2DConditionModel",
    "UNetConfig",
    "UnsupportedConfigError",
    "WeightsError",
    "convert_single_file",
    "encode_prompt",
    "encode_sdxl_prompt",
    "from_pretrained",
    "is_flux",
    "is_sdxl",
    "read_model_index",
    "sample",
]
