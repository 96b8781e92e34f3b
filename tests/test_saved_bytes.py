"""`training.saved` counts what the backward pass keeps, from shapes: fused attention keeps no softmax
matrix, and each remat policy keeps less than no remat."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from landmark_controlnet.diffusion import ControlNetConfig, ControlNetModel
from landmark_controlnet.training.models import Compute, load_base_model, split_models
from landmark_controlnet.training.saved import saved_for_backward
from landmark_controlnet.training.step import LossConfig
from landmark_controlnet.training.tiny_sd import HIDDEN, write_tiny_sd


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return write_tiny_sd(tmp_path_factory.mktemp("saved") / "tiny-sd")


def kept_bytes(folder, remat: str, as_gpu: bool) -> int:
    compute = Compute(jnp.bfloat16, remat, remat)
    sd = load_base_model(str(folder), compute=compute, abstract=True)
    config = ControlNetConfig.from_unet(sd.unet.config, in_channels=4)
    graphs, frozen, params = split_models(sd, ControlNetModel.abstract(config, compute.trained))
    frozen = {**frozen, "noise_schedule": sd.noise_schedule}
    batch = {  # 256 px: 1,024 latent tokens, enough for the fused kernel
        "latent_moments": jax.ShapeDtypeStruct((2, 32, 32, 8), np.float32),
        "text_embeddings": jax.ShapeDtypeStruct((2, 77, HIDDEN), np.float32),
        "conditioning_pixel_values": jax.ShapeDtypeStruct((2, 256, 256, 3), np.uint8),
    }
    return saved_for_backward(graphs, frozen, params, batch, LossConfig(jnp.bfloat16), as_gpu=as_gpu).total


def test_fused_attention_and_remat_keep_less(tiny_sd):
    kept = {
        (remat, gpu): kept_bytes(tiny_sd, remat, gpu)
        for remat in ("none", "blocks", "dots")
        for gpu in (0, 1)
    }
    # 1,024 x 1,024 fp32 logits per head and image are what XLA keeps and cuDNN does not.
    assert kept["none", 0] - kept["none", 1] >= 2 * 1024 * 1024 * 4
    assert kept["blocks", 0] < kept["dots", 0] < kept["none", 0]
    assert kept["dots", 0] == kept["dots", 1], "under 'dots' attention is recomputed on either path"
