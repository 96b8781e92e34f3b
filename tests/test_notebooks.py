"""The notebooks: stored without outputs, and run top to bottom on CPU, in order (03 uses 02's dataset)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_three_notebooks():
    assert [p.name for p in NOTEBOOKS] == [
        "01_conditioners.ipynb",
        "02_build_a_dataset.ipynb",
        "03_train.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    book = nbformat.read(path, as_version=4)
    for index, cell in enumerate(book.cells):
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name} cell {index} has outputs"


@pytest.fixture(scope="module")
def notebook_env(tmp_path_factory, data_dir):
    """The kernels inherit these: photos from ../shared/data, work in a temporary folder, no token."""
    saved = {
        k: os.environ.get(k) for k in ("LANDMARK_CONTROLNET_DATA", "LANDMARK_CONTROLNET_WORK", "HF_TOKEN")
    }
    os.environ["LANDMARK_CONTROLNET_DATA"] = str(data_dir)
    os.environ["LANDMARK_CONTROLNET_WORK"] = str(tmp_path_factory.mktemp("notebooks"))
    os.environ.pop("HF_TOKEN", None)
    yield Path(os.environ["LANDMARK_CONTROLNET_WORK"])
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, notebook_env):
    book = nbformat.read(path, as_version=4)
    client = NotebookClient(
        book, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()  # raises CellExecutionError, naming the cell, on any error
    images = sum(
        "image/png" in output.get("data", {}) for cell in book.cells for output in cell.get("outputs", [])
    )
    assert images >= 2, f"{path.name} showed {images} pictures"
    if path.stem == "03_train":
        assert any((notebook_env / "tiny_controlnet" / "validation").glob("step-*.png"))
