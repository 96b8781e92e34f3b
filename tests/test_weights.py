"""Weight-file resolution: the user's path, the caches, the Hub mirror and the original URL."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hub_standin import HubStandIn

from conditioners.weights import ChecksumError, WeightsFile, WeightsNotFoundError, resolve_weights

PAYLOAD = b"weights\x00" * 1000


@pytest.fixture()
def caches(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("TEST_WEIGHTS", raising=False)
    return tmp_path


def spec(**changes) -> WeightsFile:
    fields = {"filename": "model.pt", "description": "test weights", "env_var": "TEST_WEIGHTS", **changes}
    return WeightsFile(**fields)


def test_a_given_path_wins_and_must_exist(caches, monkeypatch):
    given = caches / "mine.pt"
    given.write_bytes(PAYLOAD)
    assert resolve_weights(spec(), given) == given
    monkeypatch.setenv("TEST_WEIGHTS", str(given))
    assert resolve_weights(spec()) == given
    with pytest.raises(WeightsNotFoundError, match=r"missing\.pt \(given\) does not exist"):
        resolve_weights(spec(), caches / "missing.pt")
    monkeypatch.setenv("TEST_WEIGHTS", str(caches / "gone.pt"))
    with pytest.raises(WeightsNotFoundError, match=r"gone\.pt \(\$TEST_WEIGHTS\) does not exist"):
        resolve_weights(spec())


def test_the_torch_checkpoint_cache_is_found(caches):
    cached = caches / "torch" / "hub" / "checkpoints" / "model.pt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(PAYLOAD)
    assert resolve_weights(spec(), download=False) == cached


def test_nothing_found_says_which_file_to_put_where(caches):
    weights = spec(hub_repo="owner/mirror", url="https://example.invalid/model.pt")
    with pytest.raises(WeightsNotFoundError) as error:
        resolve_weights(weights, download=False)
    message = str(error.value)
    assert f"Put model.pt at {caches / 'torch' / 'hub' / 'checkpoints' / 'model.pt'}" in message
    assert "TEST_WEIGHTS=/path/to/model.pt" in message
    assert "https://huggingface.co/owner/mirror/resolve/main/model.pt" in message
    assert "https://example.invalid/model.pt" in message


@pytest.fixture()
def file_server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    (served / "model.pt").write_bytes(PAYLOAD)

    class Quiet(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_the_original_url_downloads_into_the_cache_after_its_checksum(caches, file_server):
    good = spec(url=f"{file_server}/model.pt", sha256=hashlib.sha256(PAYLOAD).hexdigest())
    path = resolve_weights(good)
    assert path == caches / "torch" / "hub" / "checkpoints" / "model.pt"
    assert path.read_bytes() == PAYLOAD
    path.unlink()
    with pytest.raises(ChecksumError, match="expected 0000"):
        resolve_weights(spec(url=f"{file_server}/model.pt", sha256="0" * 64))
    assert not list(path.parent.iterdir())  # neither the file nor its partial download is kept
    with pytest.raises(WeightsNotFoundError, match="HTTPError"):
        resolve_weights(spec(url=f"{file_server}/absent.pt"))


HUB_SCRIPT = """
import json, sys
from conditioners.weights import WeightsFile, resolve_weights, ChecksumError, WeightsNotFoundError
spec = WeightsFile("model.pt", "test weights", "TEST_WEIGHTS", hub_repo=sys.argv[1])
try:
    print(json.dumps({"path": str(resolve_weights(spec))}))
except ChecksumError as exc:
    print(json.dumps({"checksum": str(exc)}))
except WeightsNotFoundError as exc:
    print(json.dumps({"not_found": str(exc)}))
"""


def resolve_from_hub(hub: HubStandIn, tmp_path: Path, repo: str, offline: bool = False) -> dict:
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.endpoint,
        "HF_HOME": str(tmp_path / "hf_home"),
        "TORCH_HOME": str(tmp_path / "torch"),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_OFFLINE": "1" if offline else "0",
    }
    env.pop("TEST_WEIGHTS", None)
    result = subprocess.run(
        [sys.executable, "-c", HUB_SCRIPT, repo], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_hub_mirror_is_checked_against_its_published_sha256(tmp_path):
    with HubStandIn() as hub:
        hub.add_model_file("owner/mirror", "model.pt", PAYLOAD)
        hub.add_model_file("owner/tampered", "model.pt", PAYLOAD, lfs_sha256="a" * 64)
        downloaded = resolve_from_hub(hub, tmp_path, "owner/mirror")
        assert Path(downloaded["path"]).read_bytes() == PAYLOAD
        assert "aaaa" in resolve_from_hub(hub, tmp_path, "owner/tampered")["checksum"]
    # The stand-in is gone: the Hugging Face cache still has the verified file, not the rejected one.
    assert resolve_from_hub(hub, tmp_path, "owner/mirror", offline=True) == downloaded
    assert "not_found" in resolve_from_hub(hub, tmp_path, "owner/tampered", offline=True)
