"""The built-in default job: every conditioner on sample photos that ship inside installed wheels."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

import conditioners
from conditioners.preview import contact_sheet
from conditioners.runner import condition_many


def sample_images() -> dict[str, Path]:
    """scikit-image's astronaut and chelsea (a cat) and matplotlib's Grace Hopper portrait."""
    import matplotlib.cbook
    import skimage.data

    skimage_dir = Path(skimage.data.__file__).parent
    return {
        "astronaut": skimage_dir / "astronaut.png",
        "chelsea": skimage_dir / "chelsea.png",
        "grace_hopper": Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)),
    }


def run_demo(out_dir: Path) -> Path:
    """Condition every sample with every conditioner; write PNG + JSON per pair and a contact sheet."""
    samples = sample_images()
    names = conditioners.available()
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [[(Image.open(path), stem)] for stem, path in samples.items()]
    summary: dict[str, dict[str, str]] = {}
    for name in names:
        with conditioners.get(name) as conditioner:
            for outcome in condition_many(conditioner, list(samples.values())):
                stem = list(samples)[outcome.index]
                (out_dir / f"{stem}_{name}.png").write_bytes(outcome.png)
                (out_dir / f"{stem}_{name}.json").write_text(outcome.detection.to_json(indent=1))
                status = outcome.detection.skipped or f"{len(outcome.detection.instances)} found"
                rows[outcome.index].append((outcome.canvas.to_image(), f"{name}: {status}"))
                summary.setdefault(stem, {})[name] = status
    sheet_path = out_dir / "contact_sheet.png"
    contact_sheet(rows, title="Landmark ControlNet: " + ", ".join(names)).save(sheet_path)
    dataset = build_demo_dataset(samples, out_dir)
    print(json.dumps({"contact_sheet": str(sheet_path), "results": summary, "dataset": dataset}, indent=1))
    return sheet_path


def build_demo_dataset(samples: dict[str, Path], out_dir: Path) -> dict[str, object]:
    """Build the `demo_faces` builder from the samples and load it back with `datasets.load_dataset`."""
    from builders import BuildSettings
    from builders.run import load_builder, run_build

    photos = out_dir / "demo_photos"
    photos.mkdir(exist_ok=True)
    captions = []
    for stem, path in samples.items():
        link = photos / path.name
        if not link.exists():
            link.symlink_to(path)
        captions.append(json.dumps({"file_name": path.name, "text": f"a photo of {stem.replace('_', ' ')}"}))
    (photos / "metadata.jsonl").write_text("\n".join(captions) + "\n")
    output = out_dir / "demo_faces"
    report = run_build("demo_faces", str(photos), BuildSettings(), output=output, overwrite=True)
    dataset = load_builder(str(output))
    return {
        "folder": str(output),
        "rows": len(dataset),
        "skipped": report.skipped,
        "columns": list(dataset.features),
        "captions": list(dataset["caption"]),
    }
