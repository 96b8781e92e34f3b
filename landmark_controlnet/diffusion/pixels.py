"""Pictures as the models take them, from their 8-bit values: one function per kind of picture.

Hosts send pictures to the devices as uint8 (a quarter of float32's bytes) and every consumer (the
train step, the latent cache's encoder, the sampler) scales them on the device with these, so the
scaling is written once. Each computes in float32, then casts to `dtype`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def photo_input(photos: Any, dtype: Any = jnp.float32) -> jax.Array:
    """RGB photos, 0..255 (uint8) -> the VAE encoder's input in [-1, 1]."""
    return (_eight_bit(photos, "photo") / 127.5 - 1.0).astype(dtype)


def conditioning_input(images: Any, dtype: Any = jnp.float32) -> jax.Array:
    """RGB conditioning images, 0..255 (uint8) -> the ControlNet's input in [0, 1]."""
    return (_eight_bit(images, "conditioning image") / 255.0).astype(dtype)


def mask_input(masks: Any, dtype: Any = jnp.float32) -> jax.Array:
    """Masks, non-zero = repaint (the loader's are uint8 0 or 255) -> 1 = repaint, 0 = keep."""
    return (jnp.asarray(masks) > 0).astype(dtype)


def _eight_bit(pictures: Any, kind: str) -> jax.Array:
    """`pictures` as float32; floats are refused, as they would be already scaled and scaled again."""
    pictures = jnp.asarray(pictures)
    if jnp.issubdtype(pictures.dtype, jnp.floating):
        raise TypeError(f"a {kind} must be 0..255 integers (uint8), got {pictures.dtype}")
    return pictures.astype(jnp.float32)
