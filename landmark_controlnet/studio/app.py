"""Landmark ControlNet Studio, the web app (Gradio): five views and three named API endpoints, laid
out over the application layer (`studio.api`, `studio.runs`, `studio.evaluation`), which holds the
logic. `landmark-controlnet app` and the Space's `app.py` call `serve`.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import wraps
from pathlib import Path
from typing import Any

from conditioners.errors import OptionError, UserError

from ..loaded import Loaded
from .paths import DataRoot

DEFAULT_HOST = "127.0.0.1"  # never all interfaces unless asked (--host 0.0.0.0)
DEFAULT_PORT = 7860
DEFAULT_MAX_UPLOAD_MB = 25
OUTPUTS = "studio_outputs"  # under the data root: what the app writes, and the only files it serves


@dataclass
class StudioSettings:
    data_root: Path = field(default_factory=Path.cwd)
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    share: bool = False
    max_upload_mb: int = DEFAULT_MAX_UPLOAD_MB


class Studio:
    """What every view shares: the data root, the outputs folder inside it, the upload cap and the
    detectors and models kept loaded for the life of the process."""

    def __init__(self, settings: StudioSettings):
        self.settings = settings
        self.root = DataRoot(settings.data_root)
        self.outputs = self.root.directory / OUTPUTS
        self.loaded = Loaded()

    @property
    def max_upload_bytes(self) -> int:
        return self.settings.max_upload_mb * 1024 * 1024

    def new_folder(self, kind: str) -> Path:
        """A fresh folder for one request's outputs, `studio_outputs/<kind>/<time>`."""
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        folder = self.outputs / kind / stamp
        folder.mkdir(parents=True)
        return folder

    def take_upload(self, upload: str | None, folder: Path, what: str) -> Path | None:
        """An uploaded file (in the web framework's temp folder) checked against the size cap and
        copied into `folder`, so that the request's paths all lie in the data root."""
        if not upload:
            return None
        source = Path(upload)
        if source.stat().st_size > self.max_upload_bytes:
            raise OptionError(
                f"{source.name}: {what} larger than the upload cap of {self.settings.max_upload_mb} MB"
            )
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / source.name
        shutil.copyfile(source, target)
        return target


def shown_errors(outputs: int) -> Callable:
    """A view handler whose first output is its status line: a user's mistake (`UserError`) is shown
    there on one line, as the CLI prints it, and the other outputs are left as they were."""

    def decorate(handler: Callable) -> Callable:
        @wraps(handler)
        def run(*args: Any, **kwargs: Any) -> Any:
            import gradio as gr

            try:
                return handler(*args, **kwargs)
            except UserError as exc:
                return (f"**Error:** {exc}", *(gr.skip() for _ in range(outputs - 1)))

        return run

    return decorate


def api_errors(handler: Callable) -> Callable:
    """An API handler: a `UserError` is the endpoint's error message (gradio_client raises it)."""

    @wraps(handler)
    def run(*args: Any, **kwargs: Any) -> Any:
        import gradio as gr

        try:
            return handler(*args, **kwargs)
        except UserError as exc:
            raise gr.Error(str(exc), print_exception=False) from None

    return run


def parse_json_object(text: str | None, what: str) -> dict[str, Any]:
    """A JSON object typed into the page ('' is {}); anything else is a one-line error."""
    if not text or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise OptionError(f"{what}: not valid JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(value, dict):
        raise OptionError(f'{what}: a JSON object is expected, e.g. {{"min_instance_size": 40}}')
    return value


def size_of(text: str | None) -> tuple[int, int] | None:
    """A size typed as WxH ('' is none), as the CLI's --size reads it."""
    import argparse

    from ..options import parse_size

    if not text or not text.strip():
        return None
    try:
        return parse_size(text.strip())
    except argparse.ArgumentTypeError as exc:
        raise OptionError(f"size: {exc}") from None


def build_app(settings: StudioSettings) -> Any:
    """The Gradio Blocks of the Studio: one tab per view, and the API endpoints."""
    import gradio as gr

    from .views import (
        api_endpoints,
        conditioners_view,
        datasets_view,
        evaluate_view,
        generate_view,
        runs_view,
    )

    studio = Studio(settings)
    with gr.Blocks(title="Landmark ControlNet Studio", analytics_enabled=False) as blocks:
        gr.Markdown(
            "# Landmark ControlNet Studio\n"
            f"Conditioners, datasets, generation, training runs and evaluation. Paths are read inside "
            f"the data root `{studio.root.directory}`; outputs go to `{OUTPUTS}/` there."
        )
        api_endpoints.build(studio)  # first, so that the endpoints own their names
        with gr.Tabs():
            with gr.Tab("Conditioners", id="conditioners"):
                conditioners_view.build(studio)
            with gr.Tab("Datasets", id="datasets"):
                datasets_view.build(studio)
            with gr.Tab("Generate", id="generate"):
                generate_view.build(studio)
            with gr.Tab("Runs", id="runs"):
                runs_view.build(studio)
            with gr.Tab("Evaluate", id="evaluate"):
                evaluate_view.build(studio)
    blocks.studio = studio  # for tests and benchmarks: the detectors and models it keeps loaded
    return blocks


def serve(settings: StudioSettings, block: bool = True) -> Any:
    """Start the server (127.0.0.1 unless told otherwise); with `block=False`, return once it
    listens (tests, benchmarks). Only the outputs folder is served as files."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local tool
    blocks = build_app(settings)
    blocks.queue(default_concurrency_limit=1)  # one sampler and one detector pass at a time
    studio: Studio = blocks.studio
    studio.outputs.mkdir(parents=True, exist_ok=True)
    blocks.launch(
        server_name=settings.host,
        server_port=settings.port,
        share=settings.share,
        max_file_size=studio.max_upload_bytes,
        allowed_paths=[str(studio.outputs)],
        prevent_thread_lock=not block,
        quiet=not block,
        footer_links=["api"],
        ssr_mode=False,
    )
    return blocks
