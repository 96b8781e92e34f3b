"""The Studio's Evaluate view: `evaluate` on folders inside the data root, and an `evaluate` output
read back (summary table, report picture, PCK against control strength)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conditioners.locations import NoSuchPathError

from ..evaluation.generate import TABLE_FIGURES
from .paths import DataRoot

SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.png"
PCK = "pck_0.1"


@dataclass(frozen=True)
class EvaluationView:
    out_dir: Path
    table: list[list[Any]]  # [model, strength, *TABLE_FIGURES]; model and strength empty for one folder
    reports: list[tuple[str, Path]]  # (caption, report.png)
    pck_by_strength: dict[str, list[tuple[float, float]]]  # model -> (strength, PCK@0.1), when swept


def evaluate_generated(
    generated: str, reference: str, out_dir: str, root: DataRoot, conditioner: str | None = None
) -> EvaluationView:
    """`evaluate --generated --reference --out` on folders inside the root; then its view."""
    from ..evaluation.scoring import evaluate_folder

    out = root.resolve(out_dir)
    evaluate_folder(root.resolve(generated), existing(reference, root), out, conditioner)
    return read_evaluation(out_dir, root)


def existing(location: str, root: DataRoot) -> Path:
    path = root.resolve(location)
    if not path.exists():
        raise NoSuchPathError(f"{location}: no such folder in the data root {root.directory}")
    return path


def read_evaluation(out_dir: str, root: DataRoot) -> EvaluationView:
    """An `evaluate` output folder: one scored folder, or a generate-and-score sweep over models and
    strengths (`evaluate --controlnet ... --strength 0.4,0.8 [--compare]`)."""
    out = existing(out_dir, root)
    summary_file = out / SUMMARY_FILE
    if not summary_file.is_file():
        raise NoSuchPathError(f"{out_dir}: no {SUMMARY_FILE} (not an `evaluate --out` folder)")
    summary = json.loads(summary_file.read_text())
    swept = {
        label: entry for label, entry in summary.items() if isinstance(entry, dict) and "strengths" in entry
    }
    if not swept:
        report = out / REPORT_FILE
        row = ["", "", *(summary.get(figure) for figure in TABLE_FIGURES)]
        return EvaluationView(out, [row], [("report", report)] if report.is_file() else [], {})
    table, reports, curves = [], [], {}
    for label, entry in swept.items():
        for strength, figures in entry["strengths"].items():
            table.append([label, float(strength), *(figures.get(figure) for figure in TABLE_FIGURES)])
            report = out / label / f"strength_{strength}" / REPORT_FILE
            if report.is_file():
                reports.append((f"{label}, strength {strength}", report))
            if figures.get(PCK) is not None:
                curves.setdefault(label, []).append((float(strength), float(figures[PCK])))
    return EvaluationView(out, table, reports, {k: sorted(v) for k, v in curves.items()})
