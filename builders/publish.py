"""Uploading a built dataset folder to the Hugging Face Hub (or any endpoint in HF_ENDPOINT)."""

from __future__ import annotations

from pathlib import Path

from .recipe import resolve_builder

# Build bookkeeping (hidden files: state, empty-chunk markers, temporaries) stays local.
IGNORE_PATTERNS = [".*", "*/.*", "*/.*/*"]


def published_files(folder: Path) -> list[str]:
    """The files an upload of `folder` sends, relative to it."""
    from huggingface_hub.utils import filter_repo_objects

    paths = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    return sorted(filter_repo_objects(paths, ignore_patterns=IGNORE_PATTERNS))


def publish(name_or_dir: str, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Upload the builder folder as a dataset repo; resumable (huggingface_hub's large-folder upload
    keeps its progress in `.cache/huggingface/` inside the folder). Returns the repo URL."""
    from huggingface_hub import HfApi

    folder = resolve_builder(name_or_dir) if not Path(name_or_dir).is_dir() else Path(name_or_dir)
    if not any((folder / "data").glob("*.parquet")):
        raise FileNotFoundError(
            f"{folder} has no data/*.parquet: build it first (landmark-controlnet build ...)"
        )
    if not (folder / "README.md").exists():
        raise FileNotFoundError(
            f"{folder} has no README.md dataset card: build it with landmark-controlnet build"
        )
    api = HfApi(token=token)
    api.upload_large_folder(
        repo_id=repo_id,
        folder_path=folder,
        repo_type="dataset",
        private=private,
        ignore_patterns=IGNORE_PATTERNS,
        print_report=False,
    )
    return f"{api.endpoint}/datasets/{repo_id}"
