"""`landmark-controlnet generate`: images from a ControlNet, a base model, a pose and a prompt.

The pose (`--pose`) is a photo (detected with the ControlNet's conditioner), a stored detection
JSON, or `DATASET_DIR#ROW` (a built dataset's row: its landmarks, else its conditioning image).
It is framed and drawn at the generation resolution as training frames it, then sampled with the
project's own sampler, exactly as `evaluate` generates: a Stable Diffusion (SDXL) base with its
ControlNet, or a FLUX.1 base with a Flux ControlNet (`--guidance-scale` is then FLUX.1's distilled
guidance, 3.5 by default, and there is no negative prompt). `--out-dir` receives

    conditioning.png                 the conditioning image the ControlNet saw
    pose.json                        the pose in conditioning.png's pixels (when it has landmarks)
    image_0.png ... image_<N-1>.png
    image_0.json ...                 with --score: the landmarks re-detected in each image
    report.json                      inputs, settings, seed per image, conditioner, files, scores

An out-dir that already holds a `report.json` (or any of these files) is refused, never
overwritten: a finished run is never silently replaced by the next one.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import conditioners
from conditioners import Detection
from conditioners.errors import OptionError
from conditioners.images import center_crop_framing

from .evaluation.generate import (
    SEEDS_PER_SAMPLE,
    Row,
    check_resolution,
    default_guidance,
    frame_picture,
    native_resolution,
    write_samples,
)
from .loaded import Loaded

CONDITIONING_FILE = "conditioning.png"
POSE_FILE = "pose.json"
REPORT_FILE = "report.json"
IMAGE_STEM = "image"  # image_<k>.png, as `write_samples` names sample k of a row
DATASET_ROW = re.compile(r"^(?P<dataset>.+)#(?P<row>[^#]*)$")
CARD_FIDELITY_CONDITIONER = re.compile(r"re-detected with `([^`]+)`")
CARD_TRAINING_DATASET = re.compile(r"^Trained with .* on `([^`]+)`\.$", re.MULTILINE)
DATASET_CARD_CONDITIONER = re.compile(r"^\| conditioner \| `([^`]+)`", re.MULTILINE)


@dataclass(frozen=True)
class GenerateRequest:
    base_model: str
    controlnet: str
    pose: str  # a photo, a detection JSON, or DATASET_DIR#ROW
    prompt: str
    out_dir: Path
    negative_prompt: str = ""
    num_images: int = 1
    strength: float = 1.0
    steps: int = 25
    guidance_scale: float | None = None  # default: the base model's (7.5 for SD, 3.5 for FLUX.1)
    seed: int = 0
    resolution: int | None = None  # default: the base model's own
    score: bool = False
    conditioner: str | None = None  # default: the one the ControlNet's card records
    conditioner_options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Pose:
    """The pose as read, before framing: landmarks, or (a row without them) a conditioning picture."""

    detection: Detection | None
    picture: Image.Image | None
    conditioner: str | None


@dataclass(frozen=True)
class GenerateResult:
    out_dir: Path
    conditioning: Path
    images: tuple[Path, ...]
    seeds: tuple[int, ...]
    conditioner: str | None
    report: dict[str, Any]


def generate(request: GenerateRequest, loaded: Loaded | None = None) -> GenerateResult:
    """Read the pose, generate `num_images` images, score them if asked; write and return the report.
    `loaded` keeps detectors and models between calls (the Studio's); by default all load afresh."""
    loaded = loaded or Loaded()
    check_request(request)
    pose = read_pose(request, loaded)  # before the models load: a wrong pose fails fast
    if request.score and pose.detection is None:
        raise OptionError(f"--score needs landmarks to score against; --pose {request.pose} has none")
    if request.negative_prompt and is_flux_location(request.base_model):
        from .diffusion.flux_pipeline import NO_FLUX_NEGATIVE_PROMPT

        raise OptionError(NO_FLUX_NEGATIVE_PROMPT)  # before the base model loads
    with loaded.base_model(request.base_model) as base:
        return generate_with(base, request, pose, loaded)


def is_flux_location(location: str) -> bool:
    from .diffusion.flux_pipeline import is_flux_folder

    return is_flux_folder(location)


def resolved(request: GenerateRequest, base: Any) -> GenerateRequest:
    """The request with the base model's defaults filled in: its resolution and guidance scale."""
    resolution = request.resolution or native_resolution(base)
    check_resolution(base, resolution)
    guidance = default_guidance(base) if request.guidance_scale is None else request.guidance_scale
    return replace(request, resolution=resolution, guidance_scale=guidance)


def generate_with(base: Any, request: GenerateRequest, pose: Pose, loaded: Loaded) -> GenerateResult:
    request = resolved(request, base)
    row = pose_row(pose, request.prompt, request.resolution)
    out = request.out_dir
    out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(row.conditioning).save(out / CONDITIONING_FILE)
    if row.reference is not None:
        (out / POSE_FILE).write_text(row.reference.to_json())
    settings = (request.base_model, request.controlnet, request.steps, request.guidance_scale)
    with loaded.sampler(base, *settings) as (sampler, params):
        write_samples(
            sampler, params, [row], out, samples=request.num_images, seed=request.seed,
            strength=request.strength, batch_size=1, negative_prompt=request.negative_prompt,
        )  # fmt: skip
    images = tuple(out / f"{IMAGE_STEM}_{k}.png" for k in range(request.num_images))
    seeds = tuple(request.seed + k * SEEDS_PER_SAMPLE for k in range(request.num_images))
    scores = None
    if request.score:
        scores = score_images(row.reference, images, pose.conditioner, request, loaded)
    report = build_report(request, pose, images, seeds, scores)
    (out / REPORT_FILE).write_text(json.dumps(report, indent=1))
    return GenerateResult(out, out / CONDITIONING_FILE, images, seeds, pose.conditioner, report)


def check_request(request: GenerateRequest) -> None:
    """The numbers in range and a fresh out-dir, before anything slow runs."""
    if request.num_images < 1:
        raise OptionError(f"--num-images {request.num_images}: at least 1")
    if request.steps < 1:
        raise OptionError(f"--steps {request.steps}: at least 1")
    if not 0 <= request.strength <= 2:  # 0: the ControlNet adds nothing (the base model's image)
        raise OptionError(f"--strength {request.strength} is outside [0, 2]")
    if request.resolution is not None and (request.resolution < 8 or request.resolution % 8):
        raise OptionError(f"--resolution {request.resolution}: a positive multiple of 8")
    taken = [name for name in output_names(request.num_images) if (request.out_dir / name).exists()]
    if taken:
        raise OptionError(
            f"--out-dir {request.out_dir} already holds {taken[0]}: generate never overwrites; "
            "name a new folder or remove the old outputs"
        )


def output_names(num_images: int) -> list[str]:
    per_image = [f"{IMAGE_STEM}_{k}.{ext}" for k in range(num_images) for ext in ("png", "json")]
    return [REPORT_FILE, CONDITIONING_FILE, POSE_FILE, *per_image]


# -- the pose ------------------------------------------------------------------------------------
def read_pose(request: GenerateRequest, loaded: Loaded) -> Pose:
    """The pose `--pose` names: DATASET_DIR#ROW, a detection JSON, or a photo to detect."""
    source = request.pose
    match = DATASET_ROW.match(source)
    if match and not Path(source).exists():  # a file whose name holds `#` is still a file
        return dataset_pose(match["dataset"], match["row"], source)
    path = Path(source)
    if not path.is_file():
        raise OptionError(f"--pose {source}: no such file (a photo, a detection JSON or DATASET_DIR#ROW)")
    if path.suffix.lower() == ".json":
        detection = Detection.from_file(path)
        return Pose(detection, None, request.conditioner or detection.conditioner)
    return photo_pose(path, request, loaded)


def dataset_pose(dataset: str, row_text: str, source: str) -> Pose:
    """Row `row_text` of the dataset's train split: its stored landmarks, else its conditioning image."""
    from builders.rows import decode, open_dataset

    if not Path(dataset).is_dir():
        raise OptionError(f"--pose {source}: {dataset} is not a dataset folder (DATASET_DIR#ROW)")
    if not row_text.isdigit():
        raise OptionError(f"--pose {source}: ROW must be a row number, e.g. {dataset}#0")
    table = open_dataset(dataset, split="train")
    row = int(row_text)
    if row >= len(table):
        raise OptionError(f"--pose {source}: row {row} is out of range ({dataset} has {len(table)} rows)")
    record = table[row]
    if record.get("landmarks"):
        detection = Detection.from_json(record["landmarks"])
        return Pose(detection, None, detection.conditioner)
    if record.get("conditioning_image") is None:
        raise OptionError(f"--pose {source}: the row has neither landmarks nor a conditioning_image")
    return Pose(None, decode(record["conditioning_image"], source), None)


def photo_pose(path: Path, request: GenerateRequest, loaded: Loaded) -> Pose:
    """The landmarks the ControlNet's conditioner finds in the photo; finding none is an error."""
    name = request.conditioner or recorded_conditioner(request.controlnet)
    if name is None:
        raise OptionError(
            f"--pose {path} is a photo, and {request.controlnet} records no conditioner to detect it "
            "with: pass --conditioner"
        )
    with loaded.detector(name, request.conditioner_options) as conditioner:
        detection = conditioner.detect(path)
    if not detection.instances:
        why = detection.skip_message or detection.skipped or "no instances"
        raise OptionError(f"--pose {path}: {name} found nothing in this photo ({why})")
    return Pose(detection, None, name)


def recorded_conditioner(controlnet: str) -> str | None:
    """The conditioner a trained ControlNet's model card names: its control-fidelity section's, else
    the conditioner on the card of the (local) dataset it was trained on. None when neither says."""
    card = Path(controlnet) / "README.md"
    if not card.is_file():
        return None
    text = card.read_text()
    if found := CARD_FIDELITY_CONDITIONER.search(text):
        return found[1]
    dataset = CARD_TRAINING_DATASET.search(text)
    dataset_card = Path(dataset[1]) / "README.md" if dataset else None
    if dataset_card is None or not dataset_card.is_file():
        return None
    found = DATASET_CARD_CONDITIONER.search(dataset_card.read_text())
    return found[1] if found else None


def pose_row(pose: Pose, prompt: str, resolution: int) -> Row:
    """The pose framed to a `resolution` square (centre crop, as training frames photos) and drawn
    there: landmarks are re-drawn at that size, a stored conditioning picture is resized."""
    if pose.detection is None:
        assert pose.picture is not None
        return Row(IMAGE_STEM, prompt, frame_picture(pose.picture, resolution), None)
    framed = pose.detection.framed(center_crop_framing(pose.detection.size, resolution))
    drawing = conditioners.draw(framed, (resolution, resolution), style=pose.conditioner)
    return Row(IMAGE_STEM, prompt, np.asarray(drawing)[..., :3], framed)


# -- scores and report ---------------------------------------------------------------------------
def score_images(
    reference: Detection | None,
    images: tuple[Path, ...],
    conditioner: str | None,
    request: GenerateRequest,
    loaded: Loaded,
) -> dict[str, Any]:
    """Each image re-detected (its landmarks written beside it, image_<k>.json) and scored against
    the pose, as `evaluate` scores; and over all of them."""
    from .evaluation.scoring import Sample, row_record, score_samples, total_score

    assert reference is not None and conditioner is not None
    samples = [Sample(IMAGE_STEM, k, path) for k, path in enumerate(images)]
    with loaded.detector(conditioner, request.conditioner_options) as detector:
        scored = score_samples({IMAGE_STEM: reference}, samples, detector)
    for sample, result, _ in scored:
        if result is not None:
            sample.path.with_suffix(".json").write_text(result.detection.to_json())
    return {
        "per_image": [row_record(sample, score) for sample, _, score in scored],
        "mean": total_score(score for _, _, score in scored).summary(),  # over every image's landmarks
    }


def build_report(
    request: GenerateRequest,
    pose: Pose,
    images: tuple[Path, ...],
    seeds: tuple[int, ...],
    scores: dict[str, Any] | None,
) -> dict[str, Any]:
    settings = {k: v for k, v in asdict(request).items() if k not in ("out_dir", "score")}
    report: dict[str, Any] = {
        **settings,
        "conditioner": pose.conditioner,
        "conditioning": CONDITIONING_FILE,
        "pose_file": POSE_FILE if pose.detection is not None else None,
        "images": [
            {"file": path.name, "seed": seed, **(_fidelity(scores, k) if scores else {})}
            for k, (path, seed) in enumerate(zip(images, seeds, strict=True))
        ],
    }
    if scores:
        report["fidelity_mean"] = scores["mean"]
    return report


def _fidelity(scores: dict[str, Any], index: int) -> dict[str, Any]:
    record = scores["per_image"][index]
    return {"fidelity": {k: v for k, v in record.items() if k not in ("stem", "sample", "file")}}
