"""Uploading a built dataset folder to the Hugging Face Hub (or any endpoint in HF_ENDPOINT)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from conditioners.errors import UserError

from .recipe import resolve_builder
from .run import DatasetNotBuiltError

if TYPE_CHECKING:
    from huggingface_hub import HfApi

# Build bookkeeping (hidden files: state, empty-chunk markers, temporaries) stays local.
IGNORE_PATTERNS = [".*", "*/.*", "*/.*/*"]
REPO_TYPE = "dataset"
# One upload folder per destination, inside the (hidden, never published) build bookkeeping.
PUBLISH_STATE = Path(".cache", "landmark-controlnet", "publish")


class PublishMismatch(UserError, RuntimeError):
    """After a publish, the remote repo does not hold the folder's files."""


def published_files(folder: Path) -> list[str]:
    """The files an upload of `folder` sends, relative to it."""
    from huggingface_hub.utils import filter_repo_objects

    paths = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    return sorted(filter_repo_objects(paths, ignore_patterns=IGNORE_PATTERNS))


def publish(
    name_or_dir: str,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    revision: str = "main",
) -> str:
    """Upload the builder folder as a dataset repo (branch `revision`, created from main if missing),
    then check that the remote holds every file at its local size. Resumable per destination: an
    interrupted publish to the same repo and revision picks up where it stopped; another repo or
    revision gets everything. Returns the repo URL."""
    from huggingface_hub import HfApi

    folder = resolve_builder(name_or_dir) if not Path(name_or_dir).is_dir() else Path(name_or_dir)
    if not any((folder / "data").glob("*.parquet")):
        raise DatasetNotBuiltError(
            f"{folder} has no data/*.parquet: build it first (landmark-controlnet build ...)"
        )
    if not (folder / "README.md").exists():
        raise DatasetNotBuiltError(
            f"{folder} has no README.md dataset card: build it with landmark-controlnet build"
        )
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True).repo_id
    if revision != "main":
        api.create_branch(repo_id, branch=revision, repo_type=REPO_TYPE, exist_ok=True)
    staging = stage(folder, staging_folder(folder, api.endpoint, repo_id, revision))
    api.upload_large_folder(
        repo_id=repo_id,
        folder_path=staging,
        repo_type=REPO_TYPE,
        revision=revision,
        private=private,
        ignore_patterns=list(IGNORE_PATTERNS),  # it extends the list it is given in place
        print_report=False,
    )
    verify_published(api, folder, repo_id, revision, state=staging)
    url = f"{api.endpoint}/datasets/{repo_id}"
    return url if revision == "main" else f"{url}/tree/{revision}"


# huggingface_hub's large-folder upload keeps its progress (hashes, upload modes, "uploaded",
# "committed") in `<uploaded folder>/.cache/huggingface/`, with no record of the repo it was for, so
# uploading the build folder itself to a second repo would skip everything as already committed.
# Instead each destination gets its own upload folder of links to the build's files, and so its own
# `.cache/huggingface/`. Nothing is ever moved or swapped: a kill -9 at any point leaves every
# destination's state where the next publish to that destination looks for it (swapping one state
# directory in and out of the build folder could, killed between the swaps, leave repo A's state in
# place for a publish to repo B). The public upload_large_folder is used as is.


def staging_folder(folder: Path, endpoint: str, repo_id: str, revision: str) -> Path:
    """`<folder>/.cache/landmark-controlnet/publish/<key>/`, one per (endpoint, repo, revision): the same
    repo id on another Hub (HF_ENDPOINT) is another destination."""
    identity = "\n".join([endpoint.rstrip("/"), REPO_TYPE, repo_id, revision])
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{REPO_TYPE}--{repo_id.replace('/', '--')}--{revision}")
    return folder / PUBLISH_STATE / f"{readable[:80]}--{hashlib.sha256(identity.encode()).hexdigest()[:16]}"


def stage(folder: Path, staging: Path) -> Path:
    """Make `staging` hold links to exactly the published files of `folder`, keeping its upload state
    (`staging/.cache/`). Rebuilt on every publish, so files added, removed or rebuilt since are seen."""
    staging.mkdir(parents=True, exist_ok=True)
    for child in staging.iterdir():
        if child.name == ".cache":
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    for relpath in published_files(folder):
        link = staging / relpath
        link.parent.mkdir(parents=True, exist_ok=True)
        _link(folder / relpath, link)
    return staging


def _link(source: Path, link: Path) -> None:
    """A symlink (huggingface_hub stats through it, so a rebuilt file's new mtime makes it re-hash);
    a hard link where symlinks are not allowed (Windows without developer mode)."""
    try:
        os.symlink(source.resolve(), link)
    except OSError:
        os.link(source, link)


def remote_mismatches(api: HfApi, folder: Path, repo_id: str, revision: str = "main") -> list[str]:
    """What differs between the published files of `folder` and the repo at `revision`: files
    missing or of another size remotely, and remote data files this build lacks (load_dataset would
    read them as rows). Other remote extras (.gitattributes, a LICENSE added on the Hub) are fine."""
    from huggingface_hub.hf_api import RepoFile

    tree = api.list_repo_tree(repo_id, repo_type=REPO_TYPE, revision=revision, recursive=True)
    remote = {entry.path: entry.size for entry in tree if isinstance(entry, RepoFile)}
    local = {relpath: (folder / relpath).stat().st_size for relpath in published_files(folder)}
    problems = [f"{p}: missing" for p in local if p not in remote]
    problems += [
        f"{p}: {remote[p]} bytes remotely, {size} locally"
        for p, size in local.items()
        if p in remote and remote[p] != size
    ]
    problems += [
        f"{p}: not in this build (load_dataset would read it: delete it from the repo)"
        for p in sorted(remote)
        if p.startswith("data/") and p not in local
    ]
    return problems


def verify_published(
    api: HfApi, folder: Path, repo_id: str, revision: str = "main", state: Path | None = None
) -> None:
    """Raise PublishMismatch, naming the repo and every differing file, unless the repo at `revision`
    holds the published files of `folder` at their local sizes."""
    problems = remote_mismatches(api, folder, repo_id, revision)
    if problems:
        hint = (
            f"\nIf the repo lost files since an earlier publish, delete {state} to upload all again."
            if state
            else ""
        )
        raise PublishMismatch(
            f"{api.endpoint}/datasets/{repo_id} (revision {revision}) does not match {folder} after "
            f"publishing:\n  " + "\n  ".join(problems) + hint
        )
