"""Datasets: a built folder under the data root or a Hub id (through HF_ENDPOINT): the card's summary,
the skip counts by reason as a chart, a paged and filtered grid of rows, and one row's landmarks over
its photo with its JSON."""

from __future__ import annotations

from typing import Any

from .. import api
from ..app import Studio, shown_errors

PAGE_SIZE = 12
KINDS = ["", "left_hand", "right_hand", "hand", "face", "pose", "animal"]


def build(studio: Studio) -> None:
    import gradio as gr
    import pandas as pd

    with gr.Row():
        location = gr.Textbox(
            label="Dataset: a folder under the data root, a builder name or a Hub id", scale=3,
            elem_id="dataset-location",
        )  # fmt: skip
        split = gr.Dropdown(
            ["train"], value="train", label="Split", allow_custom_value=True, elem_id="dataset-split"
        )
        open_button = gr.Button("Open", variant="primary", elem_id="dataset-open")
    status = gr.Markdown(elem_id="dataset-status")
    with gr.Row():
        summary = gr.Markdown(elem_id="dataset-summary")
        skips = gr.BarPlot(
            pd.DataFrame({"reason": [], "images": []}), x="reason", y="images",
            title="Skipped images by reason", elem_id="dataset-skips",
        )  # fmt: skip
    with gr.Row():
        caption = gr.Textbox(label="Caption contains", elem_id="dataset-caption-filter")
        least = gr.Number(0, label="At least N instances", precision=0, minimum=0)
        most = gr.Number(-1, label="At most N instances (-1: any)", precision=0, minimum=-1)
        kind = gr.Dropdown(KINDS, value="", label="With an instance of kind")
        page = gr.Number(0, label="Page", precision=0, minimum=0, elem_id="dataset-page")
        show = gr.Button("Show rows", elem_id="dataset-show")
    grid = gr.Gallery(
        label="Rows: photo, conditioning image", columns=4, format="png", elem_id="dataset-grid"
    )
    with gr.Row():
        row_number = gr.Number(0, label="Row", precision=0, minimum=0, elem_id="dataset-row")
        row_button = gr.Button("Show row", elem_id="dataset-row-show")
    with gr.Row():
        row_picture = gr.Image(label="Landmarks over the photo", format="png", elem_id="dataset-row-image")
        row_json = gr.Code(label="Landmarks (JSON)", language="json", elem_id="dataset-row-json")

    @shown_errors(outputs=4)
    def open_dataset(where: str, wanted: str):
        found = api.dataset_summary(where.strip(), studio.root)
        chosen = wanted if wanted in found.splits else found.splits[0]
        card = found.card
        skipped = card.skipped if card else {}
        chart = pd.DataFrame({"reason": list(skipped), "images": list(skipped.values())})
        return "", gr.update(choices=found.splits, value=chosen), summary_text(where, found), chart

    @shown_errors(outputs=2)
    def show_rows(
        where: str, which: str, text: str, low: float | None, high: float | None, wanted: str, number
    ):
        high = None if high is None or high < 0 else int(high)
        row_filter = api.RowFilter((text or "").strip(), int(low or 0), high, wanted or "")
        shown = api.dataset_page(
            where.strip(), which, int(number or 0) * PAGE_SIZE, PAGE_SIZE, studio.root, row_filter
        )
        cells = [cell for row in shown.rows for cell in grid_cells(row)]
        first = shown.rows[0].index if shown.rows else None
        return (
            f"{shown.matching} of {shown.total} rows match; page {int(number or 0)} from row {first}",
            cells,
        )

    @shown_errors(outputs=3)
    def show_row(where: str, which: str, number: float):
        [row] = api.dataset_rows(where.strip(), which, int(number), 1, studio.root) or [None]
        if row is None:
            return f"row {int(number)}: past the end", None, ""
        if not row.landmarks or row.photo is None:
            return f"row {row.index} has no landmarks", row.photo, row.landmarks or ""
        return f"row {row.index}: {row.caption}", api.landmarks_over(row.photo, row.landmarks), row.landmarks

    filters = [location, split, caption, least, most, kind, page]
    open_button.click(
        open_dataset, [location, split], [status, split, summary, skips], api_visibility="private"
    ).then(show_rows, filters, [status, grid], api_visibility="private")
    show.click(show_rows, filters, [status, grid], api_visibility="private")
    row_button.click(
        show_row, [location, split, row_number], [status, row_picture, row_json], api_visibility="private"
    )


def summary_text(where: str, found: api.DatasetSummary) -> str:
    card = found.card
    if card is None:
        return f"**{where}**: no dataset card. Splits: {', '.join(found.splits)}"
    facts = "\n".join(f"| {key} | {value} |" for key, value in card.built_with.items())
    rows = ", ".join(f"`{split}`: {count}" for split, count in card.split_rows.items())
    return f"### {card.pretty_name}\n\n{card.description}\n\nRows: {rows or 'unknown'}\n\n" + (
        f"| | |\n|---|---|\n{facts}" if facts else ""
    )


def grid_cells(row: api.DatasetRow) -> list[tuple[Any, str]]:
    label = f"row {row.index}: {row.caption[:60]}" + (
        f" ({row.instances} instances)" if row.instances else ""
    )
    return [(row.photo, label), (row.conditioning_image, f"row {row.index}: conditioning image")]
