"""Reference landmarks of the MediaPipe conditioners on every shared photo, and the check against them.

The stored file was computed with mediapipe 0.10.21 on numpy 1.26 (the lock before the move to
numpy 2), so that any later MediaPipe build can be checked against it:

    .venv/bin/python tests/mediapipe_reference.py --write

It is a derived artefact, not a photo: points only (x, y in input pixels, rounded to 1e-3 px),
with each photo's size and skip reason.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np

REFERENCE = Path(__file__).resolve().parent / "reference" / "mediapipe_0.10.21_landmarks.json.gz"
CONDITIONERS = ("hand_standard", "face_pupils", "holistic")


def shared_photos(data_dir: Path) -> list[str]:
    with open(data_dir / "MANIFEST.csv", newline="") as f:
        return sorted(row["file"] for row in csv.DictReader(f) if row["file"].startswith("images/"))


# The reference is MediaPipe's own single pass: the hand search (tested against it on its own) is off.
OPTIONS = {"hand_standard": {"hand_regions": "none"}}


def detect_all(
    data_dir: Path, options: dict[str, dict[str, Any]] = OPTIONS, names: tuple[str, ...] = CONDITIONERS
) -> dict[str, dict[str, Any]]:
    """{conditioner: {photo: {"size", "skipped", "instances": [{"kind", "xy"}]}}} for every photo."""
    import conditioners
    from conditioners.images import ImageLoadError

    found: dict[str, dict[str, Any]] = {}
    for name in names:
        found[name] = {}
        with conditioners.get(name, **options.get(name, {})) as conditioner:
            for photo in shared_photos(data_dir):
                try:
                    detection = conditioner.detect(data_dir / photo)
                except ImageLoadError as error:
                    detection = conditioner.unreadable(error)
                found[name][photo] = {
                    "size": [detection.width, detection.height],
                    "skipped": detection.skipped and str(detection.skipped),
                    "instances": [
                        {"kind": inst.kind, "xy": np.round(inst.xy, 3).tolist()}
                        for inst in detection.instances
                    ],
                }
    return found


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {package: version(package) for package in ("mediapipe", "numpy", "opencv-contrib-python")}


def write(data_dir: Path) -> Path:
    REFERENCE.parent.mkdir(exist_ok=True)
    payload = {"versions": versions(), "detections": detect_all(data_dir)}
    with gzip.open(REFERENCE, "wt", encoding="utf-8", compresslevel=9) as f:
        json.dump(payload, f, separators=(",", ":"), sort_keys=True)
    return REFERENCE


def read() -> dict[str, Any]:
    with gzip.open(REFERENCE, "rt", encoding="utf-8") as f:
        return json.load(f)


def differences(reference: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Every disagreement, in words: a photo found or skipped differently, or a point further than
    1e-4 of the image's long side from where the reference put it."""
    problems = []
    for name, photos in reference.items():
        for photo, want in photos.items():
            got = current[name].get(photo)
            where = f"{name} on {photo}"
            if got is None:
                problems.append(f"{where}: not detected now")
                continue
            kinds = ([i["kind"] for i in want["instances"]], [i["kind"] for i in got["instances"]])
            if got["size"] != want["size"] or got["skipped"] != want["skipped"] or kinds[0] != kinds[1]:
                now, was = (f"{d['size']} {d['skipped']} {k}" for d, k in ((got, kinds[1]), (want, kinds[0])))
                problems.append(f"{where}: {now}, was {was}")
                continue
            tolerance = 1e-4 * max(want["size"])
            for was, now in zip(want["instances"], got["instances"], strict=True):
                xy = np.array(now["xy"], float)
                if not np.isfinite(xy).all():  # a NaN landmark is a defect, not a point to skip
                    problems.append(f"{where}: {now['kind']} has landmarks that are not finite")
                    continue
                error = float(np.max(np.abs(np.array(was["xy"], float) - xy), initial=0))
                if not error <= tolerance:
                    problems.append(
                        f"{where}: {was['kind']} moved {error:.4f} px (tolerance {tolerance:.4f})"
                    )
    return problems


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--write", action="store_true", help=f"(re)write {REFERENCE.name}")
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    args = parser.parse_args()
    if args.write:
        print(write(args.data))
    else:
        print(json.dumps(differences(read()["detections"], detect_all(args.data)), indent=1))
