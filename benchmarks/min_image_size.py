"""The smallest images each conditioner's detector survives, and the smallest it still detects in.

    .venv/bin/python benchmarks/min_image_size.py [--data ../shared/data] [--conditioners a,b]

Prints JSON. Per conditioner, `detect()` runs on numpy arrays (the path every input takes, including
the reduction to `detect_long_side`) with the size guards turned off (`min_image_side=0`, and
`min_workable_side=1` on the instance) so that the detector itself meets every size:
- squares 1..64 px and slivers of short side 1..8 with long sides up to 2000, both ways round;
- each size in two contents: a shared photo resized to it, and a flat grey image.
An image "raised" when `detect()` raised or returned `detector_error`. `min_side_never_raised` is
one more than the largest short side, of the pixels the detector got, at which anything raised
(1 if nothing did): the value for the class attribute `min_workable_side`, which the runner
compares with that same side. `smallest_detecting` (informative) is the shortest side at which the
raw detector still finds something in the photo, resized keeping its aspect ratio.
spiga68 and animal_pose use their real weights when found locally, else the tests' random weights.
Time on 2 shared CPU cores: under a minute for the five MediaPipe conditioners; about 45 minutes
for animal_pose with random weights (their heads fire everywhere, and OpenPifPaf upscales every
image to 512 px, so even a 32 px square takes ~25 s), a minute for spiga68.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import tempfile
from pathlib import Path

# This folder holds conditioners.py: drop it from the path so `conditioners` is the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import conditioners  # noqa: E402
from conditioners import SkipReason  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PHOTOS = {  # content each detector is built for, so that small sizes can also be judged by detections
    "hand_standard": "hands/mediapipe_gesture_four_15a73593.jpg",
    "hand_encoded": "hands/mediapipe_gesture_four_15a73593.jpg",
    "hand_depth_mask": "hands/mediapipe_gesture_four_15a73593.jpg",
    "holistic": "hands/mmpose_onehand10k_33.jpg",
    "face_pupils": "faces/matplotlib_grace_hopper.jpg",
    "spiga68": "faces/matplotlib_grace_hopper.jpg",
    "animal_pose": "animals/mmpose_animalpose_ca110.jpg",
}
SQUARES = range(1, 65)
SLIVER_SHORT = range(1, 9)
SLIVER_LONG = (64, 300, 512, 1000, 2000)
DETECTING_SIDES = (*range(8, 65, 4), 80, 96, 128, 192, 256, 384, 512)
FLAT_GREY = 128


def _bench_conditioners():
    """benchmarks/conditioners.py, for its weights_options (real weights if found, else random)."""
    path = REPO / "benchmarks" / "conditioners.py"
    spec = importlib.util.spec_from_file_location("bench_conditioners", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shapes() -> list[tuple[int, int]]:
    """(width, height) of every size tried: squares, then slivers both ways round."""
    slivers = [(short, long) for short in SLIVER_SHORT for long in SLIVER_LONG]
    return [(s, s) for s in SQUARES] + slivers + [(long, short) for short, long in slivers]


def contents(photo: Image.Image, size: tuple[int, int]) -> dict[str, np.ndarray]:
    width, height = size
    return {
        "photo": np.asarray(photo.resize(size, Image.Resampling.BILINEAR)),
        "flat": np.full((height, width, 3), FLAT_GREY, np.uint8),
    }


def try_detect(conditioner: conditioners.Conditioner, pixels: np.ndarray) -> tuple[int, str | None, bool]:
    """The short side of the pixels the detector gets, what it raised (None if nothing), and
    whether it returned any instance (kept or filtered out)."""
    loaded = conditioner.load(pixels)
    side = min(loaded.pixels.shape[:2])
    try:
        detection = conditioner.detect(loaded)
    except Exception as exc:  # a detect() without the runner's guard lets it through
        return side, f"{type(exc).__name__}: {exc}", False
    if detection.skipped == SkipReason.DETECTOR_ERROR:
        return side, detection.skip_message, False
    return side, None, detection.skipped != SkipReason.NO_DETECTION


def survival(conditioner: conditioners.Conditioner, photo: Image.Image) -> dict:
    raised: list[dict] = []
    tried, found_sides = 0, []
    for size in shapes():
        for content, pixels in contents(photo, size).items():
            tried += 1
            detector_side, error, found = try_detect(conditioner, pixels)
            if error:
                raised.append({"size": list(size), "detector_side": detector_side, "content": content})
                raised[-1]["error"] = error.splitlines()[0][:160]
            if found:
                found_sides.append(detector_side)
    worst = max((r["detector_side"] for r in raised), default=0)
    return {
        "tried": tried,
        "min_side_never_raised": worst + 1,
        "raised_count": len(raised),
        "errors": sorted({r["error"] for r in raised}),
        # how many tried images the detector returned instances for (so its whole path ran), and
        # the smallest detector side among them
        "found_count": len(found_sides),
        "smallest_side_found": min(found_sides, default=None),
        "raised": raised,
    }


def smallest_detecting(conditioner: conditioners.Conditioner, photo: Image.Image) -> dict:
    """Which short sides of the aspect-kept photo the raw detector finds anything at."""
    found = {}
    for side in DETECTING_SIDES:
        scale = side / min(photo.size)
        size = (max(1, round(photo.width * scale)), max(1, round(photo.height * scale)))
        pixels = conditioner.load(np.asarray(photo.resize(size, Image.Resampling.LANCZOS))).pixels
        try:
            found[side] = len(conditioner._detect(pixels))  # raw: before any filter
        except Exception as exc:
            found[side] = f"raised {type(exc).__name__}"
    detected = [side for side in DETECTING_SIDES if isinstance(found[side], int) and found[side] > 0]
    from_then_on = None
    for side in reversed(DETECTING_SIDES):  # the smallest side from which every larger one detects
        if side not in detected:
            break
        from_then_on = side
    return {"smallest": min(detected, default=None), "from_then_on": from_then_on, "found": found}


def measure(name: str, data: Path, work: Path, weights_options) -> dict:
    options, weights = weights_options(name, work)
    photo = Image.open(data / "images" / PHOTOS[name]).convert("RGB")
    with conditioners.get(name, min_image_side=0, **options) as conditioner:
        conditioner.min_workable_side = 1  # let the detector meet every size
        result = {"weights": weights, "photo": PHOTOS[name], "detect_long_side": conditioner.detect_long_side}
        result.update(survival(conditioner, photo))
        result["smallest_detecting"] = smallest_detecting(conditioner, photo)
        result["class_min_workable_side"] = type(conditioner).min_workable_side
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--conditioners", default=",".join(PHOTOS))
    parser.add_argument("--brief", action="store_true", help="leave out the list of every raising size")
    args = parser.parse_args()
    weights_options = _bench_conditioners().weights_options
    report = {"machine": {"python": platform.python_version(), "platform": platform.platform()}}
    with tempfile.TemporaryDirectory() as work:
        for name in args.conditioners.split(","):
            report[name] = measure(name, args.data, Path(work), weights_options)
            if args.brief:
                report[name].pop("raised")
            print(f"{name}: never raised from side {report[name]['min_side_never_raised']}", file=sys.stderr)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
