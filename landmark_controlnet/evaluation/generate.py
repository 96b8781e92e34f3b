"""`landmark-controlnet evaluate --controlnet DIR --base-model DIR --dataset DIR`: generate, then score.

Rows come from a built dataset: the `conditioning_image` and `caption` are the inputs, the stored
`landmarks` the reference. Images are generated with the project's own sampler
(`diffusion.pipeline.ControlNetGenerator`, or `diffusion.flux_pipeline.FluxControlNetGenerator` for a
FLUX.1 base) in batches, for every control strength asked for, then scored by
`scoring.evaluate_folder` exactly as images from any other tool are. `--compare` runs a
second ControlNet on the same rows, seeds and strengths.

    out/references/<stem>.json                    the rows' landmarks, framed as generation frames them
    out/<label>/strength_<s>/generated/<stem>_<k>.png
    out/<label>/strength_<s>/{summary.json, rows.jsonl, report.png}
    out/summary.json                              every summary, keyed by label then strength
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from conditioners import Detection
from conditioners.errors import OptionError, UserError
from conditioners.images import center_crop_framing, resize_and_crop

from .scoring import evaluate_folder

SEEDS_PER_SAMPLE = (
    100_003  # sample k of batch b draws seed + k * this + b: distinct, and the same for every model
)
SD_GUIDANCE = 7.5  # diffusers' StableDiffusion(XL)ControlNetPipeline's guidance_scale
FLUX_SAMPLE_SIZE = 128  # diffusers' FluxPipeline.default_sample_size, in latent pixels (1024 px)


@dataclass(frozen=True)
class GenerationSettings:
    controlnet: str
    base_model: str
    dataset: str
    out: Path
    split: str = "validation"
    rows: int = 16
    samples_per_row: int = 1
    steps: int = 25
    guidance_scale: float | None = None  # default: the base model's (`default_guidance`)
    strengths: tuple[float, ...] = (1.0,)
    seed: int = 0
    batch_size: int = 4
    resolution: int | None = None  # default: the base model's own
    compare: str | None = None
    conditioner_options: dict[str, Any] | None = None


@dataclass
class Row:
    stem: str
    caption: str
    conditioning: np.ndarray  # (resolution, resolution, 3) uint8, framed as training frames it
    reference: Detection | None  # in the framed picture's pixels; None: no landmarks (`generate` only)


def parse_strengths(text: str) -> tuple[float, ...]:
    """`0.4,0.6,0.8,1.0` -> (0.4, 0.6, 0.8, 1.0); each in (0, 2]."""
    try:
        strengths = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise UserError(
            f"--strength {text!r}: a comma-separated list of numbers, e.g. 0.4,0.6,0.8,1.0"
        ) from exc
    if not strengths or any(not 0 < s <= 2 for s in strengths):
        raise UserError(f"--strength {text!r}: each strength must be in (0, 2]")
    return strengths


def load_rows(table: Any, count: int, resolution: int, dataset: str = "dataset") -> list[Row]:
    """The first `count` rows of `open_split`'s table that have landmarks, framed to a `resolution` square."""
    from builders.rows import caption_text, decode

    rows = []
    for index, record in enumerate(table):
        if len(rows) == count:
            break
        if not record.get("landmarks"):
            continue
        conditioning = decode(record["conditioning_image"], f"{dataset} row {index}")
        framing = center_crop_framing(conditioning.size, resolution)
        reference = Detection.from_json(record["landmarks"])
        if reference.size != conditioning.size:  # landmarks of a photo the builder then resized
            scale = (conditioning.width / reference.width, conditioning.height / reference.height)
            reference = reference.transformed(scale, (0.0, 0.0), conditioning.size)
        rows.append(
            Row(
                stem=f"row{index:05d}",
                caption=caption_text(record.get("caption")),
                conditioning=frame_picture(conditioning, resolution),
                reference=reference.framed(framing),
            )
        )
    if not rows:
        raise UserError(f"{dataset} has no row with landmarks to score")
    return rows


def frame_picture(picture: Image.Image, resolution: int) -> np.ndarray:
    """`picture` scaled and centre-cropped to a `resolution` square, as training frames it."""
    framing = center_crop_framing(picture.size, resolution)
    return np.asarray(resize_and_crop(picture, framing, Image.Resampling.BILINEAR))


