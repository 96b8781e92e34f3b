"""`landmark-controlnet evaluate --generated DIR --reference DIR`: score images from any tool.

`--reference` holds the `condition` command's `NAME.json` detections (its `out-dir/CONDITIONER`
folder, subfolders included); `--generated` holds `NAME.<ext>` or several samples
`NAME_<k>.<ext>`, in the same subfolders. Each generated image is re-detected with
the reference's conditioner, the reference is stretched to the generated image's size (as the
conditioning drawing is), and the two are scored by `metrics.score_row`.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

import conditioners
from conditioners import Conditioned, Detection, condition_many, contact_sheet, overlay
from conditioners.errors import UserError
from conditioners.images import IMAGE_SUFFIXES

from .metrics import RowScore, score_row

SAMPLE_STEM = re.compile(r"^(?P<stem>.+)_(?P<sample>\d+)$")
REPORT_ROWS = 4  # worst and best rows each in the report picture
REPORT_TILE = 256


@dataclass
class Sample:
    stem: str
    sample: int
    path: Path | None  # None: no generated file for this reference (a full miss)


def load_references(reference_dir: Path) -> dict[str, Detection]:
    """Every `NAME.json` detection under `reference_dir` (subfolders too, as `condition` mirrors
    its inputs' folders) that has something to score against; keyed by NAME, the path inside
    `reference_dir` without the suffix."""
    if not reference_dir.is_dir():
        raise UserError(f"--reference {reference_dir}: no such folder")
    references = {}
    for path in sorted(reference_dir.rglob("*.json")):
        detection = Detection.from_file(path)
        if detection.skipped != conditioners.SkipReason.UNREADABLE:
            references[relative_stem(path, reference_dir)] = detection
    if not references:
        raise UserError(f"{reference_dir}: no detection JSONs (`landmark-controlnet condition` writes them)")
    return references


def relative_stem(path: Path, folder: Path) -> str:
    return path.relative_to(folder).with_suffix("").as_posix()


def find_samples(generated_dir: Path, stems: set[str]) -> tuple[list[Sample], list[Path]]:
    """Generated images per reference name (`NAME.png` or `NAME_<k>.png`, in the same subfolders),
    and the files that belong to no reference."""
    samples, strays = [], []
    files = sorted(p for p in generated_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    for path in files:
        stem = relative_stem(path, generated_dir)
        match = SAMPLE_STEM.match(stem)
        if stem in stems:
            samples.append(Sample(stem, 0, path))
        elif match and match["stem"] in stems:
            samples.append(Sample(match["stem"], int(match["sample"]), path))
        else:
            strays.append(path)
    found = {sample.stem for sample in samples}
    samples += [Sample(stem, 0, None) for stem in sorted(stems - found)]
    return sorted(samples, key=lambda s: (s.stem, s.sample)), strays


def conditioner_name(references: dict[str, Detection], requested: str | None) -> str:
    if requested:
        return requested
    names = sorted({detection.conditioner for detection in references.values()})
    if len(names) != 1:
        raise UserError(f"the reference JSONs come from several conditioners ({names}): pass --conditioner")
    return names[0]


def stretched(reference: Detection, size: tuple[int, int]) -> Detection:
    scale = (size[0] / reference.width, size[1] / reference.height)
    return reference.transformed(scale, (0.0, 0.0), size)


def score_samples(
    references: dict[str, Detection], samples: list[Sample], conditioner: conditioners.Conditioner
) -> list[tuple[Sample, Conditioned | None, RowScore]]:
    """Re-detect every generated image (in order, I/O overlapped) and score it."""
    present = [s for s in samples if s.path is not None]
    results: dict[tuple[str, int], Conditioned] = {}
    progress = tqdm(total=len(present), desc=f"evaluate {conditioner.name}", unit="img")
    for result in condition_many(conditioner, [s.path for s in present], render=False):
        results[present[result.index].stem, present[result.index].sample] = result
        progress.update()
    progress.close()
    focus = conditioner.focus_points
    scored = []
    for sample in samples:
        result = results.get((sample.stem, sample.sample))
        readable = result is not None and result.ok
        if result is not None and not readable:
            tqdm.write(f"unreadable: {sample.path}: {result.detection.skip_message}", file=sys.stderr)
        generated = result.detection if readable else None
        size = generated.size if generated else references[sample.stem].size
        reference = stretched(references[sample.stem], size)
        scored.append((sample, result if readable else None, score_row(reference, generated, focus)))
    return scored


def row_record(sample: Sample, score: RowScore) -> dict[str, Any]:
    status = "missing" if sample.path is None else ("unreadable" if score.missed_images else "scored")
    file = None if sample.path is None else sample.path.name
    return {"stem": sample.stem, "sample": sample.sample, "file": file, "status": status, **score.summary()}


def report_rows(
    scored: list[tuple[Sample, Conditioned | None, RowScore]],
    references: dict[str, Detection],
    conditioner: conditioners.Conditioner,
) -> list[list[tuple[Image.Image | None, str]]]:
    """Reference drawing | generated image | its re-detection drawn over it, worst rows first."""

    def quality(item: tuple[Sample, Conditioned | None, RowScore]) -> tuple[float, float]:
        summary = item[2].summary()
        return (summary["pck_0.1"] or 0.0, -(summary["mean_error"] or 1.0))

    ranked = sorted(scored, key=quality)
    chosen = ranked if len(ranked) <= 2 * REPORT_ROWS else ranked[:REPORT_ROWS] + ranked[-REPORT_ROWS:]
    rows = []
    for sample, result, score in chosen:
        pck = score.summary()["pck_0.1"]
        label = f"{sample.stem}_{sample.sample}: PCK@0.1 {'-' if pck is None else f'{pck:.2f}'}"
        drawing = conditioner.render(references[sample.stem]).to_image().convert("RGB")
        if result is None:
            rows.append([(drawing, label), (None, "missing or unreadable"), (None, "")])
            continue
        photo = Image.fromarray(result.photo.pixels)
        redetected = overlay(photo, conditioner.render(result.detection).to_image())
        rows.append([(drawing, label), (photo, "generated"), (redetected, "re-detected")])
    return rows


def total_score(scores: Iterable[RowScore]) -> RowScore:
    """The scores of several images merged: the summary's figures are over all of them."""
    total = RowScore(rows=0)
    for score in scores:
        total = total.merge(score)
    return total


def evaluate_folder(
    generated_dir: Path,
    reference_dir: Path,
    out_dir: Path,
    conditioner: str | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score, write `summary.json`, `rows.jsonl` and `report.png` under `out_dir`; return the summary."""
    if not generated_dir.is_dir():
        raise UserError(f"--generated {generated_dir}: no such folder")
    references = load_references(reference_dir)
    samples, strays = find_samples(generated_dir, set(references))
    name = conditioner_name(references, conditioner)
    with conditioners.get(name, **(options or {})) as detector:
        scored = score_samples(references, samples, detector)
        out_dir.mkdir(parents=True, exist_ok=True)
        rows = [row_record(sample, score) for sample, _, score in scored]
        (out_dir / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        sheet = contact_sheet(
            report_rows(scored, references, detector), REPORT_TILE, f"{name}: worst and best rows"
        )
        sheet.save(out_dir / "report.png", compress_level=1)  # mostly photos: zlib's effort buys little
    unreadable = [str(sample.path) for sample, result, _ in scored if sample.path and result is None]
    summary = {
        "conditioner": name,
        **total_score(score for _, _, score in scored).summary(),
        "missing": sum(sample.path is None for sample in samples),
        "unreadable": len(unreadable),
        "unreadable_files": unreadable,
        "unmatched_files": [str(path) for path in strays],
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
