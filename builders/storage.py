"""A build folder on a local path or at any fsspec URL (`s3://`, `gs://`, `hf://datasets/...`).

Files are made whole or not at all. Locally a file is written to a hidden temporary beside its
final name and renamed into place. Remotely it is written to a local staging file and uploaded
in one `put`: object stores (S3, GCS, Azure, the Hub) only create an object once its upload
completes, so a killed build never leaves half a shard behind. Credentials come from the
filesystem's usual environment (AWS_*, GOOGLE_APPLICATION_CREDENTIALS, HF_TOKEN, ...).
"""

from __future__ import annotations

import atexit
import os
import posixpath
import shutil
import tempfile
from pathlib import Path
from typing import IO

import fsspec
from fsspec.implementations.local import LocalFileSystem


class Folder:
    def __init__(self, location: str | Path):
        self.fs, self.root = fsspec.core.url_to_fs(str(location))
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.location = self.root if self.is_local else str(location)
        self._staging: Path | None = None

    def __reduce__(self):  # worker processes and Ray actors rebuild the filesystem from the URL
        return Folder, (self.location,)

    def __repr__(self) -> str:
        return f"Folder({self.location!r})"

    def __str__(self) -> str:
        return self.location

    def sub(self, name: str) -> Folder:
        return Folder(posixpath.join(self.location.rstrip("/"), name))

    def path(self, name: str) -> str:
        return posixpath.join(self.root, name)

    def local_path(self, name: str) -> Path:
        """Only for local folders: the file's path on this machine."""
        assert self.is_local, self.location
        return Path(self.root) / name

    # -- reading -----------------------------------------------------------------------------
    def names(self, pattern: str) -> list[str]:
        """Names (relative to this folder) matching a glob such as `train-*.parquet`."""
        self.fs.invalidate_cache()  # other processes write here too
        base = self.root.rstrip("/") + "/"
        return sorted(p[len(base) :] if p.startswith(base) else p for p in self.fs.glob(self.path(pattern)))

    def size(self, name: str) -> int:
        """The file's size in bytes."""
        return int(self.fs.size(self.path(name)))

    def exists(self, name: str) -> bool:
        self.fs.invalidate_cache()
        return self.fs.exists(self.path(name))

    def open(self, name: str) -> IO[bytes]:
        return self.fs.open(self.path(name), "rb")

    def read_text(self, name: str) -> str:
        with self.open(name) as file:
            return file.read().decode()

    # -- writing -----------------------------------------------------------------------------
    def makedirs(self) -> None:
        if self.is_local:
            Path(self.root).mkdir(parents=True, exist_ok=True)
        elif "hf" in self.fs.protocol:
            self._create_hub_dataset()
        else:
            self.fs.makedirs(self.root, exist_ok=True)

    def _create_hub_dataset(self) -> None:
        """`hf://datasets/owner/name/...`: the repo must exist before files can be committed to it."""
        import huggingface_hub

        kind, owner, name = (self.root.split("/") + ["", "", ""])[:3]
        if kind != "datasets" or not owner or not name:
            raise ValueError(f"{self.location}: build into a dataset repo, hf://datasets/OWNER/NAME")
        huggingface_hub.create_repo(f"{owner}/{name.split('@')[0]}", repo_type="dataset", exist_ok=True)

    def temporary(self, name: str) -> Path:
        """A local file to write `name` into before `publish` moves it into place."""
        if self.is_local:
            final = self.local_path(name)
        else:
            if self._staging is None:
                self._staging = Path(tempfile.mkdtemp(prefix="landmark-controlnet-"))
                atexit.register(shutil.rmtree, self._staging, True)
            final = self._staging / name
        final.parent.mkdir(parents=True, exist_ok=True)
        return final.with_name(f".{final.name}.{os.getpid()}.tmp")

    def publish(self, temporary: Path, name: str) -> None:
        """Move a finished temporary to `name` atomically (see the module docstring)."""
        if self.is_local:
            os.replace(temporary, self.local_path(name))
            return
        try:
            self.fs.put_file(str(temporary), self.path(name))
        finally:
            temporary.unlink(missing_ok=True)

    def write_bytes(self, name: str, data: bytes) -> None:
        temporary = self.temporary(name)
        temporary.write_bytes(data)
        self.publish(temporary, name)

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode())

    def remove(self, name: str) -> None:
        self.fs.rm(self.path(name))

    def remove_temporaries(self) -> None:
        """Temporaries a killed local build left behind (remote staging lives in the temp dir)."""
        if self.is_local:
            for stale in Path(self.root).glob(".*.tmp"):
                stale.unlink(missing_ok=True)
