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
from builders.card import CardSummary, read_card
from builders.rows import caption_text, dataset_card, dataset_splits, decode, open_dataset
from conditioners import Detection, OptionError

from ..condition import detection_json
from ..generate import DATASET_ROW, GenerateRequest, GenerateResult
from ..loaded import Loaded
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

    def write(self, base: Path) -> dict[str, Path]:
        """The files `condition` writes for this input at `base` (`out/CONDITIONER/NAME`):
        NAME.png, NAME_<extra>.png and NAME.json; returned by image name (`json` for the JSON)."""
        base.parent.mkdir(parents=True, exist_ok=True)
        pictures = {"conditioning_image": self.png, **self.extra_pngs}
        files = {
            name: base.with_name(base.name + ("" if name == "conditioning_image" else f"_{name}") + ".png")
            for name in pictures
        }
        for name, path in files.items():
            path.write_bytes(pictures[name])
        files["json"] = base.with_name(base.name + ".json")
        files["json"].write_text(self.detection_json)
        return files


@dataclass(frozen=True)
class ConditionedPhoto:
    """One photo through one conditioner in the Conditioners view: the files written (as
    `condition` writes them), the landmarks over the photo, or the one-line error."""

    photo: Path
    conditioner: str
    result: ConditionResult | None
    files: dict[str, Path]
    overlay: Path | None
    error: str | None = None


def condition_photos(
    photos: list[Path],
    names: list[str],
    options: dict[str, Any],
    size: tuple[int, int] | None,
    out_dir: Path,
    loaded: Loaded | None = None,
) -> list[ConditionedPhoto]:
    """`condition PHOTO... --conditioner NAME... --option ... --out-dir OUT_DIR` (options go to the
    conditioners that take them, as the CLI splits them); an unreadable photo is an entry with its
    one-line error, not the end of the others."""
    from ..condition import ConditionRequest, per_conditioner_options

    if not photos:
        raise OptionError("no photo given: upload one or more photos, or take one with the webcam")
    if not names:
        raise OptionError("no conditioner chosen")
    request = ConditionRequest(
        conditioners=tuple(names), inputs=(), out_dir=out_dir, options=options, size=size
    )
    done = []
    for name, chosen_options in per_conditioner_options(request):
        for photo in photos:
            try:
                result = condition(photo, name, chosen_options, size, loaded)
            except conditioners.UserError as exc:
                done.append(ConditionedPhoto(photo, name, None, {}, None, str(exc)))
                continue
            files = result.write(out_dir / result.conditioner / photo.stem)
            overlay = files["json"].with_name(f"{photo.stem}_over_photo.png")
            upright = Image.fromarray(conditioners.load_image(photo).pixels)
            landmarks_over(upright, result.detection_json).save(overlay)
            done.append(ConditionedPhoto(photo, result.conditioner, result, files, overlay))
    return done


def condition(
    photo: Path,
    conditioner: str,
    options: dict[str, Any],
    size: tuple[int, int] | None = None,
    loaded: Loaded | None = None,
) -> ConditionResult:
    """One photo through one conditioner, as `condition PHOTO --conditioner NAME --option K=V`
    (`--size WxH`). `photo` is used as given: an upload lives in the web framework's own folder;
    a typed path goes through `DataRoot.resolve` first. An unknown or mistyped option
    (`conditioners.get` checks names and types before anything loads) or an unreadable photo is a
    one-line `UserError`. `loaded` keeps the detector built between calls."""
    source = Path(os.path.abspath(photo))  # as `condition` names its inputs in the JSON
    with (loaded or Loaded()).detector(conditioner, options) as chosen:
        [result] = conditioners.condition_many(chosen, [source], size=size)
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


@dataclass(frozen=True)
class InstanceRow:
    """One detected instance, for the instance table."""

    index: int
    kind: str  # left_hand, right_hand, face, pose, animal
    handedness: str  # left or right for hands, else empty
    score: float
    points: int


def instance_rows(detection_text: str) -> list[InstanceRow]:
    """The instances of a detection JSON, in the order the detector gave them."""
    return [
        InstanceRow(
            index=index,
            kind=instance.kind,
            handedness=instance.kind.removesuffix("_hand") if instance.kind.endswith("_hand") else "",
            score=round(float(instance.score), 4),
            points=len(instance.points),
        )
        for index, instance in enumerate(Detection.from_json(detection_text).instances)
    ]


def landmarks_over(photo: Image.Image, detection_text: str, style: str | None = None) -> Image.Image:
    """The detection drawn over the photo it came from (in its own style, or `style`'s)."""
    detection = Detection.from_json(detection_text)
    drawing = conditioners.draw(detection, photo.size, style=style)
    return conditioners.overlay(photo, Image.fromarray(drawing))


def redraw(
    detection_text: str, style: str | None, size: tuple[int, int] | None, image: str = "conditioning_image"
) -> Image.Image:
    """`landmark-controlnet draw`: a stored detection drawn again in another style or size."""
    from ..condition import redraw as draw_again

    return draw_again(Detection.from_json(detection_text), "the detection", style, {}, size, image)


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


@dataclass(frozen=True)
class RowFilter:
    """Which rows a page shows: caption text (case-insensitive), instance count and kind."""

    caption: str = ""
    min_instances: int = 0
    max_instances: int | None = None
    kind: str = ""  # left_hand, right_hand, face, pose, animal; empty: any

    def __bool__(self) -> bool:
        return self != RowFilter()

    def accepts(self, caption: str, kinds: list[str]) -> bool:
        if self.caption and self.caption.lower() not in caption.lower():
            return False
        if len(kinds) < self.min_instances:
            return False
        if self.max_instances is not None and len(kinds) > self.max_instances:
            return False
        return not self.kind or self.kind in kinds


