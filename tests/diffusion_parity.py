"""Shared helpers for the parity tests of landmark_controlnet.diffusion against PyTorch diffusers and
transformers: perturb every weight, save with the released library, load ours from the files, compare."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from landmark_controlnet.diffusion.weights import load_module

RELATIVE_TOLERANCE = 1e-4


def perturb(module: torch.nn.Module, seed: int, scale: float = 0.02) -> torch.nn.Module:
    """Add noise to every parameter, so that zero-initialised convs and unit norms are exercised too."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)
    return module.eval()


class SafetensorsFiles:
    """The smallest TensorSource over safetensors files, for tests that do not exercise loading.py."""

    def __init__(self, *files: Path):
        self.handles = [safe_open(str(f), framework="numpy") for f in files]
        self.where = {key: h for h in self.handles for key in h.keys()}  # noqa: SIM118 (not a dict)
        self.files = files

    def keys(self):
        return self.where.keys()

    def get(self, key: str) -> np.ndarray:
        return self.where[key].get_tensor(key)

    def describe(self) -> str:
        return ", ".join(str(f) for f in self.files)


def load_ours(cls, config, folder: Path, weights_file: str = "diffusion_pytorch_model.safetensors"):
    return load_module(cls.abstract(config), SafetensorsFiles(folder / weights_file))


def nchw(x) -> np.ndarray:
    return np.asarray(x).transpose(0, 3, 1, 2)


def nhwc(x) -> np.ndarray:
    return np.asarray(x).transpose(0, 2, 3, 1)


def assert_matches(ours, theirs, what: str, tolerance: float = RELATIVE_TOLERANCE) -> None:
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} vs {theirs.shape}"
    scale = np.abs(theirs).max()
    error = np.abs(ours - theirs).max()
    assert scale > 0, f"{what}: the reference is all zeros, the comparison would prove nothing"
    assert error <= tolerance * scale, (
        f"{what}: max |ours - theirs| = {error:.3g} > {tolerance} x {scale:.3g}"
    )
