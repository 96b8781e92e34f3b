"""How a model computes: dtypes, rematerialisation and the attention kernel. Shared by every module."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import jax.numpy as jnp

AttentionImplementation = Literal["xla", "cudnn"] | None


@dataclass(frozen=True)
class ModelOptions:
    """`dtype` is the compute dtype; parameters stay in `param_dtype` (fp32 master weights for bf16 training).

    `remat` wraps each UNet/ControlNet block in `jax.checkpoint`, trading recompute for activation memory.
    `attention`: None uses `jax.nn.dot_product_attention` on GPU (cuDNN's fused kernel where it
    applies) and a heads-major XLA computation elsewhere; "xla" forces the latter, "cudnn" the former.
    """

    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    remat: bool = False
    attention: AttentionImplementation = None


DEFAULT_OPTIONS = ModelOptions()
