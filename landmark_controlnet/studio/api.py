"""The Studio's endpoints: condition a photo, page through a dataset, generate. Each gives what the
CLI gives for the same inputs, by the CLI's own code paths; mistakes are one-line `UserError`s."""

from __future__ import annotations

import io
import os
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image

import conditioners
from conditioners import Detection, OptionError

from ..condition import detection_json
from ..generate import DATASET_ROW, GenerateRequest, GenerateResult
from .paths import DataRoot

# A page of rows is decoded into memory at once: a request for more is refused, not served slowly.
MAX_ROWS_PER_PAGE = 100


# -- condition -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConditionResult:
    """What `landmark-controlnet condition` writes for one photo, in memory: `NAME.png` as `png`,
    `NAME_<extra>.png` as `extra_pngs`, `NAME.json` as `detection_json` (byte for byte)."""

    conditioner: str
    png: bytes
    extra_pngs: dict[str, bytes]
    detection_json: str
    instances: int
    skipped: str | None  # why no landmarks were kept (e.g. no hand found); the image is then blank

    @property
    def image(self) -> Image.Image:
        return Image.open(io.BytesIO(self.png))


def condition(
    photo: Path, conditioner: str, options: dict[str, Any], size: tuple[int, int] | None = None
) -> ConditionResult:
    """One photo through one conditioner, as `condition PHOTO --conditioner NAME --option K=V`
    (`--size WxH`). `photo` is used as given: an upload lives in the web framework's own folder;
    a typed path goes through `DataRoot.resolve` first. An unknown or mistyped option
    (`conditioners.get` checks names and types before anything loads) or an unreadable photo is a
    one-line `UserError`."""
    source = Path(os.path.abspath(photo))  # as `condition` names its inputs in the JSON
    with conditioners.get(conditioner, **options) as chosen:
        [result] = conditioners.condition_many(chosen, [source], size=size)  # run through, then close
    if not result.ok:
        raise conditioners.UserError(f"{photo}: unreadable ({result.detection.skip_message})")
    return ConditionResult(
        conditioner=chosen.name,
        png=result.to_png(),
        extra_pngs=dict(result.extra_pngs),
        detection_json=detection_json(result, source),
        instances=len(result.detection.instances),
        skipped=result.skipped,
    )


# -- datasets ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetRow:
    """One dataset row for display. Pictures are PIL images, as `datasets` decodes them (and as web
    image components take them), upright RGB; `landmarks` is the row's detection JSON, if any."""

    index: int
    caption: str
    photo: Image.Image | None
    conditioning_image: Image.Image | None
    landmarks: str | None
    instances: int  # 0 when the row has no landmarks
    kinds: dict[str, int]  # instance kind (`left_hand`, `face`, ...) -> how many


def dataset_rows(location: str, split: str, offset: int, count: int, root: DataRoot) -> list[DatasetRow]:
    """Rows `offset` .. `offset + count - 1` (fewer at the end) of `location`'s `split`, opened as
    `show`, the trainer and `evaluate` open it. `location` is a dataset or builder folder inside the
    root, a builder name or a Hub id; a split it lacks is the `SplitNotFoundError` naming those it has."""
    from builders.run import open_dataset

    check_page(offset, count)
    where = root.locate(location, "dataset folder")
    table = open_dataset(str(where), split)
    if offset > len(table):
        raise OptionError(f"offset {offset} is past the end: {location} {split} has {len(table)} rows")
    stop = min(offset + count, len(table))
    # `select` refuses an empty range at the end of the table
    page = table.select(range(offset, stop)) if stop > offset else []
    return [dataset_row(index, record, location) for index, record in enumerate(page, start=offset)]


def check_page(offset: int, count: int) -> None:
    if offset < 0:
        raise OptionError(f"offset {offset}: the first row is 0")
    if not 1 <= count <= MAX_ROWS_PER_PAGE:
        raise OptionError(f"count {count}: between 1 and {MAX_ROWS_PER_PAGE} rows a page")


def dataset_row(index: int, record: dict[str, Any], location: str) -> DatasetRow:
    from ..training.data import caption_text, decode

    def picture(column: str) -> Image.Image | None:
        value = record.get(column)
        return None if value is None else decode(value, f"{location} row {index} {column}")

    landmarks = record.get("landmarks") or None
    instances = Detection.from_json(landmarks).instances if landmarks else []
    return DatasetRow(
        index=index,
        caption=caption_text(record.get("caption")),
        photo=picture("image"),
        conditioning_image=picture("conditioning_image"),
        landmarks=landmarks,
        instances=len(instances),
        kinds=dict(Counter(instance.kind for instance in instances)),
    )


# -- generate ------------------------------------------------------------------------------------
def generate(request: GenerateRequest, root: DataRoot) -> GenerateResult:
    """`landmark-controlnet generate` with the request's paths, as the user typed them, confined to
    the root (models may also be Hub ids)."""
    from .. import generate as generation

    return generation.generate(confined_generate_request(request, root))


def confined_generate_request(request: GenerateRequest, root: DataRoot) -> GenerateRequest:
    """`request` with every path made absolute inside the root; anything outside it is refused
    before a model loads."""
    return replace(
        request,
        base_model=str(root.locate(request.base_model, "base model folder")),
        controlnet=str(root.locate(request.controlnet, "ControlNet folder")),
        pose=confined_pose(request.pose, root),
        out_dir=root.resolve(request.out_dir),
    )


def confined_pose(pose: str, root: DataRoot) -> str:
    """A photo or detection JSON inside the root, or DATASET_DIR#ROW with its folder inside it (a
    file whose name holds `#` is still a file, as `generate` reads it)."""
    path = root.resolve(pose)
    match = DATASET_ROW.match(pose)
    if path.exists() or not match:
        return str(path)
    return f"{root.resolve(match['dataset'])}#{match['row']}"
