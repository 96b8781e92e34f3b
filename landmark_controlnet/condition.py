"""`landmark-controlnet condition` and `draw`: conditioning images from photos or stored landmarks."""

from __future__ import annotations

import json
import math
import os
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

import conditioners
from conditioners import Conditioned, Conditioner, Detection, condition_many, contact_sheet
from conditioners.images import IMAGE_SUFFIXES, encode_png
from conditioners.preview import thumbnail

SHEET_TILE = 256
# Inputs per contact sheet: more go on further sheets, so that no sheet grows without bound.
SHEET_INPUTS = 48
CONDITIONING_IMAGE = "conditioning_image"


@dataclass(frozen=True)
class ConditionRequest:
    """What `landmark-controlnet condition` was asked to do."""

    conditioners: tuple[str, ...]
    inputs: tuple[str, ...]
    out_dir: Path
    options: dict[str, Any] = field(default_factory=dict)
    size: tuple[int, int] | None = None
    contact_sheet: Path | None = None


def conditioner_names(values: Sequence[str]) -> tuple[str, ...]:
    """`--conditioner` values, repeated or comma lists, in order, each once."""
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class Input:
    """An input image and its output name (relative, without suffix)."""

    path: Path
    name: str


def expand_inputs(inputs: Iterable[str]) -> tuple[list[Path], list[str]]:
    """The input images, each once (absolute paths), and the output name each would like: files as
    given, by their stem; folders replaced by the images inside them (recursively, sorted), by their
    paths inside the folder. `output_names` makes the names unique."""
    found: list[tuple[Path, str]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            images = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            found += [(p, p.relative_to(path).with_suffix("").as_posix()) for p in images]
        else:
            found.append((path, path.stem))
    wanted = {Path(os.path.abspath(p)): name for p, name in reversed(found)}  # the first mention's
    if len(wanted) < len(found):
        print(f"{len(found) - len(wanted)} input(s) given twice: each is conditioned once", file=sys.stderr)
    paths = list(dict.fromkeys(Path(os.path.abspath(p)) for p, _ in found))
    return paths, [wanted[p] for p in paths]


def output_names(paths: Sequence[Path], wanted: Sequence[str], extras: Sequence[str] = ()) -> list[str]:
    """Output names that no two inputs share: a folder's images keep their paths inside the
    folder, a file its stem. Inputs that would share a name take their path from the folder
    their paths share (`a/photo.jpg`, `b/photo.jpg` -> `a/photo`, `b/photo`), keep the suffix
    where only it differs, and then `~2`, `~3`, until none of an input's files (`NAME.json`,
    `NAME.png`, `NAME_<extra>.png`) meets another's."""
    names = list(wanted)
    for clash in _clashes(names):
        root = os.path.commonpath([os.path.dirname(paths[i]) for i in clash])
        for i in clash:
            names[i] = Path(os.path.relpath(paths[i], root)).with_suffix("").as_posix()
    for clash in _clashes(names):
        for i in clash:
            names[i] = f"{names[i]}{paths[i].suffix}"
    taken: set[str] = set()
    for i, name in enumerate(names):
        count = 1
        while not taken.isdisjoint(output_files(names[i], extras)):
            count += 1
            names[i] = f"{name}~{count}"
        taken.update(output_files(names[i], extras))
    return names


def _clashes(names: Sequence[str]) -> list[list[int]]:
    """The indices of names held by more than one input, a group per name."""
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(name, []).append(i)
    return [group for group in groups.values() if len(group) > 1]


def output_files(name: str, extras: Sequence[str] = ()) -> list[str]:
    """The files one input writes under its conditioner's folder."""
    return [f"{name}.json", f"{name}.png", *(f"{name}_{extra}.png" for extra in extras)]


def run_condition(request: ConditionRequest) -> int:
    """Every conditioner over every input, each into `out_dir/<conditioner>/`; one JSON report
    line per conditioner. Exit 1 when no input could be read, else 0."""
    paths, wanted = expand_inputs(request.inputs)
    if not paths:
        raise conditioners.UserError("condition: no input images given (files or folders of images)")
    chosen = [conditioners.get(name, **options) for name, options in per_conditioner_options(request)]
    unreadable_everywhere = True
    for conditioner in chosen:
        names = output_names(paths, wanted, conditioner.extra_images)
        inputs = [Input(path, name) for path, name in zip(paths, names, strict=True)]
        with conditioner:
            counts = condition_into(conditioner, inputs, request)
        print(json.dumps(counts))
        unreadable_everywhere = unreadable_everywhere and counts["unreadable"] == len(inputs)
    return 1 if unreadable_everywhere else 0


def per_conditioner_options(request: ConditionRequest) -> list[tuple[str, dict[str, Any]]]:
    """Each conditioner with the options it takes: with several conditioners, an option goes to
    those that take it, and one that none takes is an error."""
    if len(request.conditioners) == 1:
        return [(request.conditioners[0], request.options)]
    accepted = {
        name: set(conditioners.accepted_options(conditioners.conditioner_class(name)))
        for name in request.conditioners
    }
    unused = sorted(set(request.options) - set().union(*accepted.values()))
    if unused:
        raise conditioners.OptionError(
            f"--option {', '.join(unused)}: none of {', '.join(request.conditioners)} takes it"
        )
    return [
        (name, {k: v for k, v in request.options.items() if k in accepted[name]})
        for name in request.conditioners
    ]


def condition_into(
    conditioner: Conditioner, inputs: list[Input], request: ConditionRequest
) -> dict[str, Any]:
    out_dir = request.out_dir / conditioner.name
    counts: Counter[str] = Counter()
    sheet_rows = []
    progress = tqdm(total=len(inputs), desc=conditioner.name, unit="img")
    for result in condition_many(conditioner, [i.path for i in inputs], size=request.size):
        item = inputs[result.index]
        counts[_write_result(result, out_dir / item.name, item.path)] += 1
        if request.contact_sheet:
            sheet_rows.append(_sheet_row(result, item.name))
        progress.update()
        progress.set_postfix(counts, refresh=False)
    progress.close()
    report: dict[str, Any] = {"conditioner": conditioner.name, "out_dir": str(out_dir), "inputs": len(inputs)}
    report |= {key: counts[key] for key in ("kept", "skipped", "unreadable")}
    if request.contact_sheet:
        sheet = sheet_path(request.contact_sheet, conditioner.name, len(request.conditioners))
        report["contact_sheets"] = [str(p) for p in save_contact_sheets(sheet_rows, sheet, conditioner.name)]
    return report


def sheet_path(path: Path, conditioner_name: str, conditioner_count: int) -> Path:
    """`--contact-sheet` as given for one conditioner; `<stem>_<conditioner><suffix>` for several."""
    return path if conditioner_count == 1 else path.with_name(f"{path.stem}_{conditioner_name}{path.suffix}")


def save_contact_sheets(
    rows: list[list[tuple[Image.Image | None, str]]], path: Path, title: str
) -> list[Path]:
    """Rows (one per input) laid out as a grid, `SHEET_INPUTS` inputs to a sheet: `path`, then
    `<stem>_2<suffix>`, ... A sheet stays near square, whatever the number of inputs."""
    pages = [rows[i : i + SHEET_INPUTS] for i in range(0, len(rows), SHEET_INPUTS)] or [[]]
    written = []
    for number, page in enumerate(pages, start=1):
        cells = max((len(row) for row in page), default=1)
        per_line = max(1, math.ceil(math.sqrt(len(page) / cells)))
        lines = [
            [cell for row in page[i : i + per_line] for cell in _padded(row, cells)]
            for i in range(0, len(page), per_line)
        ]
        target = path if number == 1 else path.with_name(f"{path.stem}_{number}{path.suffix}")
        target.parent.mkdir(parents=True, exist_ok=True)
        label = f"{title}: inputs {(number - 1) * SHEET_INPUTS + 1}-{(number - 1) * SHEET_INPUTS + len(page)}"
        contact_sheet(lines, tile=SHEET_TILE, title=label).save(target)
        written.append(target)
    return written


def _padded(row: list[tuple[Image.Image | None, str]], cells: int) -> list[tuple[Image.Image | None, str]]:
    return row + [(None, "")] * (cells - len(row))


def _write_result(result: Conditioned, base: Path, source: Path) -> str:
    """`NAME.json` for every input (naming it in `extra.input`); `NAME.png` and
    `NAME_<extra>.png` for readable ones."""
    base.parent.mkdir(parents=True, exist_ok=True)
    _beside(base, ".json").write_text(detection_json(result, source))
    if not result.ok:
        tqdm.write(f"unreadable: {result.name}: {result.detection.skip_message}", file=sys.stderr)
        return "unreadable"
    if result.skipped == conditioners.SkipReason.DETECTOR_ERROR:
        tqdm.write(f"detector error: {result.name}: {result.detection.skip_message}", file=sys.stderr)
    _beside(base, ".png").write_bytes(result.png)
    for name, png in result.extra_pngs.items():
        _beside(base, f"_{name}.png").write_bytes(png)
    return "skipped" if result.skipped else "kept"


def detection_json(result: Conditioned, source: Path) -> str:
    """`NAME.json` as `condition` writes it: the detection, naming its input in `extra.input`."""
    detection = replace(result.detection, extra={**result.detection.extra, "input": str(source)})
    return detection.to_json(indent=1)


def _beside(base: Path, ending: str) -> Path:
    """`base` with `ending` appended: names may hold dots (`photo.jpg`), so never `with_suffix`."""
    return base.with_name(base.name + ending)


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
    if out.suffix.lower() != ".png":
        raise conditioners.OptionError(f"--out {out}: draw writes PNG (exact colours); name the file .png")
    detection = Detection.from_file(detection_path)
    picture = redraw(detection, str(detection_path), conditioner_name, options, size, image)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(encode_png(picture))
    return 0


def redraw(
    detection: Detection,
    where: str,
    conditioner_name: str | None = None,
    options: dict[str, Any] | None = None,
    size: tuple[int, int] | None = None,
    image: str = CONDITIONING_IMAGE,
) -> Image.Image:
    """A stored detection drawn again, in `conditioner_name`'s style (default: its own) at `size`:
    its conditioning image or an extra image by name. `where` names the detection in errors. No
    detector runs."""
    if detection.skipped == conditioners.SkipReason.UNREADABLE:
        raise conditioners.OptionError(f"{where}: its input was unreadable, so there is nothing to draw")
    conditioner = conditioners.get(conditioner_name or detection.conditioner, **(options or {}))
    if image in conditioner.extra_images:
        return Image.fromarray(conditioner.render_extra(image, detection, size), "L")
    if image != CONDITIONING_IMAGE:
        choices = ", ".join([CONDITIONING_IMAGE, *conditioner.extra_images])
        raise conditioners.OptionError(f"--image {image}: {conditioner.name} draws {choices}")
    picture = conditioner.render(detection, size).to_image()
    if detection.instances and picture.convert("L").getbbox() is None:
        kinds = ", ".join(sorted({i.kind for i in detection.instances}))
        raise conditioners.OptionError(
            f"{conditioner.name} draws none of {where}'s instances ({kinds}): use a conditioner "
            f"that draws them, such as its own, {detection.conditioner}"
        )
    return picture
