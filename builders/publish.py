"""Uploading a built dataset folder to the Hugging Face Hub (or any endpoint in HF_ENDPOINT)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from conditioners.errors import UserError

from .recipe import resolve_builder
from .rows import DatasetNotBuiltError

if TYPE_CHECKING:
    from huggingface_hub import HfApi

# Build bookkeeping (hidden files: state, empty-chunk markers, temporaries) stays local.
IGNORE_PATTERNS = [".*", "*/.*", "*/.*/*"]
REPO_TYPE = "dataset"


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
    with hub_credentials_checked(repo_id, token):
        repo_id = upload(api, folder, repo_id, private, revision)
    url = f"{api.endpoint}/datasets/{repo_id}"
    return url if revision == "main" else f"{url}/tree/{revision}"


def upload(api: HfApi, folder: Path, repo_id: str, private: bool, revision: str) -> str:
    """Create the repo (and branch) if need be, upload, verify; returns the repo's full id."""
    repo_id = api.create_repo(repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True).repo_id
    if revision != "main":
        api.create_branch(repo_id, branch=revision, repo_type=REPO_TYPE, exist_ok=True)
    # Resumable where the Hub speaks Xet (huggingface_hub >= 1 with hf_xet, as on huggingface.co): a
    # re-run skips committed files and re-sends no uploaded data. Over plain LFS (an endpoint without
    # Xet) it is one commit at the end, and a re-run re-sends no LFS object the server already has.
    api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        repo_type=REPO_TYPE,
        revision=revision,
        ignore_patterns=list(IGNORE_PATTERNS),
        commit_message=f"Upload {folder.name} (landmark-controlnet publish)",
    )
    verify_published(api, folder, repo_id, revision)
    return repo_id


class HubAuthError(UserError, PermissionError):
    """The Hub refused the credentials (none, or a token without write access)."""


@contextmanager
def hub_credentials_checked(repo_id: str, token: str | None) -> Iterator[None]:
    """A 401/403 from the Hub as one line that says what to do; the token itself is never shown."""
    from huggingface_hub import get_token
    from huggingface_hub.errors import HfHubHTTPError

    try:
        yield
    except HfHubHTTPError as exc:
        status = getattr(exc.response, "status_code", None)
        if status not in (401, 403):
            raise
        fix = (
            "no token was given: set HF_TOKEN, run `hf auth login`, or pass --token"
            if not (token or get_token())
            else "the token was refused: give one with write access to it"
        )
        raise HubAuthError(f"publish to {repo_id}: the Hub answered {status}; {fix}") from None


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


def verify_published(api: HfApi, folder: Path, repo_id: str, revision: str = "main") -> None:
    """Raise PublishMismatch, naming the repo and every differing file, unless the repo at `revision`
    holds the published files of `folder` at their local sizes."""
    problems = remote_mismatches(api, folder, repo_id, revision)
    if problems:
        raise PublishMismatch(
            f"{api.endpoint}/datasets/{repo_id} (revision {revision}) does not match {folder} after "
            f"publishing:\n  " + "\n  ".join(problems)
        )
