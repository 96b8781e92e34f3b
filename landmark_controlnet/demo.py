"""The built-in default job, offline: every conditioner on sample photos that ship inside installed
wheels (AI-generated hand photos in this package, and scikit-image's and matplotlib's samples), a
hand dataset built from the hand photos, and a tiny random ControlNet trained on it for a few steps."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

import conditioners
from conditioners import Detection
from conditioners.mediapipe_hands import HAND_KINDS
from conditioners.preview import contact_sheet

# Shipped as package data (see demo_photos/NOTICE.md): read beside this module, so that it works
# from an installed wheel as from a checkout.
DEMO_PHOTOS = Path(__file__).with_name("demo_photos")
# The prompt each photo was generated from, as the HandRefiner repository gives it (MIT licence,
# demo_photos/NOTICE.md); the demo dataset's captions. Kept here, not in a JSON file, because the
# wheel ships only the folder's JPEGs and Markdown.
HAND_PHOTO_PROMPTS = {
    "handrefiner_test_2.jpg": "a woman facing the camera, making a hand gesture, indoor",
    "handrefiner_test_3.jpg": "a man facing the camera, making a hand gesture, indoor",
    "handrefiner_test_4.jpg": "a man facing the camera, making a hand gesture, indoor",
}
DEMO_BUILDER = "demo_hands"


def hand_photos() -> dict[str, Path]:
    """The AI-generated photos of people making hand gestures that ship in this package."""
    return {Path(name).stem: DEMO_PHOTOS / name for name in HAND_PHOTO_PROMPTS}


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
    """Condition every photo with every conditioner (PNG + JSON per pair, extra images such as
    hand_depth_mask's `mask` as PNGs too, and a contact sheet), build the `demo_hands` dataset from
    the hand photos and, with `train`, train a tiny ControlNet on it."""
    photos = hand_photos() | sample_images()  # hands first: they are the project's headline
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = {stem: [(Image.open(path), stem)] for stem, path in photos.items()}
    results: dict[str, dict[str, str]] = {stem: {} for stem in photos}
    hands: dict[str, dict[str, int]] = {stem: {} for stem in photos}
    names, unavailable = usable_conditioners()
    for name in names:
        for stem, detection, image, extras in condition_photos(name, photos, out_dir):
            status = describe(detection)
            results[stem][name] = status
            if count_hands(detection):
                hands[stem][name] = count_hands(detection)
            rows[stem].append((image, f"{name}: {status}"))
            rows[stem] += [(extra, f"{name} {extra_name}") for extra_name, extra in extras.items()]
    sheet_path = out_dir / "contact_sheet.png"
    contact_sheet(list(rows.values()), title="Landmark ControlNet: " + ", ".join(names)).save(sheet_path)
    dataset = build_demo_dataset(out_dir)
    report = {
        "contact_sheet": str(sheet_path),
        "results": results,
        "hands_found": hands,
        "unavailable": unavailable,
        "dataset": dataset,
    }
    if train:
        report["training"] = train_tiny_controlnet(Path(dataset["folder"]), out_dir)
    print(json.dumps(report, indent=1))
    return sheet_path


def usable_conditioners() -> tuple[list[str], dict[str, str]]:
    """The conditioners that can run here, and why each of the others cannot (missing weights)."""
    names, unavailable = [], {}
    for name in conditioners.available():
        reason = conditioners.conditioner_class(name).unavailable_reason()
        if reason:
            unavailable[name] = reason
        else:
            names.append(name)
    return names, unavailable


def condition_photos(
    name: str, photos: dict[str, Path], out_dir: Path
) -> Iterator[tuple[str, Detection, Image.Image, dict[str, Image.Image]]]:
    """Run conditioner `name` on every photo, write its PNG, JSON and extra-image PNGs, and yield
    (stem, detection, conditioning image, {extra name: extra image}) per photo."""
    stems = list(photos)
    with conditioners.get(name) as conditioner:
        for result in conditioners.condition_many(conditioner, list(photos.values())):
            stem, detection = stems[result.index], result.detection
            (out_dir / f"{stem}_{name}.png").write_bytes(result.png)
            (out_dir / f"{stem}_{name}.json").write_text(detection.to_json(indent=1))
            for extra, png in result.extra_pngs.items():
                (out_dir / f"{stem}_{name}_{extra}.png").write_bytes(png)
            extras = {extra: result.extra_image(extra) for extra in result.extras}
            yield stem, detection, result.image, extras


def count_hands(detection: Detection) -> int:
    return sum(instance.kind in HAND_KINDS for instance in detection.instances)


def describe(detection: Detection) -> str:
    """`2 found`, or the skip reason; `3 found (1 hand)` when hands are among other parts."""
    if detection.skipped:
        return str(detection.skipped)
    found, hands = len(detection.instances), count_hands(detection)
    if hands in (0, found):
        return f"{found} found"
    return f"{found} found ({hands} hand{'s' if hands > 1 else ''})"


def build_demo_dataset(out_dir: Path) -> dict[str, object]:
    """Build the `demo_hands` builder from the hand photos, captioned with their prompts, and load it
    back with `datasets.load_dataset`."""
    from builders import BuildSettings
    from builders.rows import open_dataset
    from builders.run import run_build

    photos = out_dir / "hand_photos"
    shutil.rmtree(photos, ignore_errors=True)  # exactly the shipped photos, whatever ran here before
    photos.mkdir()
    for path in hand_photos().values():
        (photos / path.name).symlink_to(path.resolve())
    captions = [json.dumps({"file_name": name, "text": text}) for name, text in HAND_PHOTO_PROMPTS.items()]
    (photos / "metadata.jsonl").write_text("\n".join(captions) + "\n")
    output = out_dir / DEMO_BUILDER
    report = run_build(DEMO_BUILDER, str(photos), BuildSettings(), output=output, overwrite=True)
    dataset = open_dataset(str(output))  # by its files, so a rebuild never reads an earlier build's rows
    return {
        "builder": DEMO_BUILDER,
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

    base_model = write_tiny_sd(out_dir / "tiny_sd")
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
