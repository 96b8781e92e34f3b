"""Conditioners: photos (uploaded or from the webcam) through the chosen conditioners, side by side
with their conditioning images, extras and landmarks over the photo; an instance table; re-drawing
in another style or size; the PNG and JSON files to download."""

from __future__ import annotations

from typing import Any

import conditioners

from .. import api
from ..app import Studio, parse_json_object, shown_errors, size_of

INSTANCE_COLUMNS = ["photo", "conditioner", "#", "kind", "handedness", "score", "points"]


def build(studio: Studio) -> None:
    import gradio as gr

    names = conditioners.available()
    with gr.Row():
        with gr.Column(scale=1):
            photos = gr.File(
                label="Photos", file_count="multiple", file_types=["image"], elem_id="condition-photos"
            )
            webcam = gr.Image(label="Webcam", sources=["webcam"], type="filepath", elem_id="condition-webcam")
        with gr.Column(scale=1):
            chosen = gr.CheckboxGroup(
                names, value=["hand_encoded"] if "hand_encoded" in names else names[:1],
                label="Conditioners", elem_id="condition-names",
            )  # fmt: skip
            options = gr.Textbox(
                label="Options (JSON, as --option K=V)",
                placeholder='{"detect_long_side": 1024, "min_instance_size": 24, "selfie": false}',
                elem_id="condition-options",
            )
            accepted = gr.Markdown(accepted_options_text(chosen.value))
            size = gr.Textbox(label="Size WxH (empty: the photo's)", elem_id="condition-size")
            run = gr.Button("Condition", variant="primary", elem_id="condition-run")
    status = gr.Markdown(elem_id="condition-status")
    gallery = gr.Gallery(
        label="Photo, conditioning images, extras, landmarks over the photo",
        columns=4, format="png", elem_id="condition-gallery",
    )  # fmt: skip
    table = gr.Dataframe(headers=INSTANCE_COLUMNS, label="Instances", elem_id="condition-instances")
    downloads = gr.File(label="PNG and JSON files", file_count="multiple", elem_id="condition-files")
    detections = gr.State([])  # (label, detection JSON) of each result, for re-drawing
    with gr.Accordion("Re-draw a detection", open=False):
        with gr.Row():
            which = gr.Dropdown([], label="Detection", elem_id="redraw-which")
            style = gr.Dropdown(names, label="Style (conditioner)", elem_id="redraw-style")
            redraw_size = gr.Textbox(label="Size WxH", elem_id="redraw-size")
            redraw = gr.Button("Re-draw", elem_id="redraw-run")
        redrawn = gr.Image(label="Re-drawn", format="png", elem_id="redraw-image")
        redraw_status = gr.Markdown()

    chosen.change(accepted_options_text, chosen, accepted, api_visibility="private")

    @shown_errors(outputs=6)
    def condition_photos(
        uploads: list[str] | None, shot: str | None, picked: list[str], typed: str, size_text: str
    ):
        folder = studio.new_folder("condition")
        photos_in = [
            studio.take_upload(path, folder / "inputs", "photo") for path in [*(uploads or []), shot]
        ]
        done = api.condition_photos(
            [path for path in photos_in if path], picked, parse_json_object(typed, "Options"),
            size_of(size_text), folder, studio.loaded,
        )  # fmt: skip
        errors = [f"**Error:** {item.error}" for item in done if item.error]
        kept = [item for item in done if not item.error]
        labels = [f"{item.photo.name} / {item.conditioner}" for item in kept]
        return (
            "\n\n".join(errors) or f"{len(kept)} result(s) in `{folder.relative_to(studio.root.directory)}`",
            [cell for item in kept for cell in gallery_cells(item)],
            [row for item in kept for row in instance_table_rows(item)],
            [str(path) for item in kept for path in item.files.values()],
            list(zip(labels, [item.result.detection_json for item in kept], strict=True)),
            gr.update(choices=labels, value=labels[0] if labels else None),
        )

    run.click(
        condition_photos, [photos, webcam, chosen, options, size],
        [status, gallery, table, downloads, detections, which], api_visibility="private",
    )  # fmt: skip

    @shown_errors(outputs=2)
    def draw_again(label: str | None, stored: list[tuple[str, str]], style_name: str | None, size_text: str):
        text = dict(stored).get(label)
        if text is None:
            return "Condition a photo first, then pick one of its detections.", None
        return "", api.redraw(text, style_name, size_of(size_text))

    redraw.click(
        draw_again,
        [which, detections, style, redraw_size],
        [redraw_status, redrawn],
        api_visibility="private",
    )


def accepted_options_text(names: list[str] | None) -> str:
    """The options each chosen conditioner takes, as the CLI's `--option` accepts them."""
    taken = {
        name: conditioners.accepted_options(conditioners.conditioner_class(name)) for name in names or []
    }
    lines = [f"- `{name}`: {', '.join(options) or 'none'}" for name, options in taken.items()]
    return "Options they take:\n" + "\n".join(lines) if lines else ""


def gallery_cells(item: api.ConditionedPhoto) -> list[tuple[str, str]]:
    cells = [(str(item.photo), item.photo.name)]
    cells += [
        (str(path), f"{item.conditioner}: {name}") for name, path in item.files.items() if name != "json"
    ]
    if item.overlay:
        cells.append((str(item.overlay), "landmarks over the photo"))
    return cells


def instance_table_rows(item: api.ConditionedPhoto) -> list[list[Any]]:
    assert item.result is not None
    rows = api.instance_rows(item.result.detection_json)
    if not rows:
        return [[item.photo.name, item.conditioner, "", item.result.skipped or "none found", "", "", ""]]
    return [
        [item.photo.name, item.conditioner, r.index, r.kind, r.handedness, r.score, r.points] for r in rows
    ]
