"""`--fidelity_rows N`: at each validation, whether the ControlNet's images follow their landmarks.

N fixed rows of the `--fidelity_split` split (their conditioning images, captions and stored
landmarks) are generated once per validation with the current weights, re-detected with the rows'
own conditioner and scored, exactly as `landmark-controlnet evaluate` scores. The files go to
`<output_dir>/fidelity/step-NNNNNN/`; the figures to the run's logs as `fidelity/<figure>`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from landmark_controlnet.evaluation.generate import load_rows, open_split, write_references, write_samples
from landmark_controlnet.evaluation.scoring import evaluate_folder

log = logging.getLogger("train_flax_controlnet")
LOGGED = ("instance_recall", "pck_0.05", "pck_0.1", "pck_0.2", "mean_error", "extra_instances",
          "handedness_agreement", "focus_error")  # fmt: skip


class FidelityCheck:
    """The fixed rows, read once at start-up; call it with the ControlNet's weights at a step."""

    def __init__(self, args: argparse.Namespace, sampler: Any):
        self.folder = Path(args.output_dir) / "fidelity"
        self.sampler = sampler  # the validation grid's ControlNetGenerator: one compiled sampler
        self.seed = args.seed
        self.batch_size = max(1, args.num_validation_images)
        table = open_split(args.dataset_name, args.fidelity_split)
        self.rows = load_rows(table, args.fidelity_rows, args.resolution, args.dataset_name)
        write_references(self.rows, self.folder / "references")
        log.info("fidelity: %d rows of %s (%s)", len(self.rows), args.dataset_name, args.fidelity_split)

    def __call__(self, params: Any, step: int) -> dict[str, Any]:
        """The summary of `evaluate` for this step (also written to its folder's summary.json)."""
        out = self.folder / f"step-{step:06d}"
        write_samples(
            self.sampler, params, self.rows, out / "generated", seed=self.seed, batch_size=self.batch_size,
            description=f"fidelity at step {step}",
        )  # fmt: skip
        return evaluate_folder(out / "generated", self.folder / "references", out)


def fidelity_scalars(summary: dict[str, Any]) -> dict[str, float]:
    """The figures that have a value, as `fidelity/<figure>` scalars."""
    return {f"fidelity/{name}": float(summary[name]) for name in LOGGED if summary.get(name) is not None}
