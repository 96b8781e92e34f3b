"""What the backward pass keeps: the bytes of the loss's residuals, counted from shapes alone.

Counted by `jax.ad_checkpoint`'s own partial evaluation (what `jax.vjp` would store), so it runs on
any machine in seconds, honours remat policies and custom gradients, and needs no compiler: XLA's
CPU memory analysis ignores remat. Inputs (weights, the batch) are not counted; they are held anyway.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax._src.ad_checkpoint import saved_residuals

from landmark_controlnet.diffusion.attention import stand_in_for_gpu

from .step import diffusion_loss


@dataclass(frozen=True)
class SavedBytes:
    total: int
    by_dtype: dict[str, int]
    largest: list[tuple[str, int]]  # the biggest residuals, (description, bytes)

    def as_dict(self) -> dict[str, Any]:
        return {
            "saved_for_backward_gb": round(self.total / 1e9, 2),
            "by_dtype_gb": {k: round(v / 1e9, 2) for k, v in self.by_dtype.items()},
        }


def saved_for_backward(
    graphs: Any,
    frozen: dict[str, Any],
    params: Any,
    batch: dict[str, Any],
    config: Any,
    as_gpu: bool = False,
    loss_fn: Callable = diffusion_loss,
) -> SavedBytes:
    """The residuals of one micro-batch's loss (`batch` without the accumulation axis; arrays or
    ShapeDtypeStructs) by `loss_fn(params, frozen, batch, rng, graphs, config)`: `step.diffusion_loss`
    (`graphs` a `models.Graphs`, `config` a `LossConfig`) or `flux_step.flux_loss_from_key` (`FluxGraphs`,
    `FlowMatchLossConfig`). `as_gpu` traces as a Hopper GPU runs, cuDNN's attention counted as its own
    residuals (`attention.stand_in_for_gpu`)."""
    rng = jax.ShapeDtypeStruct((2,), np.uint32)

    def loss(params, frozen, batch, rng):
        return loss_fn(params, frozen, batch, rng, graphs, config)

    with stand_in_for_gpu() if as_gpu else contextlib.nullcontext():
        residuals = saved_residuals(loss, params, frozen, batch, rng)
    inputs = ("from the argument", "from a literal")  # held anyway
    kept = [(aval, why) for aval, why in residuals if not why.startswith(inputs)]
    sizes = [(why, int(np.prod(aval.shape)) * aval.dtype.itemsize, aval.dtype.name) for aval, why in kept]
    by_dtype = Counter()
    for _, size, dtype in sizes:
        by_dtype[dtype] += size
    largest = sorted(((why, size) for why, size, _ in sizes), key=lambda pair: -pair[1])[:10]
    return SavedBytes(sum(by_dtype.values()), dict(by_dtype), largest)