@dataclass(frozen=True)
class DatasetPage:
    rows: list[DatasetRow]
    matching: int  # rows of the split the filter accepts (all of them without a filter)
    total: int  # rows of the split


def dataset_rows(location: str, split: str, offset: int, count: int, root: DataRoot) -> list[DatasetRow]:
    """Rows `offset` .. `offset + count - 1` (fewer at the end) of `location`'s `split`, opened as
    `show`, the trainer and `evaluate` open it. `location` is a dataset or builder folder inside the
    root, a builder name or a Hub id; a split it lacks is the `SplitNotFoundError` naming those it has."""
    return dataset_page(location, split, offset, count, root).rows


def dataset_page(
    location: str, split: str, offset: int, count: int, root: DataRoot, row_filter: RowFilter | None = None
) -> DatasetPage:
    """A page of the rows `row_filter` accepts: `offset` counts accepted rows. Filtering reads only
    the caption and landmarks columns (no picture is decoded)."""
    check_page(offset, count)
    table = open_dataset(str(root.locate(location, "dataset folder")), split)
    indices = matching_indices(table, row_filter) if row_filter else range(len(table))
    if offset > len(indices):
        raise OptionError(f"offset {offset} is past the end: {location} {split} has {len(indices)} rows")
    chosen = list(indices[offset : offset + count])
    page = table.select(chosen) if chosen else []  # `select` of nothing is refused at the end
    rows = [dataset_row(index, record, location) for index, record in zip(chosen, page, strict=True)]
    return DatasetPage(rows, len(indices), len(table))


def matching_indices(table: Any, row_filter: RowFilter) -> list[int]:
    from builders.rows import caption_text

    columns = [name for name in ("caption", "landmarks") if name in table.column_names]
    text = table.select_columns(columns)
    matching = []
    for index, record in enumerate(text):
        landmarks = record.get("landmarks")
        kinds = [i.kind for i in Detection.from_json(landmarks).instances] if landmarks else []
        if row_filter.accepts(caption_text(record.get("caption")), kinds):
            matching.append(index)
    return matching


def check_page(offset: int, count: int) -> None:
    if offset < 0:
        raise OptionError(f"offset {offset}: the first row is 0")
    if not 1 <= count <= MAX_ROWS_PER_PAGE:
        raise OptionError(f"count {count}: between 1 and {MAX_ROWS_PER_PAGE} rows a page")


def dataset_row(index: int, record: dict[str, Any], location: str) -> DatasetRow:

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


@dataclass(frozen=True)
class DatasetSummary:
    splits: list[str]
    card: CardSummary | None  # None: the dataset has no card


def dataset_summary(location: str, root: DataRoot) -> DatasetSummary:
    """The splits of a dataset, and what its card says (summary, skip counts by reason)."""
    where = str(root.locate(location, "dataset folder"))
    text = dataset_card(where)
    return DatasetSummary(dataset_splits(where), read_card(text) if text is not None else None)


# -- generate ------------------------------------------------------------------------------------
def generate(request: GenerateRequest, root: DataRoot, loaded: Loaded | None = None) -> GenerateResult:
    """`landmark-controlnet generate` with the request's paths, as the user typed them, confined to
    the root (models may also be Hub ids). `loaded` keeps detectors and models between calls."""
    from .. import generate as generation

    return generation.generate(confined_generate_request(request, root), loaded)


def generate_side_by_side(
    request: GenerateRequest, second_controlnet: str, root: DataRoot, loaded: Loaded | None = None
) -> tuple[GenerateResult, GenerateResult]:
    """The request, then the same with a second ControlNet on the same pose, prompt and seeds,
    written to `out_dir/compare`."""
    first = generate(request, root, loaded)
    compare = replace(request, controlnet=second_controlnet, out_dir=Path(request.out_dir) / "compare")
    return first, generate(compare, root, loaded)


FIDELITY_COLUMNS = ("pck_0.1", "instance_recall", "mean_error", "handedness_agreement")


def generated_pictures(result: GenerateResult) -> list[tuple[Image.Image, str]]:
    """Each generated image, with the landmarks re-detected in it drawn over it when it was scored,
    captioned with its seed and PCK@0.1."""
    pictures = []
    for path, entry in zip(result.images, result.report["images"], strict=True):
        image = Image.open(path).convert("RGB")
        redetected = path.with_suffix(".json")
        if redetected.is_file():
            image = landmarks_over(image, redetected.read_text())
        pck = entry.get("fidelity", {}).get("pck_0.1")
        score = "" if "fidelity" not in entry else f", PCK@0.1 {'-' if pck is None else f'{pck:.2f}'}"
        pictures.append((image, f"{path.name}: seed {entry['seed']}{score}"))
    return pictures


def fidelity_rows(result: GenerateResult, label: str) -> list[list[Any]]:
    """[ControlNet, file, seed, *FIDELITY_COLUMNS] per scored image."""
    return [
        [label, entry["file"], entry["seed"], *(entry["fidelity"].get(k) for k in FIDELITY_COLUMNS)]
        for entry in result.report["images"]
        if "fidelity" in entry
    ]


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
