"""A local stand-in for the Hugging Face Hub: a real HTTP server on 127.0.0.1.

It speaks the subset of the Hub API that huggingface_hub 0.36 (create_repo, upload_folder,
upload_large_folder, create_commit) and datasets 5 (load_dataset, streaming) use: repo creation,
preupload, the LFS batch API and uploads, ndjson commits, branches, repo info, tree and paths-info
listings, YAML validation, and file resolution with HEAD and HTTP Range. Storage is in memory; every
commit is a full snapshot so old revisions stay readable.

    with HubStandIn() as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HUB_DISABLE_XET": "1"}

Test controls: `UploadGate` holds LFS uploads after the first few (to kill a client mid-upload
deterministically) and `drop_paths` makes commits silently lose files (a Hub that lost an upload).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

REPO = r"(?P<repo>[^/]+/[^/]+)"
KINDS = r"(?P<kind>datasets|models|spaces)"


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _branch(revision: str | None) -> str:
    revision = revision or "main"
    return revision.removeprefix("refs/heads/")


class Repo:
    def __init__(self, repo_id: str, private: bool):
        self.repo_id = repo_id
        self.private = private
        self.commits: list[tuple[str, dict[str, dict]]] = [(hashlib.sha1(repo_id.encode()).hexdigest(), {})]
        self.heads: dict[str, tuple[str, dict[str, dict]]] = {"main": self.commits[0]}

    def snapshot(self, revision: str | None) -> tuple[str, dict[str, dict]] | None:
        """The head of branch `revision`, or the commit whose sha it is."""
        if _branch(revision) in self.heads:
            return self.heads[_branch(revision)]
        return next((c for c in self.commits if c[0] == revision), None)


class UploadGate:
    """Lets the first `allow` LFS uploads through; later ones wait, without storing anything, until
    `release()`, then fail (an upload cut off). `stored` is set once `allow` uploads are stored, so a
    test can kill a client that has some but not all of its files uploaded, with no race."""

    def __init__(self, allow: int = 1):
        self.allow = allow
        self.stored = threading.Event()
        self.released = threading.Event()
        self._admitted = 0
        self._lock = threading.Lock()

    def admit(self) -> bool:
        with self._lock:
            if self.released.is_set() or self._admitted < self.allow:
                self._admitted += 1
                return True
        self.released.wait(timeout=600)
        return False

    def note_stored(self, count: int) -> None:
        if count >= self.allow:
            self.stored.set()

    def release(self) -> None:
        self.released.set()


# The token the stand-in accepts unless a test names its own: writes and private reads need it.
STANDIN_TOKEN = "hf_standInWriteToken1234567890"


class HubState:
    def __init__(
        self,
        gate: UploadGate | None = None,
        drop_paths: frozenset[str] = frozenset(),
        token: str = STANDIN_TOKEN,
    ):
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.lfs_puts: list[str] = []  # the oid of every LFS upload, in order
        self.lock = threading.Lock()
        self.requests: list[str] = []
        self.preuploads: list[tuple[str, str]] = []  # (repo, path) of every file asked about
        self.gate = gate
        self.drop_paths = drop_paths

    def commit(self, repo: Repo, lines: list[dict], branch: str = "main") -> str:
        files = dict(repo.heads[branch][1])
        for line in lines:
            if line.get("value", {}).get("path") in self.drop_paths:
                continue
            value = line.get("value", {})
            if line["key"] == "file":
                data = (
                    base64.b64decode(value["content"])
                    if value.get("encoding") == "base64"
                    else value["content"]
                )
                data = data if isinstance(data, bytes) else data.encode()
                files[value["path"]] = {"data": data, "lfs": None}
            elif line["key"] == "lfsFile":
                data = self.lfs[value["oid"]]
                files[value["path"]] = {"data": data, "lfs": value["oid"]}
            elif line["key"] in ("deletedFile", "deletedFolder"):
                prefix = value["path"].rstrip("/")
                files = {p: f for p, f in files.items() if p != prefix and not p.startswith(prefix + "/")}
        sha = hashlib.sha1(json.dumps(sorted(files)).encode() + str(len(repo.commits)).encode()).hexdigest()
        repo.commits.append((sha, files))
        repo.heads[branch] = repo.commits[-1]
        return sha


def _entry(path: str, file: dict, expand: bool) -> dict:
    data = file["data"]
    entry = {"type": "file", "path": path, "size": len(data), "oid": git_blob_oid(data)}
    if file["lfs"]:
        entry["lfs"] = {"oid": file["lfs"], "size": len(data), "pointerSize": 134}
    if expand:
        entry["lastCommit"] = {"id": "0" * 40, "title": "upload", "date": "2026-01-01T00:00:00.000Z"}
    return entry


def _directories(files: dict[str, dict]) -> set[str]:
    return {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}


def _missing_code(repo: Repo | None, snapshot) -> str:
    if snapshot:
        return "EntryNotFound"
    return "RevisionNotFound" if repo else "RepoNotFound"


class Handler(BaseHTTPRequestHandler):
    state: HubState
    endpoint: str
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    # -- plumbing -------------------------------------------------------------------------
    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, payload, headers: dict | None = None) -> None:
        self._send(
            status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})}
        )

    def _not_found(self, code: str = "RepoNotFound") -> None:
        self._json(404, {"error": code}, {"X-Error-Code": code})

    def _route(self, method: str) -> None:
        url = urlparse(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        self.state.requests.append(f"{method} {path}")
        for pattern, handler in ROUTES.get(method, []):
            match = re.fullmatch(pattern, path)
            if match:
                with self.state.lock:
                    if not self._authorised(method, handler, match.groupdict().get("repo")):
                        return self._json(401, {"error": "Invalid credentials in Authorization header"})
                    return handler(self, query=query, **match.groupdict())
        self._not_found("RouteNotFound")

    def _authorised(self, method: str, handler, repo: str | None) -> bool:
        """As the Hub: writes need the token, and so does anything about a private repo. LFS uploads
        go to the URLs the (authorised) batch call handed out, without it."""
        if self.headers.get("Authorization") == f"Bearer {self.state.token}":
            return True
        writes = (
            method in ("POST", "PUT") and handler not in READS_BY_POST and handler is not Handler.lfs_upload
        )
        private = repo is not None and repo in self.state.repos and self.state.repos[repo].private
        return not (writes or private)

    def do_GET(self) -> None:
        self._route("GET")

    def do_HEAD(self) -> None:
        self._route("HEAD")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        # Held outside the state lock, so other requests go on while an upload waits.
        if self.state.gate and not self.state.gate.admit():
            self.close_connection = True
            try:
                self._body()
                self._json(503, {"error": "upload cut off"})
            except OSError:  # the client is gone (killed mid-upload)
                pass
            return
        self._route("PUT")

    def _repo(self, repo: str) -> Repo | None:
        found = self.state.repos.get(repo)
        if found is None:
            self._not_found()
        return found

    # -- endpoints ------------------------------------------------------------------------
    def create_repo(self, query) -> None:
        body = json.loads(self._body())
        repo_id = f"{body.get('organization') or 'user'}/{body['name']}"
        kind = {"dataset": "datasets", "space": "spaces"}.get(body.get("type"), "models")
        url = {
            "url": f"{self.endpoint}/{kind}/{repo_id}" if kind != "models" else f"{self.endpoint}/{repo_id}"
        }
        if repo_id in self.state.repos:
            return self._json(409, {"error": "You already created this repo", **url})
        self.state.repos[repo_id] = Repo(repo_id, bool(body.get("private")))
        self._json(200, url)

    def _snapshot(self, repo: str, revision: str) -> tuple[Repo, str, dict[str, dict]] | None:
        """The repo and its files at `revision`, or None after answering 404."""
        found = self._repo(repo)
        snapshot = found.snapshot(revision) if found else None
        if found and snapshot is None:
            self._not_found("RevisionNotFound")
        return (found, *snapshot) if snapshot else None

    def repo_info(self, query, kind, repo, revision="main") -> None:
        snapshot = self._snapshot(repo, revision)
        if snapshot is None:
            return
        found, sha, files = snapshot
        siblings = [
            {
                "rfilename": p,
                **(
                    {"lfs": {"size": len(f["data"]), "sha256": f["lfs"], "pointerSize": 134}}
                    if f["lfs"]
                    else {}
                ),
            }
            for p, f in sorted(files.items())
        ]
        self._json(
            200,
            {
                "id": repo,
                "_id": repo,
                "sha": sha,
                "private": found.private,
                "disabled": False,
                "gated": False,
                "siblings": siblings,
                "tags": [],
                "downloads": 0,
                "likes": 0,
                "author": repo.split("/")[0],
                "lastModified": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                "createdAt": "2026-01-01T00:00:00.000Z",
            },
        )

    def preupload(self, query, kind, repo, revision) -> None:
        snapshot = self._snapshot(repo, revision)
        if snapshot is None:
            return
        files = json.loads(self._body())["files"]
        self.state.preuploads += [(repo, f["path"]) for f in files]
        modes = [
            {
                "path": f["path"],
                "uploadMode": "regular" if f["path"].endswith((".md", ".json", ".toml", ".txt")) else "lfs",
                "shouldIgnore": False,
            }
            for f in files
        ]
        self._json(200, {"files": modes, "commitOid": snapshot[1]})

    def lfs_batch(self, query, kind, repo) -> None:
        request = json.loads(self._body())
        objects = []
        for obj in request["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.state.lfs:
                entry["actions"] = {
                    "upload": {"href": f"{self.endpoint}/lfs-upload/{obj['oid']}", "header": {}}
                }
            objects.append(entry)
        self._json(
            200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"}
        )

    def lfs_upload(self, query, oid) -> None:
        data = self._body()
        if hashlib.sha256(data).hexdigest() != oid:
            return self._json(400, {"error": "sha256 mismatch"})
        self.state.lfs[oid] = data
        self.state.lfs_puts.append(oid)
        if self.state.gate:
            self.state.gate.note_stored(len(self.state.lfs))
        self._send(200)

    def commit(self, query, kind, repo, revision) -> None:
        found = self._repo(repo)
        if not found:
            return
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        if _branch(revision) not in found.heads:
            return self._not_found("RevisionNotFound")
        missing = [
            ln["value"]["oid"]
            for ln in lines
            if ln["key"] == "lfsFile" and ln["value"]["oid"] not in self.state.lfs
        ]
        if missing:
            return self._json(422, {"error": f"LFS objects not uploaded: {missing}"})
        sha = self.state.commit(found, lines, _branch(revision))
        self._json(
            200,
            {
                "commitUrl": f"{self.endpoint}/{kind}/{repo}/commit/{sha}",
                "commitOid": sha,
                "pullRequestUrl": None,
            },
        )

    def create_branch(self, query, kind, repo, branch) -> None:
        found = self._repo(repo)
        if not found:
            return
        starting_point = (json.loads(self._body() or b"{}")).get("startingPoint")
        if branch in found.heads:
            return self._json(409, {"error": "Reference already exists"})
        snapshot = found.snapshot(starting_point)
        if snapshot is None:
            return self._not_found("RevisionNotFound")
        found.heads[branch] = snapshot
        self._json(200, {})

    def tree(self, query, kind, repo, revision, subpath="") -> None:
        snapshot = self._snapshot(repo, revision)
        if snapshot is None:
            return
        _, _, files = snapshot
        subpath = (subpath or "").strip("/")
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        expand = query.get("expand", ["false"])[0].lower() == "true"
        prefix = f"{subpath}/" if subpath else ""
        if subpath and subpath not in _directories(files):
            return self._not_found("EntryNotFound")
        entries = []
        for directory in sorted(_directories(files)):
            if directory.startswith(prefix) and (recursive or "/" not in directory[len(prefix) :]):
                entries.append(
                    {"type": "directory", "path": directory, "oid": git_blob_oid(directory.encode())}
                )
        for path, file in sorted(files.items()):
            if path.startswith(prefix) and (recursive or "/" not in path[len(prefix) :]):
                entries.append(_entry(path, file, expand))
        self._json(200, entries)

    def paths_info(self, query, kind, repo, revision) -> None:
        found = self._repo(repo)
        if not found:
            return
        body = self._body()
        if self.headers.get("Content-Type", "").startswith("application/json"):
            request = json.loads(body)
            paths, expand = request.get("paths", []), bool(request.get("expand"))
        else:
            form = parse_qs(body.decode())
            paths, expand = form.get("paths", []), form.get("expand", ["false"])[0].lower() == "true"
        _, files = found.snapshot(revision) or (None, {})
        directories = _directories(files)
        out = []
        for path in paths:
            path = path.strip("/")
            if path in files:
                out.append(_entry(path, files[path], expand))
            elif path in directories:
                out.append({"type": "directory", "path": path, "oid": git_blob_oid(path.encode())})
        self._json(200, out)

    def resolve(self, query, kind, repo, revision, filename, head=False) -> None:
        found = self.state.repos.get(repo)
        snapshot = found.snapshot(revision) if found else None
        if snapshot is None or filename not in snapshot[1]:
            return self._send(404, b"", {"X-Error-Code": _missing_code(found, snapshot)}, head)
        sha, files = snapshot
        file = files[filename]
        data = file["data"]
        headers = {
            "X-Repo-Commit": sha,
            "ETag": f'"{git_blob_oid(data)}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if file["lfs"]:
            headers.update({"X-Linked-Etag": f'"{file["lfs"]}"', "X-Linked-Size": str(len(data))})
        ranged = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        if ranged and not head:
            start = int(ranged.group(1)) if ranged.group(1) else max(0, len(data) - int(ranged.group(2)))
            end = int(ranged.group(2)) if ranged.group(1) and ranged.group(2) else len(data) - 1
            end = min(end, len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return self._send(206, data[start : end + 1], headers)
        if head:
            return self._head(headers, len(data))
        self._send(200, data, headers)

    def _head(self, headers: dict, size: int) -> None:
        self.send_response(200)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(size))
        self.end_headers()

    def resolve_head(self, query, kind, repo, revision, filename) -> None:
        self.resolve(query, kind, repo, revision, filename, head=True)

    def validate_yaml(self, query) -> None:
        self._body()
        self._json(200, {"errors": [], "warnings": []})


RESOLVE = rf"/(?:(?P<kind>datasets|spaces)/)?{REPO}/resolve/(?P<revision>[^/]+)/(?P<filename>.+)"
ROUTES = {
    "GET": [
        (rf"/api/{KINDS}/{REPO}", Handler.repo_info),
        (rf"/api/{KINDS}/{REPO}/revision/(?P<revision>.+)", Handler.repo_info),
        (rf"/api/{KINDS}/{REPO}/tree/(?P<revision>[^/]+)(?:/(?P<subpath>.*))?", Handler.tree),
        (RESOLVE, Handler.resolve),
    ],
    "HEAD": [(RESOLVE, Handler.resolve_head)],
    "POST": [
        (r"/api/repos/create", Handler.create_repo),
        (rf"/api/{KINDS}/{REPO}/preupload/(?P<revision>.+)", Handler.preupload),
        (rf"/api/{KINDS}/{REPO}/commit/(?P<revision>.+)", Handler.commit),
        (rf"/api/{KINDS}/{REPO}/paths-info/(?P<revision>.+)", Handler.paths_info),
        (rf"/api/{KINDS}/{REPO}/branch/(?P<branch>[^/]+)", Handler.create_branch),
        (rf"/(?P<kind>datasets|spaces)/{REPO}\.git/info/lfs/objects/batch", Handler.lfs_batch),
        (
            rf"/{REPO}\.git/info/lfs/objects/batch",
            lambda h, query, repo: Handler.lfs_batch(h, query, "models", repo),
        ),
        (r"/api/validate-yaml", Handler.validate_yaml),
    ],
    "PUT": [(r"/lfs-upload/(?P<oid>[0-9a-f]{64})", Handler.lfs_upload)],
}


# POST endpoints that only read.
READS_BY_POST = (Handler.paths_info, Handler.validate_yaml)


class HubStandIn:
    """`with HubStandIn() as hub:` serves on http://127.0.0.1:<free port> until the block ends.

    Writes, and reads of a private repo, need `Authorization: Bearer <token>` (401 otherwise).
    `gate` holds LFS uploads (see UploadGate); commits silently leave out the files in `drop_paths`."""

    def __init__(self, **state: Any):
        """`state`: HubState's `gate`, `drop_paths` and `token`."""
        self.state = HubState(**state)
        handler = type("BoundHandler", (Handler,), {"state": self.state})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        handler.endpoint = self.endpoint
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HubStandIn:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.state.gate:
            self.state.gate.release()  # let held uploads end
        self.server.shutdown()
        self.server.server_close()

    def add_model_file(
        self, repo_id: str, path: str, data: bytes, lfs_sha256: str | None = None, revision: str = "main"
    ) -> None:
        """Serve `data` as an LFS file of model repo `repo_id`; `lfs_sha256` overrides its published hash.

        A `revision` other than main is a branch, started from main's head when it does not exist yet."""
        with self.state.lock:
            repo = self.state.repos.setdefault(repo_id, Repo(repo_id, private=False))
            repo.heads.setdefault(revision, repo.heads["main"])
            oid = lfs_sha256 or hashlib.sha256(data).hexdigest()
            self.state.lfs[oid] = data
            self.state.commit(repo, [{"key": "lfsFile", "value": {"path": path, "oid": oid}}], revision)

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        return {p: f["data"] for p, f in self.state.repos[repo_id].snapshot(revision)[1].items()}
