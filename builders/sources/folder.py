"""A folder of images, with optional captions and hand boxes from `metadata.jsonl`, or side-car `.txt`
captions."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from conditioners.detection import HintBox

from .base import Source, SourceItem, image_files

log = logging.getLogger(__name__)


class FolderSource(Source):
    """`root/**/*.jpg|png|...`; source_id is the path relative to `root`.

    Captions: `metadata.jsonl` lines `{"file_name": ..., "text"|"caption": ...}` (the `datasets`
    imagefolder convention), else `photo.txt` next to `photo.jpg`, else none.

    Hand boxes: a `metadata.jsonl` line may also give `"hand_boxes"`, a list of boxes where hands are,
    each `[x0, y0, x1, y1]` or `{"box": [x0, y0, x1, y1], "label": "..."}`, in pixels of the upright
    photo at full size (EXIF orientation applied), whatever the recipe's framing. They become the
    item's hints, which the MediaPipe hand conditioners search closely (small hands a whole-frame
    pass misses); the build counts the hinted hands no pass found (`hint_not_found`). An entry that is
    not such a box is left out with a warning.
    """

    def __init__(self, root: str | Path, caption_field: str | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        self.caption_field = caption_field

    def _metadata(self) -> tuple[dict[str, str], dict[str, list[HintBox]]]:
        """Captions and hand boxes by source id, from every `metadata.jsonl` below `root`."""
        captions: dict[str, str] = {}
        hints: dict[str, list[HintBox]] = {}
        fields = [self.caption_field] if self.caption_field else ["text", "caption"]
        for metadata in sorted(self.root.rglob("metadata.jsonl")):
            base = metadata.parent.relative_to(self.root)
            for line in metadata.read_text().splitlines():
                if not line.strip():
                    continue
                record = json.loads(line)
                source_id = (base / record["file_name"]).as_posix()
                caption = next((record[f] for f in fields if f in record), None)
                if caption is not None:
                    captions[source_id] = str(caption)
                if "hand_boxes" in record:
                    hints[source_id] = _hand_boxes(record["hand_boxes"], source_id)
        return captions, hints

    def __iter__(self) -> Iterator[SourceItem]:
        captions, hints = self._metadata()
        for path in image_files(self.root):
            source_id = path.relative_to(self.root).as_posix()
            caption = captions.get(source_id)
            sidecar = path.with_suffix(".txt")
            if caption is None and sidecar.exists():
                caption = sidecar.read_text().strip()
            yield SourceItem(source_id, str(path), caption, hints=hints.get(source_id, []))

    def describe(self) -> str:
        return f"image folder `{self.root.name}`"


def _hand_boxes(entries: Any, source_id: str) -> list[HintBox]:
    """`hand_boxes` of a metadata line as hints; entries that are not boxes are left out."""
    if not isinstance(entries, list):
        log.warning("%s: `hand_boxes` is not a list; no hand hints", source_id)
        return []
    hints = []
    for entry in entries:
        box, label = (entry.get("box"), entry.get("label", "")) if isinstance(entry, dict) else (entry, "")
        if (
            isinstance(box, (list, tuple))
            and len(box) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)
        ):
            hints.append(HintBox(*(float(v) for v in box), label=str(label)))
        else:
            log.warning("%s: hand box %r is not [x0, y0, x1, y1] in pixels; left out", source_id, entry)
    return hints
