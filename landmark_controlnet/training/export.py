"""The trained ControlNet in diffusers layout (PyTorch safetensors), its model card, Hub upload."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MODEL_TAGS = [
    "controlnet",
    "jax-diffusers-event",
    "stable-diffusion",
    "stable-diffusion-diffusers",
    "landmarks",
]
SDXL_TAG = "stable-diffusion-xl"
FLUX_TAGS = ["controlnet", "jax-diffusers-event", "flux", "flux-diffusers", "landmarks"]
SD_LICENSE = {"license": "creativeml-openrail-m"}
FLUX_LICENSE = {  # FLUX.1-dev's own card header: its weights, and so ControlNets over them
    "license": "other",
    "license_name": "flux-1-dev-non-commercial-license",
    "license_link": "https://huggingface.co/black-forest-labs/FLUX.1-dev/blob/main/LICENSE.md",
}
SDXL_SIZE = 1024  # SDXL generates at 1024 px; its conditioning image is drawn at that size
HUB_IGNORE = ["checkpoints/*", "checkpoints/**", "logs/*", "logs/**", "profile/**", ".*"]


def save_controlnet(controlnet: Any, output_dir: Path) -> Path:
    """`config.json` and `diffusion_pytorch_model.safetensors` (float32), as diffusers' ControlNetModel
    reads them; the project's `from_pretrained` reads the same folder back."""
    from landmark_controlnet.diffusion.export import save_pretrained

    return save_pretrained(controlnet, output_dir)


def write_model_card(
    output_dir: Path,
    base_model: str,
    dataset: str,
    flags: dict[str, Any],
    validation_grid: Path | None,
    final_loss: float | None,
    fidelity: dict[str, Any] | None = None,
    sdxl: bool = False,
    flux: bool = False,
) -> Path:
    """The Hub model card, README.md. `sdxl`: the base model is SDXL, so the card shows diffusers'
    StableDiffusionXLControlNetPipeline and carries the stable-diffusion-xl tag. `flux`: the base model
    is FLUX.1, so the card shows FluxControlNetPipeline, carries the flux tags and FLUX.1-dev's license."""
    header = {
        "base_model": base_model,
        "library_name": "diffusers",
        **(FLUX_LICENSE if flux else SD_LICENSE),
        "tags": _tags(sdxl, flux),
        "inference": True,
    }
    if not Path(dataset).exists():
        header["datasets"] = [dataset]
    lines = [
        f"# ControlNet for {base_model}",
        "",
        f"Trained with `train_flax_controlnet.py` of Landmark ControlNet on `{dataset}`.",
        "",
    ]
    if validation_grid:
        lines += [
            "## Validation",
            "",
            f"![validation]({validation_grid.relative_to(output_dir).as_posix()})",
            "",
        ]
    if final_loss is not None:
        lines += [f"Last logged training loss: {final_loss:.4f}", ""]
    if fidelity:
        lines += _fidelity_section(fidelity)
    use = _use(base_model, sdxl, flux, bool(flags.get("inpainting")))
    lines += ["## Use", "", *use]
    lines += [
        "## Training flags",
        "",
        "| flag | value |",
        "|---|---|",
        *(
            f"| `--{k}` | `{v}` |"
            for k, v in sorted(flags.items())
            if k != "hub_token" and v not in (None, False)
        ),
        "",
    ]
    path = output_dir / "README.md"
    path.write_text(f"---\n{yaml.safe_dump(header, sort_keys=False)}---\n\n" + "\n".join(lines))
    return path


def _fidelity_section(summary: dict[str, Any]) -> list[str]:
    """The last `--fidelity_rows` scores: do generated images follow their landmarks?"""
    figures = ("instance_recall", "pck_0.05", "pck_0.1", "pck_0.2", "mean_error", "handedness_agreement")
    shown = [(name, summary[name]) for name in figures if summary.get(name) is not None]
    return [
        "## Control fidelity",
        "",
        f"At step {summary['step']}: images generated for {summary['rows']} rows of the `{summary['split']}` "
        f"split, re-detected with `{summary['conditioner']}` and scored against the rows' landmarks "
        "(`landmark-controlnet evaluate`).",
        "",
        "| figure | value |",
        "|---|---|",
        *(f"| {name} | {value:.3f} |" for name, value in shown),
        "",
    ]


def _tags(sdxl: bool, flux: bool) -> list[str]:
    if flux:
        return FLUX_TAGS
    return [*MODEL_TAGS, SDXL_TAG] if sdxl else MODEL_TAGS


def _use(base_model: str, sdxl: bool, flux: bool, inpainting: bool) -> list[str]:
    """How to run the ControlNet: FLUX.1's pipeline, SD's inpainting one, else `_text_to_image_use`."""
    if flux:
        from landmark_controlnet.diffusion.flux_pipeline import flux_model_card_use

        return flux_model_card_use(base_model)
    return _inpainting_use(base_model) if inpainting else _text_to_image_use(base_model, sdxl)


def _text_to_image_use(base_model: str, sdxl: bool = False) -> list[str]:
    """Text-to-image with diffusers' ControlNet pipeline for the base model: SD's at the base model's
    own size, SDXL's at 1024 px."""
    if sdxl:
        pipeline, resize = "StableDiffusionXLControlNetPipeline", f".resize(({SDXL_SIZE}, {SDXL_SIZE}))"
        size = f", height={SDXL_SIZE}, width={SDXL_SIZE}"
    else:
        pipeline, resize, size = "StableDiffusionControlNetPipeline", "", ""
    return _pipeline_use(
        pipeline,
        base_model,
        f"image = load_image(CONDITIONING_IMAGE){resize}  # a landmark drawing",
        f'pipe(PROMPT, image=image{size}).images[0].save("out.png")',
    )


def _pipeline_use(pipeline: str, base_model: str, *run: str) -> list[str]:
    """A python block: the ControlNet and diffusers' `pipeline` over `base_model`, in float16 on CUDA,
    then the `run` lines."""
    return [
        "```python",
        "import torch",
        f"from diffusers import ControlNetModel, {pipeline}",
        "from diffusers.utils import load_image",
        "controlnet = ControlNetModel.from_pretrained(PATH_OR_REPO, torch_dtype=torch.float16)",
        f"pipe = {pipeline}.from_pretrained(",
        f'    "{base_model}", controlnet=controlnet, torch_dtype=torch.float16',
        ').to("cuda")',
        *run,
        "```",
        "",
    ]


def _inpainting_use(base_model: str) -> list[str]:
    """Trained with --inpainting: it steers an inpainting UNet, e.g. to repair hands."""
    return [
        "An inpainting ControlNet: use it with the inpainting base model it was trained against.",
        "",
        "```bash",
        "landmark-controlnet refine-hands --image IN.png --prompt PROMPT --controlnet PATH \\",
        f"    --base-model {base_model} --strength 0.55 --out OUT.png",
        "```",
        "",
        "```python",
        "from diffusers import ControlNetModel, StableDiffusionControlNetInpaintPipeline",
        "controlnet = ControlNetModel.from_pretrained(PATH_OR_REPO)",
        "pipe = StableDiffusionControlNetInpaintPipeline.from_pretrained(",
        f'    "{base_model}", controlnet=controlnet)',
        "```",
        "",
    ]


def push_to_hub(output_dir: Path, repo_id: str, token: str | None) -> str:
    """Upload the model folder (not checkpoints or logs); the token is never printed."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(output_dir),
        commit_message="Upload ControlNet trained with train_flax_controlnet.py",
        ignore_patterns=HUB_IGNORE,
    )
    return str(commit.commit_url).split("/commit/")[0]
