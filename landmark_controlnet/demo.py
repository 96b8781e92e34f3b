"""The built-in default job, offline: every conditioner on sample photos that ship inside installed
wheels, a dataset built from them, and a tiny random ControlNet trained on it for a few steps."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
import sys
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


def run_demo(out_dir: Path, train: bool = True) -> Path:
    """Condition every sample with every conditioner (PNG + JSON per pair and a contact sheet), build
    the `demo_faces` dataset from them and, with `train`, train a tiny ControlNet on it."""
    samples = sample_images()
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [[(Image.open(path), stem)] for stem, path in samples.items()]
    summary: dict[str, dict[str, str]] = {}
    names, unavailable = [], {}
    for name in conditioners.available():
        reason = conditioners.conditioner_class(name).unavailable_reason()
        if reason:
            unavailable[name] = reason
        else:
            names.append(name)
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
    report = {
        "contact_sheet": str(sheet_path),
        "results": summary,
        "unavailable": unavailable,
        "dataset": dataset,
    }
    if train:
        report["training"] = train_tiny_controlnet(Path(dataset["folder"]), out_dir)
    print(json.dumps(report, indent=1))
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


# A few steps at 64 px: enough to run every part of the trainer (data, step, validation, export).
TINY_TRAINING = [
    "--resolution", "64",
    "--train_batch_size", "1",
    "--max_train_steps", "6",
    "--learning_rate", "1e-3",
    "--logging_steps", "1",
    "--validation_steps", "6",
    "--num_validation_images", "2",
    "--num_inference_steps", "10",
    "--checkpointing_steps", "0",
    "--dataloader_num_workers", "2",
]  # fmt: skip


def train_tiny_controlnet(dataset: Path, out_dir: Path) -> dict[str, object]:
    """Train a ControlNet on a tiny random Stable Diffusion (written here, nothing downloaded).

    The pictures are noise, since the base model is random; what the demo shows is the whole trainer
    running offline. Validation uses the dataset's first row; its grid is `validation/step-*.png`.
    """
    missing = [name for name in ("jax", "flax", "diffusers", "torch") if not importlib.util.find_spec(name)]
    if missing:  # the demo extra alone: conditioners and builders only
        return {"skipped": f"{', '.join(missing)} missing: install the train extra (pip install '.[train]')"}
    from .training.flags import main as train_main
    from .training.logs import read_metrics
    from .training.tiny_sd import write_tiny_sd

    base_model = write_tiny_sd(out_dir / "tiny_sd", flax=True, pytorch=False)
    output = out_dir / "tiny_controlnet"
    shutil.rmtree(output, ignore_errors=True)  # a fresh run each time, never a resumed one
    flags = ["--pretrained_model_name_or_path", str(base_model), "--dataset_name", str(dataset)]
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the demo's JSON report only
        status = train_main([*flags, "--output_dir", str(output), *TINY_TRAINING])
    if status:
        raise RuntimeError(f"training the tiny ControlNet failed (exit {status}); see the messages above")
    losses = [row["loss"] for row in read_metrics(output / "logs")]
    return {
        "model": str(output),
        "validation_grid": str(max((output / "validation").glob("step-*.png"))),
        "losses": losses,
    }
