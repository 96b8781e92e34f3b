"""Evaluate: a folder of generated images against a reference folder (`condition`'s detection JSONs),
or an existing `evaluate --out` folder: the summary table, the report picture, and PCK against control
strength when `evaluate` swept several strengths."""

from __future__ import annotations

from typing import Any

from PIL import Image

import conditioners
from conditioners.errors import UserError

from ...evaluation.generate import TABLE_FIGURES
from ..app import Studio, shown_errors
from ..evaluation import EvaluationView, evaluate_generated, read_evaluation

TABLE_COLUMNS = ["model", "strength", *TABLE_FIGURES]


def build(studio: Studio) -> None:
    import gradio as gr

    with gr.Row():
        generated = gr.Textbox(label="Generated images (folder in the data root)", elem_id="eval-generated")
        reference = gr.Textbox(label="Reference detections (folder of NAME.json)", elem_id="eval-reference")
        conditioner = gr.Dropdown(
            ["", *conditioners.available()], value="", label="Conditioner (empty: the references')"
        )
    with gr.Row():
        out_dir = gr.Textbox(label="Output folder (evaluate --out)", elem_id="eval-out")
        run = gr.Button("Evaluate", variant="primary", elem_id="eval-run")
        open_button = gr.Button("Open results", elem_id="eval-open")
    status = gr.Markdown(elem_id="eval-status")
    table = gr.Dataframe(headers=TABLE_COLUMNS, label="Summary", elem_id="eval-table")
    curve = gr.LinePlot(
        x="strength", y="pck_0.1", color="model", title="PCK@0.1 against control strength", elem_id="eval-pck"
    )
    which = gr.Dropdown([], label="Report (model and strength)", elem_id="eval-report-choice")
    report = gr.Image(label="Report: worst and best rows", format="png", elem_id="eval-report")

    @shown_errors(outputs=5)
    def evaluate(made: str, refs: str, name: str, out: str):
        return shown(evaluate_generated(made.strip(), refs.strip(), out.strip(), studio.root, name or None))

    @shown_errors(outputs=5)
    def open_results(out: str):
        return shown(read_evaluation(out.strip(), studio.root))

    def pick_report(out: str, caption: str | None):
        try:
            chosen = dict(read_evaluation(out.strip(), studio.root).reports).get(caption)
        except UserError:
            return None  # the status line already says why
        return Image.open(chosen) if chosen else None

    outputs = [status, table, curve, which, report]
    run.click(evaluate, [generated, reference, conditioner, out_dir], outputs, api_visibility="private")
    open_button.click(open_results, out_dir, outputs, api_visibility="private")
    which.input(pick_report, [out_dir, which], report, api_visibility="private")


def shown(view: EvaluationView) -> tuple[Any, ...]:
    import pandas as pd

    points = [
        {"model": model, "strength": strength, "pck_0.1": pck}
        for model, curve in view.pck_by_strength.items()
        for strength, pck in curve
    ]
    frame = pd.DataFrame(points, columns=["model", "strength", "pck_0.1"])
    import gradio as gr

    captions = [caption for caption, _ in view.reports]
    first = Image.open(view.reports[0][1]) if view.reports else None
    choice = gr.update(choices=captions, value=captions[0] if captions else None)
    return f"`{view.out_dir.name}`", view.table, frame, choice, first
