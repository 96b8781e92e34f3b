"""The base of every loadable model: its config class, its weights file name and key rules."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.traverse_util import flatten_dict, unflatten_dict

from .config import ModelConfig
from .options import DEFAULT_OPTIONS, ModelOptions

ModuleT = TypeVar("ModuleT", bound="PretrainedModule")


class InitKeys:
    """What the models' constructors use of `nnx.Rngs`: `params()`, a new key per call.

    Counted in Python: `nnx.Rngs` writes a Variable per key drawn, and under a trace (`eval_shape`,
    `jit`) each write probes the tracer's `.sharding`, which in JAX 0.10 walks every equation traced
    so far, so building a model abstractly took time quadratic in its size (6 s for the SD 1.5 UNet
    instead of 0.6 s; jax-ml/jax#40041). Keys are RBG: initialisers on them compile in about half
    the time of threefry's; their values are the same on every host of one kind.
    """

    def __init__(self, seed: int | jax.Array = 0):
        """From an int seed (an RBG key), or from a key as it is (a traced one inside `jit`)."""
        self._key = jax.random.key(seed, impl="rbg") if isinstance(seed, int) else seed
        self._count = 0

    def params(self) -> jax.Array:
        self._count += 1
        return jax.random.fold_in(self._key, self._count)


class PretrainedModule(nnx.Module):
    """A module built from a typed config whose parameter paths are its PyTorch checkpoint's keys.

    Subclasses set `config_class` and `weights_name` (`diffusion_pytorch_model` for diffusers,
    `model` for transformers) and are built as `Cls(config, options, rngs=rngs)`.
    """

    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    weights_name: ClassVar[str] = "diffusion_pytorch_model"

    @classmethod
    def abstract(cls: type[ModuleT], config: ModelConfig, options: ModelOptions = DEFAULT_OPTIONS) -> ModuleT:
        """The module with ShapeDtypeStructs for weights: its structure, nothing allocated."""
        return nnx.eval_shape(lambda: cls(config, options, rngs=InitKeys()))

    @classmethod
    def partly_copied(
        cls: type[ModuleT],
        config: ModelConfig,
        options: ModelOptions,
        source: Mapping[tuple, Any],
        copies: Callable[[tuple], bool],
        seed: int | jax.Array = 0,
    ) -> ModuleT:
        """`cls(config, options)` whose weights at the (flattened pure-dict) paths `copies` accepts come
        from `source` where it holds one of the same path and shape (copied, in the model's dtype: no
        buffer is shared, so a training step may donate them), the rest freshly initialised from `seed`.

        Only the fresh weights are initialised, in one compiled program: initialising each weight
        eagerly compiled one program per shape, and the copied ones would be overwritten anyway."""
        graphdef, state = nnx.split(cls.abstract(config, options))
        copied = {
            key: jnp.array(source[key], wanted.dtype)
            for key, wanted in flatten_dict(nnx.to_pure_dict(state)).items()
            if copies(key) and key in source and source[key].shape == wanted.shape
        }

        @jax.jit
        def fresh(key: jax.Array) -> dict:  # the whole init traced, the copied part dropped
            built = cls(config, options, rngs=InitKeys(key))
            weights = flatten_dict(nnx.to_pure_dict(nnx.state(built)))
            return {path: value for path, value in weights.items() if path not in copied}

        key = jax.random.key(seed, impl="rbg") if isinstance(seed, int) else seed
        nnx.replace_by_pure_dict(state, unflatten_dict({**fresh(key), **copied}))
        return nnx.merge(graphdef, state)

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
