"""The base of every loadable model: its config class, its weights file name and key rules."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from flax import nnx

from .config import ModelConfig


class PretrainedModule(nnx.Module):
    """A module built from a typed config whose parameter paths are its PyTorch checkpoint's keys.

    Subclasses set `config_class` and `weights_name` (`diffusion_pytorch_model` for diffusers,
    `model` for transformers) and are built as `Cls(config, options, rngs=rngs)`.
    """

    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    weights_name: ClassVar[str] = "diffusion_pytorch_model"

    @staticmethod
    def ignore_unexpected(key: str) -> bool:
        """True for checkpoint keys that hold no parameter of ours (buffers such as position_ids)."""
        return False

    @staticmethod
    def legacy_key(key: str) -> str:
        """Today's name for a key from an older checkpoint layout (identity unless a model overrides it)."""
        return key

    @staticmethod
    def legacy_tensor(key: str, tensor: np.ndarray) -> np.ndarray:
        """Today's layout for tensor `key` (already renamed) of an older checkpoint (identity by default)."""
        return tensor