def load_base(location: str) -> Any:
    """The base model at `location` (a folder or Hub id): a FLUX.1 pipeline (`load_flux`) when its
    model_index.json names one, else Stable Diffusion or SDXL (`load_stable_diffusion`)."""
    from landmark_controlnet.diffusion.flux_pipeline import is_flux_folder, load_flux
    from landmark_controlnet.diffusion.pipeline import load_stable_diffusion

    return (load_flux if is_flux_folder(location) else load_stable_diffusion)(location)


def is_flux_base(base: Any) -> bool:
    from landmark_controlnet.diffusion.flux_pipeline import Flux

    return isinstance(base, Flux)


def native_resolution(base: Any) -> int:
    """The size the base model generates at by default: its UNet's sample size in pixels, or FLUX.1's
    default sample size (FluxPipeline's 128 latent pixels) times its VAE's downscale (1024 px)."""
    sample_size = FLUX_SAMPLE_SIZE if is_flux_base(base) else base.unet.config.sample_size
    return sample_size * base.vae.config.downscale


def default_guidance(base: Any) -> float:
    """diffusers' default guidance scale: classifier-free for SD, the distilled guidance for FLUX.1."""
    from landmark_controlnet.diffusion.flux_pipeline import DEFAULT_GUIDANCE

    return DEFAULT_GUIDANCE if is_flux_base(base) else SD_GUIDANCE


def check_resolution(base: Any, resolution: int) -> None:
    """FLUX.1 packs its latents in 2x2 patches: a side must be a multiple of 16 pixels, not just 8."""
    from landmark_controlnet.diffusion.flux_pipeline import PATCH

    multiple = base.vae.config.downscale * (PATCH if is_flux_base(base) else 1)
    if resolution % multiple:
        raise OptionError(f"--resolution {resolution}: a multiple of {multiple} for this base model")


def controlnet_sampler(base: Any, controlnet: str, steps: int, guidance_scale: float) -> tuple[Any, Any]:
    """A `ControlNetGenerator` for `base` (a `FluxControlNetGenerator` for a FLUX.1 base; both are
    called alike) with the ControlNet at `controlnet` (a folder or Hub id), and that ControlNet's
    parameters to call it with."""
    from flax import nnx

    from landmark_controlnet.diffusion import ControlNetModel, FluxControlNetModel, from_pretrained
    from landmark_controlnet.diffusion.flux_pipeline import FluxControlNetGenerator
    from landmark_controlnet.diffusion.pipeline import ControlNetGenerator

    flux = is_flux_base(base)
    graph, params = nnx.split(from_pretrained(FluxControlNetModel if flux else ControlNetModel, controlnet))
    sampler = (FluxControlNetGenerator if flux else ControlNetGenerator)(base, graph, steps, guidance_scale)
    return sampler, nnx.to_pure_dict(params)


def open_split(dataset: str, split: str) -> Any:
    """The split's conditioning images (undecoded), captions and landmarks; a clear error without them."""
    from builders.rows import SplitNotFoundError, open_dataset

    try:
        table = open_dataset(dataset, split=split)
    except SplitNotFoundError as exc:
        raise SplitNotFoundError(
            f"{exc}. Build one with `landmark-controlnet build ... --validation-fraction 0.01`, or name "
            "another split (the ControlNet may have trained on its rows)"
        ) from None
    if "landmarks" not in (table.features or {}):
        raise UserError(
            f"{dataset} has no `landmarks` column: evaluate needs the builders' stored detections"
        )
    from datasets import Image as ImageFeature

    return table.cast_column("conditioning_image", ImageFeature(decode=False)).select_columns(
        [c for c in ("conditioning_image", "caption", "landmarks") if c in table.column_names]
    )


def batches(rows: list[Row], size: int) -> Iterator[tuple[int, list[Row]]]:
    for start in range(0, len(rows), size):
        yield start // size, rows[start : start + size]


