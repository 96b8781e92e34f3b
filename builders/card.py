"""The dataset card (README.md with Hub YAML) and its preview grid, regenerated after each build."""

from __future__ import annotations

import io
import json
import re
import string
from dataclasses import dataclass
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from PIL import Image

import conditioners
from conditioners.errors import UnknownNameError
from conditioners.preview import contact_sheet

from .captioners import make_captioner
from .engine import BuildReport
from .recipe import Recipe, resolve_builder
from .storage import Folder

PREVIEW_FILE = "preview.png"
PREVIEW_ROWS = 4
BASE_TAGS = ["controlnet", "landmarks", "image-to-image"]
# One line each in the card's column list, for the columns whose meaning their name does not say.
COLUMN_MEANINGS = {
    "original_size": "[height, width] of the source photo (upright, full resolution): SDXL's "
    "`original_size` size conditioning (the first two of its `time_ids`)",
    "crop_top_left": "[top, left] of `image` inside the source photo resized to `image`'s scale, "
    "[0, 0] when not cropped: SDXL's `crops_coords_top_left` conditioning (the next two `time_ids`; "
    "the last two are `image`'s own height and width)",
}


def card_yaml(
    recipe: Recipe, features: datasets.Features, reports: list[BuildReport], sizes: dict[str, int]
) -> dict[str, Any]:
    """The card's YAML; `sizes` are each split's bytes in Parquet (`num_bytes`)."""
    splits = datasets.SplitDict(
        {r.split: datasets.SplitInfo(r.split, num_bytes=sizes[r.split], num_examples=r.rows) for r in reports}
    )
    info = datasets.DatasetInfo(features=features, splits=splits)._to_yaml_dict()
    return {
        "license": recipe.card.get("license", "other"),
        "pretty_name": recipe.card.get("pretty_name", recipe.name),
        "task_categories": ["image-to-image", "text-to-image"],
        "tags": sorted(set(BASE_TAGS + [recipe.conditioner_name] + list(recipe.card.get("tags", [])))),
        "size_categories": [_size_category(sum(r.rows for r in reports))],
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": r.split, "path": f"data/{r.split}-*.parquet"} for r in reports],
            }
        ],
        "dataset_info": info,
    }


def _size_category(rows: int) -> str:
    for limit, label in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
    ):
        if rows < limit:
            return label
    return "1M<n<10M"


def write_preview(output: Folder, split: str, rows: int = PREVIEW_ROWS) -> bool:
    """Photo | conditioning image | any other image column (a mask) for the first rows."""
    cells = []
    data = output.sub("data")
    for shard in data.names(f"{split}-*.parquet"):
        with data.open(shard) as file:
            parquet = pq.ParquetFile(file)
            image_columns = _image_columns(parquet.schema_arrow)
            table = parquet.read_row_group(0, columns=["caption", *image_columns])
        table = table.slice(0, rows - len(cells))
        for row in table.to_pylist():
            images = [Image.open(io.BytesIO(row[name]["bytes"])) for name in image_columns]
            captions = [row["caption"][:60], *image_columns[1:]]
            cells.append(list(zip(images, captions, strict=True)))
        if len(cells) >= rows:
            break
    if not cells:
        return False
    buffer = io.BytesIO()
    contact_sheet(cells, tile=256).save(buffer, format="PNG")
    output.write_bytes(PREVIEW_FILE, buffer.getvalue())
    return True


def _image_columns(schema: pa.Schema) -> list[str]:
    """`image`, `conditioning_image`, then the other image columns, in schema order."""
    others = [
        field.name
        for field in schema
        if pa.types.is_struct(field.type)
        and {"bytes", "path"} <= {f.name for f in field.type}
        and field.name not in ("image", "conditioning_image")
    ]
    return ["image", "conditioning_image", *others]


def _skip_table(report: BuildReport) -> str:
    lines = ["| reason | images |", "|---|---|"]
    lines += [f"| `{reason}` | {count} |" for reason, count in report.skipped.items()]
    return "\n".join(lines) if report.skipped else "No image was skipped."


def hint_table(report: BuildReport) -> str:
    """The hinted hands (a source's hand boxes, HaGRID's) searched and not found, in hands, after a
    blank line (it follows the skip table); empty when the conditioner searched no hints."""
    if not report.hints:
        return ""
    return "\n".join(
        [
            "",
            "",
            "Hinted hands: the source gave boxes where hands are (hints), which the conditioner searched "
            "closely. These are counts of hands, not of images:",
            "",
            "| hinted hands | hands |",
            "|---|---|",
            f"| searched (boxes inside the image) | {report.hints} |",
            f"| `hint_not_found`: found by no detector pass | {report.hint_not_found} |",
            "",
            f"{report.hint_not_found} of {report.hints} hinted hands were not found. A row keeps the hands "
            "that were found in its image; an image in which no hand was found is skipped as "
            "`no_detection` (counted above).",
        ]
    )


