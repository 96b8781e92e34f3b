"""Run logs: TensorBoard event files (written without TensorFlow), `metrics.jsonl`, optional wandb.

Only process 0 logs. `metrics.jsonl` has one JSON object per logged step, so a notebook can plot
the loss without TensorBoard.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


class RunLog:
    def __init__(
        self,
        log_dir: Path,
        report_to: str = "tensorboard",
        config: dict[str, Any] | None = None,
        project: str = "train_controlnet_flax",
        entity: str | None = None,
    ):
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        log_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_file = (log_dir / "metrics.jsonl").open("a")
        self.events = EventFileWriter(str(log_dir)) if report_to in ("tensorboard", "all") else None
        self.wandb = None
        if report_to in ("wandb", "all"):
            import wandb  # optional: pip install wandb

            self.wandb = wandb.init(project=project, entity=entity, config=config, dir=str(log_dir))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        values = {k: float(v) for k, v in values.items()}
        self.metrics_file.write(json.dumps({"step": step, "time": time.time(), **values}) + "\n")
        self.metrics_file.flush()
        if self.events:
            from tensorboard.compat.proto.summary_pb2 import Summary

            summary = Summary(value=[Summary.Value(tag=k, simple_value=v) for k, v in values.items()])
            self._add(step, summary)
        if self.wandb:
            self.wandb.log(values, step=step)

    def image(self, step: int, tag: str, image: Image.Image) -> None:
        if self.events:
            from tensorboard.compat.proto.summary_pb2 import Summary

            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            encoded = Summary.Image(
                height=image.height, width=image.width, colorspace=3, encoded_image_string=buffer.getvalue()
            )
            self._add(step, Summary(value=[Summary.Value(tag=tag, image=encoded)]))
        if self.wandb:
            import wandb

            self.wandb.log({tag: wandb.Image(np.asarray(image))}, step=step)

    def _add(self, step: int, summary: Any) -> None:
        from tensorboard.compat.proto.event_pb2 import Event

        self.events.add_event(Event(wall_time=time.time(), step=step, summary=summary))
        self.events.flush()

    def close(self) -> None:
        self.metrics_file.close()
        if self.events:
            self.events.close()
        if self.wandb:
            self.wandb.finish()


def read_metrics(log_dir: Path) -> list[dict[str, Any]]:
    """Logged steps in order, each step's lines merged (the loss and, at a validation, fidelity/*); a step
    logged again after a resume keeps its latest values."""
    path = log_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    by_step: dict[int, dict[str, Any]] = {}
    for entry in map(json.loads, filter(None, lines)):
        by_step.setdefault(entry["step"], {}).update(entry)
    return [by_step[step] for step in sorted(by_step)]
