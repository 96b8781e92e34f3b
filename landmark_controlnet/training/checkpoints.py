"""Full-state checkpoints with Orbax: ControlNet params, optimiser state, step, RNG, data position.

Every host calls `save` and `restore` (Orbax coordinates them); a step folder appears under
`<output_dir>/checkpoints/` only once it is complete, so a run killed while saving resumes
from the previous one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from conditioners.locations import NoSuchPathError

from .step import TrainState


def resolve_resume(value: str | None, checkpoint_dir: Path) -> tuple[Path, int] | None:
    """`latest`, a checkpoints folder, or one step folder in it -> (checkpoints folder, step)."""
    if not value:
        return None
    path = checkpoint_dir if value == "latest" else Path(value)
    if path.name.isdigit() and path.is_dir():
        return path.parent.resolve(), int(path.name)
    steps = sorted(int(p.name) for p in path.glob("*") if p.name.isdigit()) if path.is_dir() else []
    if steps:
        return path.resolve(), steps[-1]
    if value == "latest":
        return None  # nothing saved yet: start from scratch, as the diffusers scripts do
    raise NoSuchPathError(f"--resume_from_checkpoint {value}: no checkpoint there")


class Checkpoints:
    def __init__(self, directory: Path, keep: int | None = None):
        self.directory = directory.resolve()
        self.manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        )

    def save(self, step: int, state: TrainState, position: dict[str, Any]) -> None:
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(position)),
        )

    def restore(self, step: int, like: TrainState) -> tuple[TrainState, dict[str, Any]]:
        """Restore into the shapes, dtypes and shardings of `like`."""
        abstract = jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like
        )
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()),
        )
        return restored.state, restored.data

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