class Generator:
    """A base model loaded once; `generate` writes one ControlNet's samples at one strength."""

    def __init__(self, settings: GenerationSettings):
        self.settings = settings
        self.base = load_base(settings.base_model)
        self.resolution = settings.resolution or native_resolution(self.base)
        check_resolution(self.base, self.resolution)
        guidance = settings.guidance_scale
        self.guidance_scale = default_guidance(self.base) if guidance is None else guidance
        self._samplers: dict[str, tuple[Any, Any]] = {}

    def _sampler(self, controlnet: str) -> tuple[Any, Any]:
        if controlnet not in self._samplers:
            self._samplers[controlnet] = controlnet_sampler(
                self.base, controlnet, self.settings.steps, self.guidance_scale
            )
        return self._samplers[controlnet]

    def generate(self, controlnet: str, rows: list[Row], strength: float, folder: Path, label: str) -> None:
        sampler, params = self._sampler(controlnet)
        settings = self.settings
        write_samples(
            sampler, params, rows, folder, samples=settings.samples_per_row, seed=settings.seed,
            strength=strength, batch_size=settings.batch_size,
            description=f"generate {label} strength {strength:g}",
        )  # fmt: skip


def write_samples(
    sampler: Any,
    params: Any,
    rows: list[Row],
    folder: Path,
    *,
    samples: int = 1,
    seed: int = 0,
    strength: float = 1.0,
    batch_size: int = 4,
    description: str = "generate",
    negative_prompt: str = "",
) -> None:
    """`<stem>_<k>.png` for every row and sample, from `sampler` (a `ControlNetGenerator` or a
    `FluxControlNetGenerator`) in batches; sample k of batch b is drawn with seed
    `seed + k * SEEDS_PER_SAMPLE + b`."""
    folder.mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(rows) * samples, desc=description, unit="img") as progress:
        for sample in range(samples):
            for number, batch in batches(rows, batch_size):
                images = sampler(
                    params,
                    [row.caption for row in batch],
                    np.stack([row.conditioning for row in batch]),
                    seed=seed + sample * SEEDS_PER_SAMPLE + number,
                    strength=strength,
                    negative_prompts=[negative_prompt] * len(batch) if negative_prompt else None,
                )
                for row, image in zip(batch, images, strict=True):
                    Image.fromarray(image).save(folder / f"{row.stem}_{sample}.png", compress_level=1)
                progress.update(len(batch))


def write_references(rows: list[Row], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for row in rows:
        (folder / f"{row.stem}.json").write_text(row.reference.to_json())


def generate_and_score(settings: GenerationSettings) -> dict[str, Any]:
    """Generate for every model and strength, score each, write `summary.json`; return the summary."""
    table = open_split(settings.dataset, settings.split)  # before the models load: a wrong split fails fast
    generator = Generator(settings)
    rows = load_rows(table, settings.rows, generator.resolution, f"{settings.dataset} ({settings.split})")
    references = settings.out / "references"
    write_references(rows, references)
    models = {
        "controlnet": settings.controlnet,
        **({"compare": settings.compare} if settings.compare else {}),
    }
    results: dict[str, dict[str, Any]] = {}
    for label, controlnet in models.items():
        results[label] = {"path": controlnet, "strengths": {}}
        for strength in settings.strengths:
            folder = settings.out / label / f"strength_{strength:g}"
            generator.generate(controlnet, rows, strength, folder / "generated", label)
            summary = evaluate_folder(
                folder / "generated", references, folder, options=settings.conditioner_options
            )
            results[label]["strengths"][f"{strength:g}"] = summary
    summary = {
        "base_model": settings.base_model,
        "dataset": settings.dataset,
        "split": settings.split,
        "split_rows": len(table),  # the rows the split holds; "rows" below are those scored
        "rows": len(rows),
        "samples_per_row": settings.samples_per_row,
        "resolution": generator.resolution,
        "steps": settings.steps,
        "guidance_scale": generator.guidance_scale,
        "seed": settings.seed,
        **results,
    }
    (settings.out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


TABLE_FIGURES = ("instance_recall", "pck_0.05", "pck_0.1", "pck_0.2", "mean_error", "handedness_agreement")


def comparison_table(summary: dict[str, Any]) -> str:
    """One line per strength and figure: the ControlNet's value beside the compared one's."""
    lines = [
        f"controlnet: {summary['controlnet']['path']}",
        f"compare:    {summary['compare']['path']}",
        f"{'strength':>8}  {'figure':<22}{'controlnet':>12}{'compare':>12}",
    ]
    for strength, ours in summary["controlnet"]["strengths"].items():
        theirs = summary["compare"]["strengths"][strength]
        for figure in TABLE_FIGURES:
            lines.append(f"{strength:>8}  {figure:<22}{_cell(ours.get(figure))}{_cell(theirs.get(figure))}")
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return f"{'-':>12}" if value is None else f"{value:>12.3f}"
