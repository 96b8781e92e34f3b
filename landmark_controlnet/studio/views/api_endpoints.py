"""The named API endpoints, for `gradio_client` or plain HTTP (README, "Studio API"):

    /condition     (photo file, conditioner, options JSON)            -> (conditioning PNG, detection JSON)
    /dataset_rows  (dataset path or id, split, offset, count)         -> (rows JSON, their pictures as PNGs)
    /generate      (base model, ControlNet, pose file, prompt, settings JSON) -> (PNGs, report JSON)

Each gives what the CLI writes for the same inputs; a mistake is the endpoint's one-line error."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from conditioners.errors import OptionError

from ...generate import GenerateRequest
from .. import api
from ..app import Studio, api_errors, parse_json_object

# `generate` settings the /generate endpoint takes in its JSON, with their types
GENERATE_SETTINGS = {
    "negative_prompt": str, "num_images": int, "strength": float, "steps": int, "guidance_scale": float,
    "seed": int, "resolution": int, "score": bool, "conditioner": str, "conditioner_options": dict,
}  # fmt: skip


def build(studio: Studio) -> None:
    import gradio as gr

    with gr.Row(visible=False):  # inputs and outputs of the endpoints only, not shown
        photo, pose = gr.File(), gr.File()
        conditioner, options = gr.Textbox(), gr.Textbox()
        location, split, offset, count = (
            gr.Textbox(),
            gr.Textbox(),
            gr.Number(precision=0),
            gr.Number(precision=0),
        )
        base, controlnet, prompt, settings = gr.Textbox(), gr.Textbox(), gr.Textbox(), gr.Textbox()
        png, detection = gr.File(), gr.Textbox()
        rows, pictures = gr.JSON(), gr.File(file_count="multiple")
        images, report = gr.File(file_count="multiple"), gr.JSON()
        trigger = gr.Button()

    @api_errors
    def condition(photo_file: str, name: str, options_text: str) -> tuple[str, str]:
        """One photo through one conditioner, as `condition PHOTO --conditioner NAME --option ...`."""
        folder = studio.new_folder("api_condition")
        source = studio.take_upload(photo_file, folder, "photo")
        if source is None:
            raise OptionError("/condition: no photo given")
        result = api.condition(source, name, parse_json_object(options_text, "options"), None, studio.loaded)
        files = result.write(folder / result.conditioner / source.stem)
        return str(files["conditioning_image"]), result.detection_json

    @api_errors
    def dataset_rows(where: str, which: str, first: float, wanted: float) -> tuple[list[dict], list[str]]:
        """Rows of a dataset, as `open_dataset` reads them: caption, landmarks, instance counts; the
        photo and conditioning image of each as PNG files, in row order."""
        found = api.dataset_rows(where, which or "train", int(first), int(wanted), studio.root)
        folder = studio.new_folder("api_dataset_rows")
        files = []
        for row in found:
            for column in ("photo", "conditioning_image"):
                picture = getattr(row, column)
                if picture is not None:
                    files.append(folder / f"row{row.index:06d}_{column}.png")
                    picture.save(files[-1])
        return [row_record(row) for row in found], [str(path) for path in files]

    @api_errors
    def generate(base_model: str, control: str, pose_file: str, text: str, settings_text: str):
        """`generate --base-model --controlnet --pose --prompt` with the settings JSON's flags."""
        folder = studio.new_folder("api_generate")
        chosen = generate_settings(parse_json_object(settings_text, "settings"))
        pose_path = studio.take_upload(pose_file, folder / "pose", "pose file")
        pose_text = str(pose_path) if pose_path else chosen.pop("pose", "")
        request = GenerateRequest(
            base_model=base_model, controlnet=control, pose=pose_text, prompt=text, out_dir=folder, **chosen
        )
        result = api.generate(request, studio.root, studio.loaded)
        return [str(result.conditioning), *map(str, result.images)], result.report

    # Unqueued: answered on the request itself, without the queue's event stream (a third of a warm
    # /condition's latency); `Loaded` still runs each detector for one request at a time.
    trigger.click(
        condition, [photo, conditioner, options], [png, detection], api_name="condition", queue=False
    )
    trigger.click(
        dataset_rows, [location, split, offset, count], [rows, pictures], api_name="dataset_rows", queue=False
    )
    trigger.click(generate, [base, controlnet, pose, prompt, settings], [images, report], api_name="generate")


def row_record(row: api.DatasetRow) -> dict[str, Any]:
    fields = dataclasses.asdict(row) | {}
    return {key: value for key, value in fields.items() if key not in ("photo", "conditioning_image")}


def generate_settings(given: dict[str, Any]) -> dict[str, Any]:
    """The settings JSON as `GenerateRequest` fields; `pose` (DATASET_DIR#ROW or a JSON in the data
    root) is allowed in place of the pose file. An unknown key or a wrong type is refused."""
    allowed = {**GENERATE_SETTINGS, "pose": str}
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise OptionError(f"settings: unknown {', '.join(unknown)}; known: {', '.join(sorted(allowed))}")
    for key, value in given.items():
        if not of_type(value, allowed[key]):
            raise OptionError(f"settings: {key} must be {allowed[key].__name__}, not {json.dumps(value)}")
    return dict(given)


def of_type(value: Any, kind: type) -> bool:
    """JSON's types as Python's: a bool is no number, and an integer is also a float."""
    if isinstance(value, bool):
        return kind is bool
    return isinstance(value, kind) or (kind is float and isinstance(value, int))
