"""Local path or Hub id: one rule for every argument that may be either.

A mistyped local path must never become a Hub lookup (which retries the network for most of a
minute, or fails offline with a message about the Hub). So an argument is a local path when it
exists, or when it looks like one: it starts with `.`, `~` or `/`, holds a backslash or more than
one `/`, ends with `/`, or its first part is a folder here (`runs/nonexist` beside a `runs/`).
Only the rest, of the `name` or `owner/name` form, is a Hub id.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import UserError

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


class NoSuchPathError(UserError, FileNotFoundError):
    """A local path that does not exist."""


def looks_like_path(location: str) -> bool:
    """Whether `location`, which does not exist, was meant as a local path (see the module)."""
    if location.startswith((".", "~", "/")) or "\\" in location or location.endswith("/"):
        return True
    parts = location.split("/")
    return len(parts) > 2 or (len(parts) == 2 and Path(parts[0]).is_dir())


def local_or_hub(location: str | os.PathLike, what: str = "folder") -> Path | str:
    """`location` as an existing local Path, or as a Hub id (a str); anything else, a path that
    does not exist, is a one-line error naming it."""
    path = Path(location).expanduser()
    if path.exists():
        return path
    text = os.fspath(location)
    if isinstance(location, str) and not looks_like_path(text) and HUB_ID.fullmatch(text):
        return text
    raise NoSuchPathError(f"{text}: no such {what}" + _hub_hint(text))


def _hub_hint(text: str) -> str:
    return " (a Hub id has the form owner/name)" if not looks_like_path(text) else ""
