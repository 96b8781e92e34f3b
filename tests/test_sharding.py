"""`--mesh data=N,fsdp=M`: the mesh, the one sharding rule and what it saves per device."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from conditioners.errors import UserError
from landmark_controlnet.training.sharding import MeshShape, partition_spec, per_device_bytes, tree_specs


@pytest.mark.parametrize(
    ("text", "devices", "expected"),
    [(None, 8, (8, 1)), ("data=2,fsdp=4", 8, (2, 4)), ("fsdp=8", 8, (1, 8)), ("data=4", 8, (4, 2))],
)
def test_mesh_shapes(text, devices, expected):
    shape = MeshShape.parse(text, devices)
    assert (shape.data, shape.fsdp) == expected


@pytest.mark.parametrize("text", ["data=3,fsdp=2", "model=8", "data=0,fsdp=8", "data=2,data=4", "fsdp=3"])
def test_bad_meshes_are_refused(text):
    with pytest.raises(UserError, match="--mesh"):
        MeshShape.parse(text, 8)


def test_large_tensors_split_on_their_largest_divisible_axis_small_ones_replicated():
    assert partition_spec("conv.kernel", (3, 3, 320, 640), 4) == P(None, None, None, "fsdp")
    assert partition_spec("proj.kernel", (1280, 320), 4) == P("fsdp", None)
    assert partition_spec("proj.kernel", (1283, 320), 4) == P(None, "fsdp"), (
        "the next axis when the largest won't divide"
    )
    assert partition_spec("odd.kernel", (1283, 321), 4) == P()
    assert partition_spec("norm.scale", (1280,), 4) == P(), "small tensors stay whole"
    assert partition_spec("proj.kernel", (1280, 320), 1) == P()


def test_fsdp_divides_the_bytes_of_the_sd15_controlnet_per_device():
    """The real SD 1.5 ControlNet (361 M parameters), from shapes alone."""
    from flax import nnx

    from landmark_controlnet.diffusion import ControlNetConfig, ControlNetModel, UNetConfig
    from landmark_controlnet.training.published_configs import SD15_UNET_CONFIG

    config = ControlNetConfig.from_unet(UNetConfig.from_dict(SD15_UNET_CONFIG))
    params = nnx.to_pure_dict(nnx.state(ControlNetModel.abstract(config)))
    whole = per_device_bytes(params, tree_specs(params, 1), {"data": 8, "fsdp": 1})
    assert whole == pytest.approx(361.3e6 * 4, rel=0.01)
    for fsdp in (2, 8):
        split = per_device_bytes(params, tree_specs(params, fsdp), {"data": 8 // fsdp, "fsdp": fsdp})
        assert 1 / fsdp <= split / whole < 1.06 / fsdp


SHARDED_CHILD = """
import json, jax, jax.numpy as jnp
from landmark_controlnet.training.sharding import MeshShape, describe, tree_shardings, tree_specs
mesh = MeshShape.parse("data=2,fsdp=2", 4).mesh()
tree = {"kernel": jnp.ones((512, 256)), "bias": jnp.ones((256,))}
placed = jax.device_put(tree, tree_shardings(tree, mesh))
print(describe(tree, tree_specs(tree, 2), mesh))
print(json.dumps({k: [list(s.data.shape) for s in v.addressable_shards] for k, v in placed.items()}))
"""


def test_arrays_really_are_sharded_on_four_devices():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", SHARDED_CHILD],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, **env},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    description, shards = result.stdout.strip().splitlines()[-2:]
    shards = json.loads(shards)
    assert shards["kernel"] == [[256, 256]] * 4, "split in two along fsdp, the same half on both data rows"
    assert shards["bias"] == [[256]] * 4
    assert "1 of 2 tensors split" in description


STATE_CHILD = """
import json, jax
from flax import nnx
from landmark_controlnet.diffusion import ControlNetConfig, ControlNetModel, UNetConfig
from landmark_controlnet.diffusion.pretrained import InitKeys
from landmark_controlnet.training.step import Shardings, init_state_on_devices, make_optimizer
from landmark_controlnet.training.tiny_sd import SDXL_UNET
config = ControlNetConfig.from_unet(UNetConfig.from_dict(SDXL_UNET))
params = nnx.to_pure_dict(nnx.state(ControlNetModel(config, rngs=InitKeys(0))))
optimizer = make_optimizer(lambda step: 1e-4)
report = {}
for mesh in ("data=4", "data=2,fsdp=2"):
    state = init_state_on_devices(params, optimizer, 0, Shardings.over_all_devices(mesh, 1024))
    kernel = state.params["mid_block"]["resnets"][0]["conv1"]["kernel"]
    adam = state.opt_state[1][0]  # clip_by_global_norm, then adamw's scale_by_adam
    trees = (state.params, adam.mu, adam.nu)
    specs = [[str(x.sharding.spec) for x in jax.tree_util.tree_leaves(t)] for t in trees]
    report[mesh] = {
        "bytes": sum(x.addressable_shards[0].data.nbytes for x in jax.tree_util.tree_leaves(state)),
        "kernel": [str(kernel.sharding.spec), kernel.shape, kernel.addressable_shards[0].data.shape],
        "moments_as_parameters": specs[0] == specs[1] == specs[2],
        "split": sum("fsdp" in spec for spec in specs[0]),
    }
print(json.dumps(report))
"""


def test_the_train_state_is_sharded_along_fsdp_and_halves_the_bytes_per_device():
    """The trainer's own state on a 2x2 mesh: parameters and Adam moments split, half the bytes."""
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", STATE_CHILD], capture_output=True, text=True, env={**os.environ, **env}
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    replicated, sharded = report["data=4"], report["data=2,fsdp=2"]
    assert replicated["split"] == 0 and "fsdp" not in replicated["kernel"][0]
    spec, shape, shard = sharded["kernel"]
    assert "fsdp" in spec and sorted(np.array(shape) // np.array(shard)) == [1, 1, 1, 2]
    assert sharded["split"] > 50
    assert sharded["moments_as_parameters"], "Adam's moments are laid out as their parameters"
    assert 0.5 <= sharded["bytes"] / replicated["bytes"] < 0.6
