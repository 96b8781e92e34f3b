"""Runs: a training `--output_dir`: the loss, learning-rate and fidelity/* curves from
`logs/metrics.jsonl`, the validation grids over steps with a slider, the checkpoints and the export.
It refreshes every few seconds while the run trains."""

from __future__ import annotations

from typing import Any

from PIL import Image

from conditioners.errors import UserError

from ..app import Studio, shown_errors
from ..runs import RunView, read_run

REFRESH_SECONDS = 5


def build(studio: Studio) -> None:
    import gradio as gr

    with gr.Row():
        output_dir = gr.Textbox(label="Training output folder (--output_dir, in the data root)", scale=3,
                                elem_id="run-dir")  # fmt: skip
        load = gr.Button("Open", variant="primary", elem_id="run-open")
        follow = gr.Checkbox(True, label=f"Refresh every {REFRESH_SECONDS} s", elem_id="run-follow")
    status = gr.Markdown(elem_id="run-status")
    with gr.Row():
        loss = gr.LinePlot(x="step", y="value", color="metric", title="Loss", elem_id="run-loss")
        rate = gr.LinePlot(x="step", y="value", color="metric", title="Learning rate", elem_id="run-lr")
        fidelity = gr.LinePlot(x="step", y="value", color="metric", title="Fidelity", elem_id="run-fidelity")
    step = gr.Slider(
        0, 1, value=0, step=1, label="Validation grid (index over the saved steps)", elem_id="run-step"
    )
    grid = gr.Image(label="Validation grid", format="png", elem_id="run-grid")
    saved = gr.Markdown(elem_id="run-saved")
    timer = gr.Timer(REFRESH_SECONDS, active=False)

    @shown_errors(outputs=6)
    def show(where: str, index: float | None):
        run = read_run(where.strip(), studio.root)
        last = max(len(run.grids) - 1, 0)
        chosen = last if index is None else min(int(index), last)
        return (
            progress_text(run),
            curve_frame(run, lambda name: name == "loss"),
            curve_frame(run, lambda name: name in ("lr", "learning_rate")),
            curve_frame(run, lambda name: name.startswith("fidelity/")),
            gr.update(maximum=max(last, 1), value=chosen, label=grid_label(run, chosen)),
            saved_text(run),
        )

    def pick_grid(where: str, index: float):
        try:
            run = read_run(where.strip(), studio.root)
        except UserError:
            return None  # `show` has put the message in the status line
        if not run.grids:
            return None
        return Image.open(
            run.grids[min(int(index), len(run.grids) - 1)][1]
        )  # in the run, not served as a file

    outputs = [status, loss, rate, fidelity, step, saved]
    load.click(lambda where: show(where, None), output_dir, outputs, api_visibility="private").then(
        pick_grid, [output_dir, step], grid, api_visibility="private"
    ).then(lambda on: gr.Timer(active=on), follow, timer, api_visibility="private")
    follow.change(lambda on: gr.Timer(active=on), follow, timer, api_visibility="private")
    timer.tick(show, [output_dir, step], outputs, api_visibility="private", show_progress="hidden")
    step.release(pick_grid, [output_dir, step], grid, api_visibility="private")


def curve_frame(run: RunView, wanted: Any) -> Any:
    import pandas as pd

    points = [
        {"step": step, "value": value, "metric": name}
        for name, curve in run.curves.items()
        if wanted(name)
        for step, value in curve
    ]
    return pd.DataFrame(points, columns=["step", "value", "metric"])


def progress_text(run: RunView) -> str:
    return (
        f"`{run.output_dir.name}`: last logged step {run.last_step}"
        if run.last_step is not None
        else (f"`{run.output_dir.name}`: nothing logged yet")
    )


def grid_label(run: RunView, index: int) -> str:
    if not run.grids:
        return "Validation grid (none saved yet)"
    return f"Validation grid at step {run.grids[index][0]} ({index + 1} of {len(run.grids)})"


def saved_text(run: RunView) -> str:
    steps = ", ".join(str(step) for step in run.checkpoints) or "none yet"
    export = (
        f"exported ControlNet: `{run.export}`"
        if run.export
        else "not exported yet (the run exports at its end)"
    )
    return f"Checkpoints at steps: {steps}. {export.capitalize()}"
