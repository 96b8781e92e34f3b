"""User-typed paths confined to a data root: the web app must never read or write outside it.

A path is taken relative to the root, `..` and symlinks resolved, and refused unless it then lies
inside the root. Text that names no file under the root and has the `owner/name` form of a Hub id
(`conditioners.locations`' rule) is passed through as a Hub id, never confined.
"""

from __future__ import annotations

import os
from pathlib import Path

from conditioners.errors import UserError
from conditioners.locations import HUB_ID, NoSuchPathError, looks_like_path


class OutsideDataRootError(UserError, PermissionError):
    """A user-typed path that leads outside the data root."""


class DataRoot:
    """The folder every user-typed path is confined to (default: the working directory)."""

    def __init__(self, directory: str | os.PathLike | None = None):
        # Resolved once, so that containment compares real paths with real paths.
        self.directory = Path(directory if directory is not None else Path.cwd()).resolve()

    def __repr__(self) -> str:
        return f"DataRoot({str(self.directory)!r})"

    def resolve(self, user_path: str | os.PathLike) -> Path:
        """`user_path` as an absolute path inside the root (relative ones are relative to it);
        one that leads outside, by an absolute path, `..` or a symlink, is an `OutsideDataRootError`."""
        path = (self.directory / Path(user_path).expanduser()).resolve()
        if not path.is_relative_to(self.directory):
            raise OutsideDataRootError(
                f"{os.fspath(user_path)}: outside the data root {self.directory} (paths must lie inside it)"
            )
        return path

    def locate(self, location: str, what: str = "folder") -> Path | str:
        """A path inside the root, or a Hub id passed through as text. Text that is neither, a path
        that does not exist, is a one-line `NoSuchPathError`; one that escapes, `OutsideDataRootError`."""
        path = self.resolve(location)  # first, so that a Hub-like symlink out of the root is refused
        if path.exists():
            return path
        if self._is_hub_id(location):
            return location
        raise NoSuchPathError(f"{location}: no such {what} in the data root {self.directory}")

    def _is_hub_id(self, text: str) -> bool:
        # `looks_like_path` asks whether the first part is a folder of the working directory; a
        # folder of the root makes it a path too.
        first = text.split("/", 1)[0]
        return (
            bool(HUB_ID.fullmatch(text))
            and not looks_like_path(text)
            and not (self.directory / first).is_dir()
        )
