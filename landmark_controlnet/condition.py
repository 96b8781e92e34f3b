"""`landmark-controlnet condition` and `draw`: conditioning images from photos or stored landmarks."""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

import conditioners
from conditioners.detection import Detection
from conditioners.preview import contact_sheet, thumbnail
from conditioners.runner import Outcome, condition_many

SHEET_TILE = 256
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


def expand_inputs(inputs: Iterable[str]) -> list[Path]:
    """Files as given; folders replaced by the images inside them (recursively, sorted)."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            paths.append(path)
    return paths


def unique_stems(paths: Sequence[Path]) -> list[str]:
    """File stems, with a numeric suffix where two inputs share one."""
    seen: Counter[str] = Counter()
    stems = []
    for path in paths:
        stem = path.stem
        seen[stem] += 1
        stems.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem] - 1}")
    return stems


def run_condition(
    conditioner_name: str,
    options: dict[str, Any],
    inputs: Sequence[str],
    out_dir: Path,
    size: tuple[int, int] | None = None,
    contact_sheet_path: Path | None = None,
) -> int:
    paths = expand_inputs(inputs)
    if not paths:
        print("no input images given", file=sys.stderr)
        return 2
    out_dir.mkdir(parents=True, exist_ok=True)
    stems = unique_stems(paths)
    counts: Counter[str] = Counter()
    sheet_rows = []
    with conditioners.get(conditioner_name, **options) as conditioner:
        progress = tqdm(total=len(paths), desc=conditioner_name, unit="img")
        for outcome in condition_many(conditioner, paths, size=size):
            counts[_write_outcome(outcome, out_dir / stems[outcome.index])] += 1
            if contact_sheet_path:
                sheet_rows.append(_sheet_row(outcome, stems[outcome.index]))
            progress.update()
            progress.set_postfix(counts, refresh=False)
        progress.close()
    if contact_sheet_path:
        title = f"{conditioner_name}: {len(paths)} inputs"
        contact_sheet(sheet_rows, tile=SHEET_TILE, title=title).save(contact_sheet_path)
    print(json.dumps({"conditioner": conditioner_name, "out_dir": str(out_dir), **counts}))
    return 1 if counts["unreadable"] == len(paths) else 0


def _write_outcome(outcome: Outcome, stem_path: Path) -> str:
    if not outcome.ok:
        tqdm.write(f"unreadable: {outcome.error}", file=sys.stderr)
        return "unreadable"
    stem_path.with_suffix(".png").write_bytes(outcome.png)
    stem_path.with_suffix(".json").write_text(outcome.detection.to_json(indent=1))
    return "skipped" if outcome.detection.skipped else "kept"


def _sheet_row(outcome: Outcome, stem: str) -> list[tuple[Image.Image | None, str]]:
    if not outcome.ok:
        return [(None, f"{stem}: unreadable"), (None, outcome.error.reason)]
    photo = Image.fromarray(conditioners.load_image(outcome.source, long_side=SHEET_TILE).pixels)
    status = outcome.detection.skipped or f"{len(outcome.detection.instances)} found"
    return [(photo, stem), (thumbnail(outcome.canvas.to_image(), SHEET_TILE), status)]


def run_draw(
    detection_path: Path,
    out: Path,
    conditioner_name: str | None,
    options: dict[str, Any],
    size: tuple[int, int] | None,
) -> int:
    detection = Detection.from_json(detection_path.read_text())
    conditioner = conditioners.get(conditioner_name or detection.conditioner, **options)
    canvas = conditioner.render(detection, size)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(canvas.to_png())
    return 0
