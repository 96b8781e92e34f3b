"""PyTorch state-dict keys and layouts <-> NNX parameter paths and layouts.

Modules here name their attributes as diffusers and transformers do, so a parameter's path is its
key: ('down_blocks', 0, 'resnets', 1, 'conv1', 'kernel') is `down_blocks.0.resnets.1.conv1.weight`.
Only the leaf names and the array layouts differ:
- Linear: PyTorch (out, in) is NNX (in, out).
- Conv: PyTorch (out, in, kh, kw) is NNX (kh, kw, in, out).
- Norm `weight` is NNX `scale`; Embedding `weight` is NNX `embedding`.

Loading builds the model abstractly (`nnx.eval_shape`, no memory) and fills it one tensor at a time,
so that it never holds a random initialisation beside the checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Protocol, TypeVar

import jax.numpy as jnp
import numpy as np
from flax import nnx

from conditioners.errors import UserError

ModuleT = TypeVar("ModuleT", bound=nnx.Module)
Path = tuple[str | int, ...]

_TORCH_LEAF = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}


class WeightsError(UserError):
    """A checkpoint does not fit the model: a missing key, an unexpected key or a wrong shape."""


class TensorSource(Protocol):
    """Named PyTorch-layout tensors, read one at a time (a safetensors file, a dict in tests)."""

    def keys(self) -> Iterable[str]: ...

    def get(self, key: str) -> np.ndarray: ...

    def describe(self) -> str: ...


class DictTensorSource:
    def __init__(self, tensors: Mapping[str, np.ndarray], name: str = "state dict"):
        self.tensors = tensors
        self.name = name

    def keys(self) -> Iterable[str]:
        return self.tensors.keys()

    def get(self, key: str) -> np.ndarray:
        return np.asarray(self.tensors[key])

    def describe(self) -> str:
        return self.name


def torch_key(path: Path) -> str:
    """('mid_block', 'attentions', 0, 'norm', 'scale') -> 'mid_block.attentions.0.norm.weight'."""
    *prefix, leaf = path
    return ".".join([*(str(p) for p in prefix), _TORCH_LEAF.get(str(leaf), str(leaf))])


def to_nnx_layout(tensor: np.ndarray, path: Path):
    if path[-1] == "kernel" and tensor.ndim == 4:
        return tensor.transpose(2, 3, 1, 0)
    if path[-1] == "kernel" and tensor.ndim == 2:
        return tensor.T
    return tensor


def to_torch_layout(array: np.ndarray, path: Path) -> np.ndarray:
    if path[-1] == "kernel" and array.ndim == 4:
        return array.transpose(3, 2, 0, 1)
    if path[-1] == "kernel" and array.ndim == 2:
        return array.T
    return array


def parameter_paths(model: nnx.Module) -> list[tuple[Path, nnx.Variable]]:
    return list(nnx.to_flat_state(nnx.state(model, nnx.Param)))


def load_module(
    abstract: ModuleT,
    source: TensorSource,
    ignore_unexpected: Callable[[str], bool] = lambda key: False,
    on_host: bool = False,
) -> ModuleT:
    """Fill every parameter of an `abstract` module (`Cls.abstract(config)`) from `source`: as device
    arrays on the default device, or with `on_host` as numpy arrays in host memory (the trainer lays
    them out on its mesh itself, so no device ever holds a whole model).

    A key the module needs and the source lacks, a shape that differs, or a source key the module does
    not use (unless `ignore_unexpected` says it is harmless, like CLIP's position_ids buffer) raises
    WeightsError naming the source and the key.
    """
    graphdef, state = nnx.split(abstract)
    available = set(source.keys())
    filled = []
    to_array = np.asarray if on_host else jnp.asarray
    for path, variable in nnx.to_flat_state(state):
        key = torch_key(path)
        expected = variable.get_raw_value()  # a ShapeDtypeStruct: the module was built abstractly
        if key not in available:
            raise WeightsError(f"{source.describe()}: missing weight {key!r} (shape {expected.shape})")
        array = to_nnx_layout(source.get(key), path)
        if tuple(array.shape) != tuple(expected.shape):
            raise WeightsError(
                f"{source.describe()}: {key!r} has shape {tuple(source.get(key).shape)}, the model "
                f"expects {tuple(to_torch_layout(np.empty(expected.shape), path).shape)}"
            )
        filled.append((path, variable.replace(value=to_array(array, dtype=expected.dtype))))
        available.discard(key)
    unexpected = sorted(key for key in available if not ignore_unexpected(key))
    if unexpected:
        shown = ", ".join(repr(k) for k in unexpected[:5])
        more = f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""
        raise WeightsError(f"{source.describe()}: unexpected weights {shown}{more} (does the config match?)")
    return nnx.merge(graphdef, nnx.from_flat_state(filled))


def torch_state_dict(model: nnx.Module, dtype: np.dtype = np.float32) -> dict[str, np.ndarray]:
    """The module's parameters under PyTorch keys and layouts, as contiguous numpy arrays."""
    return {
        torch_key(path): np.ascontiguousarray(to_torch_layout(np.asarray(variable[...], dtype=dtype), path))
        for path, variable in parameter_paths(model)
    }
