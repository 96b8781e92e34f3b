"""Writing models out: diffusers / transformers model folders that PyTorch loads, and a native Orbax
format for resuming in JAX.

    save_pretrained(controlnet, "out/controlnet", dtype="float16")  # for diffusers.ControlNetModel
    save_native(controlnet, "ckpt/controlnet")
    controlnet = load_native(ControlNetModel, "ckpt/controlnet")

`save_pretrained` writes `config.json` and `<weights_name>.safetensors` (PyTorch keys and layouts, the
metadata `{"format": "pt"}` that transformers requires). `save_native` writes `config.json` and the
parameters as a plain pytree in an Orbax checkpoint (`params/`), which keeps sharded arrays sharded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal, TypeVar

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from safetensors.numpy import save_file

from conditioners.errors import UserError

from .loading import CONFIG_NAME, MissingFileError, add_variant
from .options import DEFAULT_OPTIONS, ModelOptions
from .pretrained import PretrainedModule
from .weights import torch_state_dict

ModelT = TypeVar("ModelT", bound=PretrainedModule)
ExportDtype = Literal["float32", "float16"]

EXPORT_DTYPES: dict[str, np.dtype] = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16)}
# transformers refuses safetensors files without it; diffusers and safetensors' torch loader accept it.
SAFETENSORS_METADATA = {"format": "pt"}
NATIVE_PARAMS = "params"


class ExportError(UserError):
    """An unknown export dtype, a weight that is not finite (NaN, or beyond float16), or a native folder
    that holds another model class."""


def write_config(model: PretrainedModule, folder: Path) -> Path:
    """`config.json` as diffusers writes it: `_class_name` and the config's keys, sorted, indented."""
    path = folder / CONFIG_NAME
    path.write_text(json.dumps(model.config.to_dict(), indent=2, sort_keys=True) + "\n")
    return path


def save_pretrained(
    model: PretrainedModule,
    folder: str | os.PathLike,
    dtype: ExportDtype = "float32",
    variant: str | None = None,
) -> Path:
    """Write `model` as a diffusers (or transformers) model folder; returns the weights file.

    The weights file is `diffusion_pytorch_model.safetensors` (`model.safetensors` for transformers
    models) whatever `dtype` is, so `from_pretrained(folder)` finds it without a variant. Pass
    `variant="fp16"` to write `diffusion_pytorch_model.fp16.safetensors` instead, e.g. beside a float32
    export in the same folder, as Hub repos ship both (loaders then need `variant="fp16"`).
    Parameters are gathered to the host: on several hosts, gather a sharded model first.
    """
    if dtype not in EXPORT_DTYPES:
        raise ExportError(f"dtype={dtype!r} is not an export dtype (choose from {list(EXPORT_DTYPES)})")
    with np.errstate(over="ignore"):  # an overflow becomes inf, which _check_finite names
        tensors = torch_state_dict(model, EXPORT_DTYPES[dtype])
    _check_finite(tensors, dtype)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_config(model, folder)
    weights = folder / add_variant(f"{model.weights_name}.safetensors", variant)
    save_file(tensors, weights, metadata=SAFETENSORS_METADATA)
    return weights


def _check_finite(tensors: dict[str, np.ndarray], dtype: str) -> None:
    """A NaN from training, or a weight beyond float16's range (written as inf): say which instead."""
    for key, tensor in tensors.items():
        if not np.isfinite(tensor).all():
            hint = f" (float16 holds at most {np.finfo(np.float16).max:.0f})" if dtype == "float16" else ""
            raise ExportError(f"weight {key!r} is not finite in {dtype}{hint}")


def save_native(model: PretrainedModule, folder: str | os.PathLike) -> Path:
    """Write `config.json` and the model's parameters (an Orbax checkpoint in `params/`) to `folder`.

    The parameters are saved as a plain nested dict of arrays (`nnx.to_pure_dict`), so sharded arrays
    are written shard by shard and the checkpoint reads back with any Orbax tooling. An existing
    `params/` is replaced. On several hosts every process calls this; process 0 writes config.json.
    """
    folder = Path(folder).resolve()  # Orbax wants absolute paths
    if jax.process_index() == 0:
        folder.mkdir(parents=True, exist_ok=True)
        write_config(model, folder)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    with ocp.StandardCheckpointer() as checkpointer:  # leaving the block waits for the async write
        checkpointer.save(folder / NATIVE_PARAMS, params, force=True)
    return folder


def load_native(
    cls: type[ModelT], folder: str | os.PathLike, options: ModelOptions = DEFAULT_OPTIONS
) -> ModelT:
    """Build `cls` from a `save_native` folder, restoring into an abstract model (no random init held).

    Parameters are restored in `options.param_dtype`, on the default device.
    """
    folder = Path(folder).resolve()
    config_path, params_path = folder / CONFIG_NAME, folder / NATIVE_PARAMS
    for path in (config_path, params_path):
        if not path.exists():
            raise MissingFileError(f"{folder}: {path.name} not found (not a save_native folder?)")
    stored_class = json.loads(config_path.read_text()).get("_class_name")
    if stored_class != cls.config_class.class_name:
        raise ExportError(f"{folder} holds a {stored_class}, not a {cls.config_class.class_name}")
    config = cls.config_class.from_json_file(config_path)
    graphdef, params = nnx.split(cls.abstract(config, options), nnx.Param)
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(params_path, nnx.to_pure_dict(params))
    nnx.replace_by_pure_dict(params, restored)
    return nnx.merge(graphdef, params)
