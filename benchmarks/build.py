"""Build throughput: rows/s of a real build with 1 and 2 processes against the conditioner alone.

    .venv/bin/python benchmarks/build.py [--repeat 6] [--conditioner hand_encoded]

Prints JSON. The photos are the shared hand photos, linked `--repeat` times under new names.
Start-up (spawning processes, loading models) is excluded by building N and 2N items and
dividing the N extra items by the extra time; the conditioner-alone rate is measured in the same
run (load + detect + draw, one process).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import conditioners  # noqa: E402
from builders import BuildSettings  # noqa: E402
from builders.run import run_build  # noqa: E402


def make_photos(data: Path, folder: Path, repeat: int) -> list[Path]:
    photos = sorted(p for p in (data / "images" / "hands").iterdir() if p.suffix == ".jpg")
    links = []
    for r in range(repeat):
        for photo in photos:
            link = folder / f"{r:03d}_{photo.name}"
            link.symlink_to(photo)
            links.append(link)
    return links


def conditioner_rate(name: str, photos: list[Path]) -> float:
    with conditioners.get(name) as conditioner:
        conditioner(photos[0])  # model load
        start = time.perf_counter()
        for photo in photos:
            conditioner(photo).to_png()
        return len(photos) / (time.perf_counter() - start)


def build_seconds(name: str, photos_dir: Path, work: Path, items: int, num_proc: int) -> float:
    builder = work / f"builder_{num_proc}_{items}"
    builder.mkdir()
    (builder / "recipe.toml").write_text(
        f'[source]\ntype = "folder"\n[conditioner]\nname = "{name}"\n[captioner]\ntype = "none"\n'
    )
    start = time.perf_counter()
    run_build(
        str(builder),
        str(photos_dir),
        BuildSettings(num_proc=num_proc, max_samples=items, shard_size=32),
        progress=False,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--repeat", type=int, default=8)
    parser.add_argument("--conditioner", default="hand_encoded")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "photos").mkdir()
        photos = make_photos(args.data, work / "photos", args.repeat)
        half = len(photos) // 2
        alone = conditioner_rate(args.conditioner, photos[:half])
        rates = {}
        for num_proc in (1, 2):
            small = build_seconds(args.conditioner, work / "photos", work, half, num_proc)
            full = build_seconds(args.conditioner, work / "photos", work, 2 * half, num_proc)
            rates[num_proc] = {
                "rows_per_s": half / max(full - small, 1e-9),
                "startup_s": small - half * (full - small) / half,
            }
    one, two = rates[1]["rows_per_s"], rates[2]["rows_per_s"]
    print(
        json.dumps(
            {
                "benchmark": "build",
                "conditioner": args.conditioner,
                "items": 2 * half,
                "machine": {"cpus": os.cpu_count()},
                "conditioner_alone_images_per_s": round(alone, 2),
                "build_num_proc_1_rows_per_s": round(one, 2),
                "build_num_proc_2_rows_per_s": round(two, 2),
                "build_1_vs_conditioner_alone": round(one / alone, 3),
                "build_2_vs_build_1": round(two / one, 3),
                "startup_s": {str(k): round(v["startup_s"], 2) for k, v in rates.items()},
                "targets": {"build_1_vs_conditioner_alone": 0.8, "build_2_vs_build_1": 1.7},
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