def split_bytes(output: Folder, split: str) -> int:
    data = output.sub("data")
    return sum(data.size(name) for name in data.names(f"{split}-*.parquet"))


def build_target(recipe: Recipe) -> str:
    """What `landmark-controlnet build` takes to rebuild this dataset: the packaged builder's name,
    else the recipe's folder (a folder of your own is not found by name)."""
    try:
        if recipe.folder is None or resolve_builder(recipe.name).resolve() == recipe.folder.resolve():
            return recipe.name
    except UnknownNameError:
        pass
    return str(recipe.folder)


def write_card(
    output: Folder,
    recipe: Recipe,
    source_description: str,
    features: datasets.Features,
    reports: list[BuildReport],
) -> None:
    # An instance, not the class: the detector's name depends on options (the MediaPipe backend).
    with conditioners.get(recipe.conditioner_name, **recipe.conditioner_options) as conditioner:
        detector = f"{conditioner.detector_name} {conditioner.detector_version}"
    main = reports[0]
    preview = write_preview(output, main.split)

    values = {
        "pretty_name": recipe.card.get("pretty_name", recipe.name),
        "name": recipe.name,
        "build_target": build_target(recipe),
        "description": recipe.card.get("description", "").strip(),
        "source": source_description,
        "source_url": recipe.card.get("source_url", ""),
        "conditioner": recipe.conditioner_name,
        "conditioner_options": json.dumps(recipe.conditioner_options)
        if recipe.conditioner_options
        else "defaults",
        "detector": detector,
        "drawing": (conditioner.__doc__ or "").strip().splitlines()[0],
        "captioner": make_captioner(recipe.captioner_type, **recipe.captioner_options).describe(),
        "splits": ", ".join(f"`{r.split}`: {r.rows} rows" for r in reports),
        "rows": main.rows,
        "items": main.items,
        "skip_table": _skip_table(main),
        "hint_table": hint_table(main),
        "preview": f"![preview]({PREVIEW_FILE})" if preview else "(no rows yet)",
        "columns": "\n".join(
            f"- `{name}`" + (f": {COLUMN_MEANINGS[name]}" if name in COLUMN_MEANINGS else "")
            for name in features
        ),
    }
    body = string.Template(recipe.card_template()).safe_substitute(values)
    sizes = {r.split: split_bytes(output, r.split) for r in reports}
    header = yaml.safe_dump(card_yaml(recipe, features, reports, sizes), sort_keys=False, allow_unicode=True)
    output.write_text("README.md", f"---\n{header}---\n\n{body.strip()}\n")


# -- reading a card back -----------------------------------------------------------------------
@dataclass(frozen=True)
class CardSummary:
    """What a dataset card written by `write_card` says, read back from its README.md text."""

    pretty_name: str
    description: str
    built_with: dict[str, str]  # the "How it was built" table: conditioner, detector, captions, rows...
    skipped: dict[str, int]  # skip reason -> images (empty when none was skipped)
    split_rows: dict[str, int]


CARD_TABLE_ROW = re.compile(r"^\| (?P<key>[^|`]+?) \| (?P<value>.*) \|$", re.MULTILINE)
CARD_SKIP_ROW = re.compile(r"^\| `(?P<reason>\w+)` \| (?P<count>\d+) \|$", re.MULTILINE)


def read_card(text: str) -> CardSummary:
    """The summary of a card of ours (or the front matter and first paragraph of any other card)."""
    front, body = _split_front_matter(text)
    lines = [line.strip() for line in body.strip().splitlines()]
    title = next((line[2:] for line in lines if line.startswith("# ")), "")
    blocks = [block.strip() for block in body.split("\n\n")]
    paragraphs = [block for block in blocks if block and not block.startswith(("#", "!"))]
    splits = (front.get("dataset_info") or {}).get("splits") or []
    return CardSummary(
        pretty_name=str(front.get("pretty_name") or title),
        description=paragraphs[0] if paragraphs else "",
        built_with={m["key"].strip(): m["value"].strip() for m in CARD_TABLE_ROW.finditer(body)},
        skipped={m["reason"]: int(m["count"]) for m in CARD_SKIP_ROW.finditer(body)},
        split_rows={s["name"]: int(s.get("num_examples", 0)) for s in splits if isinstance(s, dict)},
    )


def _split_front_matter(text: str) -> tuple[dict[str, Any], str]:
    if not text.startswith("---\n"):
        return {}, text
    end = text.find("\n---", 4)
    if end < 0:
        return {}, text
    front = yaml.safe_load(text[4:end]) or {}
    return (front if isinstance(front, dict) else {}), text[end + 4 :]
