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
from conditioners import Conditioned, Detection, condition_many, contact_sheet
from conditioners.images import IMAGE_SUFFIXES, encode_png
from conditioners.preview import thumbnail

SHEET_TILE = 256
CONDITIONING_IMAGE = "conditioning_image"


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
        for result in condition_many(conditioner, paths, size=size):
            counts[_write_result(result, out_dir / stems[result.index])] += 1
            if contact_sheet_path:
                sheet_rows.append(_sheet_row(result, stems[result.index]))
            progress.update()
            progress.set_postfix(counts, refresh=False)
        progress.close()
    if contact_sheet_path:
        title = f"{conditioner_name}: {len(paths)} inputs"
        contact_sheet(sheet_rows, tile=SHEET_TILE, title=title).save(contact_sheet_path)
    print(json.dumps({"conditioner": conditioner_name, "out_dir": str(out_dir), **counts}))
    return 1 if counts["unreadable"] == len(paths) else 0


def _write_result(result: Conditioned, stem_path: Path) -> str:
    """`<stem>.json` for every input; `<stem>.png` and `<stem>_<extra>.png` for readable ones."""
    stem_path.with_suffix(".json").write_text(result.detection.to_json(indent=1))
    if not result.ok:
        tqdm.write(f"unreadable: {result.name}: {result.detection.skip_message}", file=sys.stderr)
        return "unreadable"
    if result.skipped == conditioners.SkipReason.DETECTOR_ERROR:
        tqdm.write(f"detector error: {result.name}: {result.detection.skip_message}", file=sys.stderr)
    stem_path.with_suffix(".png").write_bytes(result.png)
    for name, png in result.extra_pngs.items():
        stem_path.with_name(f"{stem_path.name}_{name}.png").write_bytes(png)
    return "skipped" if result.skipped else "kept"


def _sheet_row(result: Conditioned, stem: str) -> list[tuple[Image.Image | None, str]]:
    if not result.ok:
        return [(None, f"{stem}: unreadable"), (None, result.detection.skip_message or "")]
    photo = Image.fromarray(result.photo.pixels)
    status = result.skipped or f"{len(result.detection.instances)} found"
    drawings = [(thumbnail(result.image, SHEET_TILE), status)]
    drawings += [(result.extra_image(name), name) for name in result.extras]
    return [(photo, stem), *drawings]


def run_draw(
    detection_path: Path,
    out: Path,
    conditioner_name: str | None,
    options: dict[str, Any],
    size: tuple[int, int] | None,
    image: str = CONDITIONING_IMAGE,
) -> int:
    """Re-draw a stored detection: its conditioning image, or one of its extra images by name."""
    if not detection_path.is_file():
        raise conditioners.OptionError(f"{detection_path}: no such detection JSON (condition writes them)")
    detection = Detection.from_json(detection_path.read_text())
    if detection.skipped == conditioners.SkipReason.UNREADABLE:
        raise conditioners.OptionError(
            f"{detection_path}: its input was unreadable, so there is nothing to draw"
        )
    conditioner = conditioners.get(conditioner_name or detection.conditioner, **options)
    if image == CONDITIONING_IMAGE:
        picture = conditioner.render(detection, size).to_image()
    elif image in conditioner.extra_images:
        picture = Image.fromarray(conditioner.render_extra(image, detection, size), "L")
    else:
        choices = ", ".join([CONDITIONING_IMAGE, *conditioner.extra_images])
        raise conditioners.OptionError(f"--image {image}: {conditioner.name} draws {choices}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(encode_png(picture))
    return 0
