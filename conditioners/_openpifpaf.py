"""OpenPifPaf's `shufflenetv2k30-animalpose` on CPU, loaded without trusting the pickle blindly.

OpenPifPaf checkpoints are whole pickled models. They are never downloaded here: the file is one
the user put in `$TORCH_HOME/hub/checkpoints/` or named (option `weights`, `$ANIMALPOSE_WEIGHTS`).
It is read with `torch.load(weights_only=True)`, allowing only OpenPifPaf's and torch's network
classes and numpy arrays; anything else in the pickle stops the load with its names, unless the
user passes `trust_checkpoint=true`, which unpickles it fully (running whatever code it holds).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError
from .torchvision_guard import import_torchvision
from .weights import WeightsFile, resolve_weights

ANIMALPOSE_WEIGHTS = WeightsFile(
    filename="shufflenetv2k30-210511-120906-animal.pkl.epoch400",
    description="OpenPifPaf animal pose checkpoint (110 MB)",
    env_var="ANIMALPOSE_WEIGHTS",
    url="https://github.com/vita-epfl/openpifpaf-torchhub/releases/download/v0.12.9/"
    "shufflenetv2k30-210511-120906-animal.pkl.epoch400",
)
LONG_EDGE = 512
# What an OpenPifPaf network pickle may name: its own classes, torch's layers, numpy arrays.
SAFE_MODULE_PREFIXES = ("openpifpaf.", "torch.nn.modules.")
# numpy 2 pickles name `numpy._core`, numpy 1 `numpy.core`: the same two functions.
SAFE_NAMES = frozenset(
    {"numpy.dtype", "numpy.ndarray"}
    | {f"numpy.{core}.multiarray.{name}" for core in ("core", "_core") for name in ("_reconstruct", "scalar")}
)


class UnsafeCheckpointError(UserError, RuntimeError):
    """The checkpoint's pickle names objects outside the allow-list."""


def import_openpifpaf() -> Any:
    import_torchvision()  # its backbones subclass torchvision's; see torchvision_guard
    with warnings.catch_warnings():  # its visualizers use matplotlib.cm.get_cmap at import
        warnings.filterwarnings("ignore", "The get_cmap function was deprecated")
        import openpifpaf
    import torch

    torch.ops.openpifpaf.set_quiet(True)  # its C++ decoder prints buffer sizes to stdout otherwise
    return openpifpaf


def allowed_globals(path: Path) -> list[Any]:
    """The objects the pickle at `path` names, when every one of them is on the allow-list."""
    import torch

    names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    unexpected = [n for n in names if not (n.startswith(SAFE_MODULE_PREFIXES) or n in SAFE_NAMES)]
    if unexpected:
        raise UnsafeCheckpointError(
            f"{path}: the checkpoint's pickle names {', '.join(sorted(unexpected))}, which an OpenPifPaf "
            "network does not need. If you trust this file, pass the option trust_checkpoint=true to "
            "unpickle it fully (that runs any code it holds)."
        )
    # numpy's dtype classes (Float64DType, ...) are needed too, though the scan above misses them.
    import numpy.dtypes

    dtype_classes = [getattr(numpy.dtypes, name) for name in dir(numpy.dtypes) if name.endswith("DType")]
    return [_named_object(name) for name in names] + dtype_classes


def _named_object(qualified: str) -> Any:
    module, _, name = qualified.rpartition(".")
    return getattr(importlib.import_module(module), name)


@contextlib.contextmanager
def _full_unpickling() -> Iterator[None]:
    """torch.load's documented switch: its default `weights_only` reads this variable at each call."""
    previous = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with warnings.catch_warnings():  # torch warns that the variable is set; we said so already
            warnings.filterwarnings("ignore", "Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
            yield
    finally:
        if previous is None:
            del os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"]
        else:
            os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = previous


def load_predictor(path: Path, trust_checkpoint: bool = False) -> Any:
    """OpenPifPaf's own Predictor on the CPU at long_edge=512, its network read from `path`."""
    import torch

    openpifpaf = import_openpifpaf()

    class CpuPredictor(openpifpaf.Predictor):  # class attributes are its configuration
        device = torch.device("cpu")
        long_edge = LONG_EDGE

    if trust_checkpoint:
        print(f"animal_pose: unpickling {path} fully (trust_checkpoint=true)", file=sys.stderr)
        loading = _full_unpickling()
    else:
        loading = torch.serialization.safe_globals(allowed_globals(path))
    with loading:
        return CpuPredictor(checkpoint=str(path))


class AnimalPoseDetector:
    """RGB array -> [(20 x 3 keypoints: x, y, confidence in its pixels, animal score)]."""

    def __init__(self, weights: str | None, trust_checkpoint: bool = False):
        path = resolve_weights(ANIMALPOSE_WEIGHTS, weights, download=False)
        self.predictor = load_predictor(path, trust_checkpoint)

    def __call__(self, rgb: np.ndarray) -> list[tuple[np.ndarray, float]]:
        annotations, _, _ = self.predictor.numpy_image(np.ascontiguousarray(rgb))
        return [(np.asarray(a.data, np.float64), float(a.score)) for a in annotations]
