"""How a model computes: dtypes, rematerialisation and the attention kernel. Shared by every module."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import jax.numpy as jnp

AttentionKernel = Literal["auto", "xla", "cudnn", "splash"]
RematPolicy = Literal["none", "blocks", "layers", "dots"]

ATTENTION_KERNELS: tuple[str, ...] = get_args(AttentionKernel)
REMAT_POLICIES: tuple[str, ...] = get_args(RematPolicy)


@dataclass(frozen=True)
class ModelOptions:
    """`dtype` is the compute dtype; parameters stay in `param_dtype` (fp32 master weights for bf16 training).

    `remat` is one level of gradient checkpointing, never nested:
    - "none": every activation the backward pass needs is kept;
    - "blocks": each down, mid and up block keeps only its inputs and runs its forward again;
    - "layers": each transformer layer keeps only its inputs;
    - "dots": each transformer layer keeps its projections' outputs; norms, GELU and attention
      are recomputed (`jax.checkpoint_policies.dots_with_no_batch_dims_saveable`).

    `attention` picks the kernel (see `attention.py`): "auto" takes cuDNN's fused kernel on GPU and
    Pallas splash attention on TPU where they accept the call, and XLA elsewhere.

    `scan_layers` runs a transformer's repeated layers (SDXL's stacks of 2 and 10) as one
    `jax.lax.scan`, remat inside its body: the same results from a program a fraction of the size.
    """

    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    remat: RematPolicy = "none"
    attention: AttentionKernel = "auto"
    scan_layers: bool = True

    def __post_init__(self) -> None:
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat {self.remat!r}: one of {', '.join(REMAT_POLICIES)}")
        if self.attention not in ATTENTION_KERNELS:
            raise ValueError(f"attention {self.attention!r}: one of {', '.join(ATTENTION_KERNELS)}")


DEFAULT_OPTIONS = ModelOptions()
