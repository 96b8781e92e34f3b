"""Microsoft FaceSynthetics: `{i:06d}.png`, `{i:06d}_ldmks.txt` (70 x/y lines), `{i:06d}_seg.png`."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import datasets

from .base import Source, SourceItem

_IMAGE = re.compile(r"^(\d{6})\.png$")


class FaceSyntheticsSource(Source):
    """Rows carry the dataset's own 70 landmarks (68 iBUG + 2 pupils) as `gt_landmarks`."""

    extra_features = {"gt_landmarks": datasets.Sequence(datasets.Sequence(datasets.Value("float32")))}

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"FaceSynthetics folder not found: {self.root}")

    def __iter__(self) -> Iterator[SourceItem]:
        for path in sorted(self.root.iterdir()):
            match = _IMAGE.match(path.name)
            if not match:
                continue
            index = match.group(1)
            landmarks_file = self.root / f"{index}_ldmks.txt"
            landmarks = []
            if landmarks_file.exists():
                landmarks = [
                    [float(v) for v in line.split()[:2]] for line in landmarks_file.read_text().splitlines()
                ]
            yield SourceItem(index, str(path), extra={"gt_landmarks": landmarks})

    def describe(self) -> str:
        return "FaceSynthetics"
