"""Conditioner throughput: the full path against the detector alone, measured in the same run.

    .venv/bin/python benchmarks/conditioners.py [--rounds 3] [--data ../shared/data]

Prints JSON. Per conditioner, on the shared photos:
- detector: the detector alone (MediaPipe; for spiga68 also SPIGA, for animal_pose OpenPifPaf) on
  RGB arrays already decoded and resized to the detection size;
- full_path: file -> decode -> detect -> draw -> PNG bytes, through `condition_many` (the path
  the CLI and the builders use, with I/O overlapped with detection), plus the conditioner's extra
  images as PNGs (hand_depth_mask's inpainting mask), as a build writes them;
- sequential: the same steps one after the other, without overlap.
Rounds alternate between the modes and the median of each is reported, since the machine is shared.
spiga68 and animal_pose use their real weights when found locally, else random weights of the same
architecture (made as the tests make them): the same work, so the same speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

# This file's name equals the package's: drop benchmarks/ from the path so `conditioners` is the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import conditioners  # noqa: E402
from conditioners.runner import condition_many  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PHOTO_SETS = {
    "hand_standard": ["hands"],
    "hand_encoded": ["hands"],
    "holistic": ["hands", "bodies"],
    "face_pupils": ["faces"],
    "spiga68": ["faces"],
    "animal_pose": ["animals"],
    "hand_depth_mask": ["hands", "generated"],
}
RANDOM_WEIGHTS = {"spiga68": "write_random_spiga_weights", "animal_pose": "write_random_animal_checkpoint"}


def photos(data: Path, folders: list[str]) -> list[Path]:
    return sorted(
        p for f in folders for p in (data / "images" / f).iterdir() if p.suffix.lower() in {".jpg", ".png"}
    )


def rate(count: int, fn) -> float:
    start = time.perf_counter()
    fn()
    return count / (time.perf_counter() - start)


def weights_options(name: str, work: Path) -> tuple[dict, str]:
    """The conditioner's options and a note on its weights."""
    if name not in RANDOM_WEIGHTS:
        return {}, "bundled"
    if conditioners.conditioner_class(name).unavailable_reason() is None:
        return {}, "real (found locally)"
    sys.path.insert(0, str(REPO / "tests"))
    import detector_weights

    path = getattr(detector_weights, RANDOM_WEIGHTS[name])(work / f"{name}.weights")
    return {"weights": str(path)}, "random, same architecture"


def bench(name: str, paths: list[Path], rounds: int, work: Path) -> dict:
    options, weights = weights_options(name, work)
    with conditioners.get(name, **options) as conditioner:
        arrays = [conditioner.load(p).pixels for p in paths]
        for pixels in arrays:  # warm-up: model load and first inference
            conditioner._detect(pixels)

        def detector_only() -> None:
            for pixels in arrays:
                conditioner._detect(pixels)

        def full_path() -> None:
            for result in condition_many(conditioner, paths):  # encodes every image, extras too
                assert result.png and len(result.extra_pngs) == len(conditioner.extra_images)

        def sequential() -> None:
            for path in paths:
                assert conditioner(path).encode().png

        rates: dict[str, list[float]] = {"detector": [], "full_path": [], "sequential": []}
        for _ in range(rounds):
            rates["detector"].append(rate(len(paths), detector_only))
            rates["full_path"].append(rate(len(paths), full_path))
            rates["sequential"].append(rate(len(paths), sequential))
    medians = {k: statistics.median(v) for k, v in rates.items()}
    return {
        "weights": weights,
        "images": len(paths),
        "detector_images_per_s": round(medians["detector"], 2),
        "full_path_images_per_s": round(medians["full_path"], 2),
        "sequential_images_per_s": round(medians["sequential"], 2),
        "full_path_ratio": round(medians["full_path"] / medians["detector"], 3),
        "sequential_ratio": round(medians["sequential"] / medians["detector"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--conditioner", action="append", help="default: all of them")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        results = {
            name: bench(name, photos(args.data, PHOTO_SETS[name]), args.rounds, Path(work))
            for name in (args.conditioner or list(PHOTO_SETS))
        }
    report = {
        "benchmark": "conditioners",
        "target": "full_path_ratio >= 0.85",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "results": results,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
