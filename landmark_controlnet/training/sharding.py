"""Explicit meshes and parameter shardings: `--mesh data=N,fsdp=M`.

The mesh has two named axes, as in MaxDiffusion: `data` splits the batch only; `fsdp` splits the
batch too, and also every large parameter, its gradient and its optimiser moments, each along its
largest axis that the `fsdp` size divides. Small tensors (biases, norms, the time embedding's
first layer) stay replicated: sharding them saves little and costs a collective each. One function,
`partition_spec(path, shape, fsdp)`, makes that choice for every tensor, and `describe` prints it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from conditioners.errors import UserError

AXES = ("data", "fsdp")
BATCH_AXES = AXES  # a batch is split over every device of the mesh
# Below this a tensor is replicated (a 256 x 256 matrix is the largest kept whole); --fsdp_min_elements.
MIN_SHARDED_ELEMENTS = 2**16


@dataclass(frozen=True)
class MeshShape:
    data: int
    fsdp: int = 1

    @classmethod
    def parse(cls, text: str | None, devices: int) -> MeshShape:
        """`data=4,fsdp=2` (either may be left out and takes what remains); None: every device on `data`."""
        if not text:
            return cls(devices, 1)
        sizes: dict[str, int] = {}
        for item in text.split(","):
            name, _, value = item.partition("=")
            name = name.strip()
            if name not in AXES or name in sizes or not value.strip().isdigit() or int(value) < 1:
                raise UserError(f"--mesh {text!r}: give data=N,fsdp=M with positive sizes (axes: data, fsdp)")
            sizes[name] = int(value)
        missing = [name for name in AXES if name not in sizes]
        if len(missing) == 1:
            known = math.prod(sizes.values())
            if devices % known:
                raise UserError(f"--mesh {text!r}: {devices} devices are not a multiple of {known}")
            sizes[missing[0]] = devices // known
        shape = cls(sizes["data"], sizes["fsdp"])
        if shape.data * shape.fsdp != devices:
            raise UserError(
                f"--mesh {text!r}: data x fsdp = {shape.data * shape.fsdp}, but there are {devices} devices"
            )
        return shape

    def mesh(self, devices: Sequence[Any] | None = None) -> Mesh:
        devices = list(devices if devices is not None else jax.devices())
        return Mesh(np.array(devices).reshape(self.data, self.fsdp), AXES)


def partition_spec(path: str, shape: Sequence[int], fsdp: int, min_elements: int = MIN_SHARDED_ELEMENTS) -> P:
    """How one parameter (or its gradient, or an optimiser moment of it) is laid out on the mesh.

    `path` names the tensor (`down_blocks.1.attentions.0.proj_in.kernel`); the rule needs only its
    shape today, and takes the path so that a rule by name can be added in one place."""
    del path
    if fsdp == 1 or math.prod(shape) < min_elements:
        return P()
    by_size = sorted(range(len(shape)), key=lambda axis: (-shape[axis], axis))
    for axis in by_size:
        if shape[axis] % fsdp == 0:
            return P(*("fsdp" if i == axis else None for i in range(len(shape))))
    return P()


def tree_specs(tree: Any, fsdp: int, min_elements: int = MIN_SHARDED_ELEMENTS) -> Any:
    """`partition_spec` for every array leaf of `tree` (scalars and non-arrays replicated)."""

    def spec(path: tuple, leaf: Any) -> P:
        shape = getattr(leaf, "shape", ())
        name = jax.tree_util.keystr(path, simple=True, separator=".")
        return partition_spec(name, shape, fsdp, min_elements)

    return jax.tree_util.tree_map_with_path(spec, tree)


def tree_shardings(tree: Any, mesh: Mesh, min_elements: int = MIN_SHARDED_ELEMENTS) -> Any:
    specs = tree_specs(tree, mesh.shape["fsdp"], min_elements)
    return jax.tree_util.tree_map(lambda spec: NamedSharding(mesh, spec), specs, is_leaf=_is_spec)


def per_device_bytes(tree: Any, specs: Any, axis_sizes: Mapping[str, int]) -> int:
    """Bytes each device holds of `tree` laid out by `specs` on a mesh of `axis_sizes` (`mesh.shape`),
    from shapes alone: nothing is allocated, so it sizes a pod slice before paying for one."""
    leaves = jax.tree_util.tree_leaves(tree)
    spec_leaves = jax.tree_util.tree_leaves(specs, is_leaf=_is_spec)
    total = 0
    for leaf, spec in zip(leaves, spec_leaves, strict=True):
        split = math.prod(axis_sizes[axis] for axis in spec if axis is not None)
        total += math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize // split
    return total


def describe(tree: Any, specs: Any, mesh: Mesh, name: str = "ControlNet") -> str:
    """One line per sharding rule outcome, printed once at start: what is split, what is replicated."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    spec_leaves = jax.tree_util.tree_leaves(specs, is_leaf=_is_spec)
    sharded = sum(1 for spec in spec_leaves if any(spec))
    replicated_bytes = sum(
        math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize
        for (_, leaf), spec in zip(leaves, spec_leaves, strict=True)
        if not any(spec)
    )
    mb = per_device_bytes(tree, specs, mesh.shape) / 1e6
    return (
        f"mesh data={mesh.shape['data']} fsdp={mesh.shape['fsdp']}: {name} {sharded} of {len(spec_leaves)} "
        f"tensors split along fsdp (largest divisible axis), the rest replicated "
        f"({replicated_bytes / 1e6:.1f} MB); {mb:.1f} MB per device"
    )


def _is_spec(value: Any) -> bool:
    return isinstance(value, P)
