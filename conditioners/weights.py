"""Finding a detector's weight file: the user's path, the local caches, then the Hub or the web.

Order: an explicit path (a conditioner option), an environment variable, torch's checkpoint
cache (`$TORCH_HOME/hub/checkpoints/`), the Hugging Face cache, then (when downloads are allowed)
the Hub mirror and the original URL. A download is checked against the Hub's published SHA-256
(or a pinned one) before it is used. When nothing is found, the error says which file to put where.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import re
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from .errors import UserError

SHA256 = re.compile(r"^[0-9a-f]{64}$")


class WeightsNotFoundError(UserError, FileNotFoundError):
    """No copy of a weight file could be found or downloaded; the message says where to put one."""


class ChecksumError(UserError, ValueError):
    """A downloaded weight file is not the published one."""


@dataclass(frozen=True)
class WeightsFile:
    filename: str  # the name on disk, in the caches and on the Hub
    description: str  # what it is, for messages: "SPIGA 300W weights (254 MB)"
    env_var: str  # an environment variable that may hold its path
    hub_repo: str | None = None  # a Hub model repo that mirrors it
    url: str | None = None  # where its authors publish it
    sha256: str | None = None  # pinned where the authors publish one
    option: str = "weights"  # the conditioner option that names a path to it
    cache_dir: Callable[[], Path] = lambda: torch_checkpoint_dir()  # where downloads are kept

    def cache_path(self) -> Path:
        return self.cache_dir() / self.filename


def torch_checkpoint_dir() -> Path:
    """`torch.hub.get_dir()/checkpoints`, computed without importing torch."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return Path(os.environ.get("TORCH_HOME", cache / "torch")) / "hub" / "checkpoints"


def resolve_weights(
    spec: WeightsFile, explicit: str | os.PathLike | None = None, download: bool = True
) -> Path:
    """The local path of `spec`'s file, downloading it into the cache when allowed and needed."""
    given = explicit or os.environ.get(spec.env_var)
    if given:  # a path the user named must exist: falling back silently would hide their mistake
        path = Path(given).expanduser()
        if not path.is_file():
            source = "given" if explicit else f"${spec.env_var}"
            raise WeightsNotFoundError(f"{spec.description}: {path} ({source}) does not exist")
        return path
    if spec.cache_path().is_file():
        return spec.cache_path()
    tried: list[str] = [f"not in {spec.cache_path()}"]
    cached = _hub_cached(spec)
    if cached:
        return cached
    if download:
        for fetch in (_from_hub, _from_url):
            try:
                path = fetch(spec)
            except ChecksumError:
                raise
            except Exception as exc:  # offline, moved, rate-limited: try the next source
                tried.append(f"{fetch.__name__[6:]}: {type(exc).__name__}: {exc}")
                continue
            if path:
                return path
    raise WeightsNotFoundError(_not_found_message(spec, tried, download))


def _hub_cached(spec: WeightsFile) -> Path | None:
    """A copy in the Hugging Face cache, checked: the cache names each blob after its SHA-256."""
    if not spec.hub_repo:
        return None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(spec.hub_repo, spec.filename)
    if not isinstance(found, str):
        return None
    path = Path(found)
    published = path.resolve().name
    _check(path, spec.sha256 or (published if SHA256.match(published) else None), "the Hugging Face cache")
    return path


def _from_hub(spec: WeightsFile) -> Path | None:
    if not spec.hub_repo:
        return None
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    published = get_hf_file_metadata(hf_hub_url(spec.hub_repo, spec.filename)).etag or ""
    expected = spec.sha256 or (published if SHA256.match(published) else None)
    path = Path(hf_hub_download(spec.hub_repo, spec.filename))
    try:
        _check(path, expected, f"https://huggingface.co/{spec.hub_repo}")
    except ChecksumError:
        path.resolve().unlink()  # the cached blob, then the snapshot's link to it
        path.unlink()
        raise
    return path


def _from_url(spec: WeightsFile) -> Path | None:
    if not spec.url:
        return None
    target = spec.cache_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    with urllib.request.urlopen(spec.url, timeout=30) as response, open(partial, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=spec.filename) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))
    try:
        _check(partial, spec.sha256, spec.url)
    except ChecksumError:
        partial.unlink()
        raise
    partial.replace(target)
    return target


def _check(path: Path, expected: str | None, source: str) -> None:
    if expected is None:
        return
    digest = file_sha256(path)
    if digest != expected:
        raise ChecksumError(f"{path} from {source}: SHA-256 {digest}, expected {expected}; not used")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _not_found_message(spec: WeightsFile, tried: list[str], download: bool) -> str:
    sources = (
        [f"https://huggingface.co/{spec.hub_repo}/resolve/main/{spec.filename}"] if spec.hub_repo else []
    )
    sources += [spec.url] if spec.url else []
    lines = [
        f"{spec.description} not found. Put {spec.filename} at {spec.cache_path()}, "
        f"or set {spec.env_var}=/path/to/{spec.filename}, or pass the conditioner option {spec.option}=PATH.",
        "Download it from: " + " or ".join(sources) if sources else "",
        "Tried: " + "; ".join(tried) + ("" if download else "; it is not downloaded automatically"),
    ]
    return "\n".join(line for line in lines if line)


def missing_requirements(modules: list[str], extra: str, spec: WeightsFile) -> str | None:
    """Why a detector cannot run here without downloading anything: a missing extra or weight file."""
    absent = [name for name in modules if importlib.util.find_spec(name) is None]
    if absent:
        return f"{', '.join(absent)} not installed (the {extra!r} extra; see the README)"
    try:
        resolve_weights(spec, download=False)
    except WeightsNotFoundError:
        return f"{spec.filename} not found locally (see {spec.env_var} in the README)"
    return None


def installed_version(distribution: str) -> str:
    """The installed version of `distribution`, or "" when it is not installed (recorded in detections)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return ""
