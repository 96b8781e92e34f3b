"""Generate: a base model and a ControlNet, a pose (an uploaded photo or detection JSON, a dataset row,
a detection JSON in the data root), prompts and sampler settings; the conditioning image, the images
with the landmarks re-detected in them, each image's fidelity, and a second ControlNet side by side
on the same seeds. JAX and the models load on first use and stay loaded."""

from __future__ import annotations

import json
from pathlib import Path

import conditioners

from ...generate import GenerateRequest
from .. import api
from ..app import Studio, shown_errors

HANDREFINER_STRENGTHS = "HandRefiner recommends 0.4-0.8 for hands"


def build(studio: Studio) -> None:
    import gradio as gr

    with gr.Row():
        with gr.Column(scale=1):
            base_model = gr.Textbox(
                label="Base model (folder in the data root, or Hub id)", elem_id="gen-base"
            )
            controlnet = gr.Textbox(
                label="ControlNet (folder in the data root, or Hub id)", elem_id="gen-controlnet"
            )
            second = gr.Textbox(label="Second ControlNet, side by side (optional)", elem_id="gen-compare")
            pose_file = gr.File(
                label="Pose: a photo or a detection JSON",
                file_types=["image", ".json"],
                elem_id="gen-pose-file",
            )
            pose_text = gr.Textbox(
                label="... or DATASET_DIR#ROW, or a detection JSON in the data root", elem_id="gen-pose-text"
            )
            conditioner = gr.Dropdown(
                ["", *conditioners.available()], value="", label="Conditioner (empty: the ControlNet's own)"
            )
            prompt = gr.Textbox(label="Prompt", elem_id="gen-prompt")
            negative = gr.Textbox(label="Negative prompt", elem_id="gen-negative")
            with gr.Row():
                steps = gr.Number(25, label="Steps", precision=0, minimum=1, elem_id="gen-steps")
                guidance = gr.Number(
                    0, label="Guidance (0: the base's, 7.5 SD, 3.5 FLUX.1)", elem_id="gen-guidance"
                )
                seed = gr.Number(0, label="Seed", precision=0, elem_id="gen-seed")
                count = gr.Number(1, label="Images", precision=0, minimum=1, maximum=8, elem_id="gen-count")
            strength = gr.Slider(
                0, 2, value=1.0, step=0.05, label="Control strength", info=HANDREFINER_STRENGTHS,
                elem_id="gen-strength",
            )  # fmt: skip
            resolution = gr.Number(
                0, label="Resolution (0: the base model's)", precision=0, elem_id="gen-resolution"
            )
            score = gr.Checkbox(True, label="Score fidelity (re-detect the landmarks in each image)")
            run = gr.Button("Generate", variant="primary", elem_id="gen-run")
        with gr.Column(scale=2):
            status = gr.Markdown(elem_id="gen-status")
            conditioning = gr.Image(label="Conditioning image", format="png", elem_id="gen-conditioning")
            with gr.Row():
                images = gr.Gallery(label="ControlNet", columns=2, format="png", elem_id="gen-images")
                compared = gr.Gallery(
                    label="Second ControlNet", columns=2, format="png", elem_id="gen-compared"
                )
            fidelity = gr.Dataframe(
                headers=["controlnet", "file", "seed", *api.FIDELITY_COLUMNS], label="Fidelity",
                elem_id="gen-fidelity",
            )  # fmt: skip
            report = gr.JSON(label="report.json", elem_id="gen-report")

    @shown_errors(outputs=6)
    def generate_images(
        base: str, control: str, other: str, upload: str | None, typed_pose: str, chosen: str,
        text: str, negative_text: str, step_count: float, scale: float, first_seed: float,
        images_wanted: float, control_strength: float, size: float, scored: bool,
        progress=gr.Progress(track_tqdm=True),  # noqa: B008 (Gradio's way to ask for a progress bar)
    ):  # fmt: skip
        folder = studio.new_folder("generate")
        pose = studio.take_upload(upload, folder / "pose", "pose file") or typed_pose.strip()
        request = GenerateRequest(
            base_model=base.strip(), controlnet=control.strip(), pose=str(pose), prompt=text,
            out_dir=folder, negative_prompt=negative_text, num_images=int(images_wanted),
            strength=float(control_strength), steps=int(step_count), guidance_scale=float(scale) or None,
            seed=int(first_seed), resolution=int(size) or None, score=scored, conditioner=chosen or None,
        )  # fmt: skip
        if other.strip():
            first, then = api.generate_side_by_side(request, other.strip(), studio.root, studio.loaded)
        else:
            first, then = api.generate(request, studio.root, studio.loaded), None
        table = api.fidelity_rows(first, "controlnet") + (api.fidelity_rows(then, "second") if then else [])
        return (
            f"Written to `{Path(folder).relative_to(studio.root.directory)}`",
            str(first.conditioning),
            api.generated_pictures(first),
            api.generated_pictures(then) if then else [],
            table,
            json.loads(json.dumps(first.report)),
        )

    run.click(
        generate_images,
        [base_model, controlnet, second, pose_file, pose_text, conditioner, prompt, negative, steps, guidance,
         seed, count, strength, resolution, score],
        [status, conditioning, images, compared, fidelity, report],
        api_visibility="private",
    )  # fmt: skip
