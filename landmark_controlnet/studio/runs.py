"""A training run's output folder, as the Studio's Runs view shows it while the run trains:
curves from `logs/metrics.jsonl`, validation grids by step, checkpoints and the export."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conditioners.locations import NoSuchPathError

from .paths import DataRoot

GRID = re.compile(r"step-(?P<step>\d+)\.png")
EXPORT_FILES = ("config.json", "diffusion_pytorch_model.safetensors")


@dataclass(frozen=True)
class RunView:
    output_dir: Path
    curves: dict[str, list[tuple[int, float]]]  # loss, lr, fidelity/* ... -> (step, value) in step order
    grids: list[tuple[int, Path]]  # validation/step-<N>.png, by step
    checkpoints: list[int]  # saved steps (checkpoints/<step>)
    export: Path | None  # the exported ControlNet folder, once the run finished

    @property
    def last_step(self) -> int | None:
        steps = [points[-1][0] for points in self.curves.values() if points]
        return max(steps) if steps else None


def read_run(output_dir: str, root: DataRoot) -> RunView:
    """What the run at `output_dir` (a trainer `--output_dir` inside the root) has written so far."""
    from landmark_controlnet.training.logs import read_metrics

    folder = root.resolve(output_dir)
    if not folder.is_dir():
        raise NoSuchPathError(
            f"{output_dir}: no such training output folder in the data root {root.directory}"
        )
    curves = metric_curves(read_metrics(folder / "logs"))
    grids = sorted(
        (int(match["step"]), path)
        for path in (folder / "validation").glob("step-*.png")
        if (match := GRID.fullmatch(path.name))
    )
    checkpoints = sorted(int(p.name) for p in (folder / "checkpoints").glob("*") if p.name.isdigit())
    exported = all((folder / name).is_file() for name in EXPORT_FILES)
    return RunView(folder, curves, grids, checkpoints, folder if exported else None)


def metric_curves(entries: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """Each logged number as a curve over steps (`step` and `time` are the axes, not curves)."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for entry in entries:
        for name, value in entry.items():
            if name not in ("step", "time") and isinstance(value, int | float):
                curves.setdefault(name, []).append((int(entry["step"]), float(value)))
    return curves
