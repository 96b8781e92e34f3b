"""Publishing to a local Hub stand-in over real HTTP, then reading back with load_dataset."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import builder_fixtures as fx
import datasets
import pyarrow.parquet as pq
import pytest
from hub_standin import HubStandIn, Repo, UploadGate
from huggingface_hub import HfApi

from builders.publish import PublishMismatch, published_files, verify_published

CLI = Path(sys.executable).with_name("landmark-controlnet")
TOKEN = "hf_secretTestToken1234567890"

READ_BACK = textwrap.dedent(
    """
    import json, sys
    import datasets
    from builder_fixtures import comparable_rows

    repo, revision = sys.argv[1], (sys.argv[2:] or ["main"])[0]
    print(json.dumps({
        "regular": comparable_rows(datasets.load_dataset(repo, split="train", revision=revision)),
        "streaming": comparable_rows(
            datasets.load_dataset(repo, split="train", revision=revision, streaming=True)
        ),
    }))
    """
)


@pytest.fixture()
def built(tmp_path, hand_build):
    """This test's copy of the session's hand photo build (3 shards), its photos in tmp_path/photos."""
    return hand_build.copy_to(tmp_path)[1]


def hub_env(hub: HubStandIn, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "HF_ENDPOINT": hub.endpoint,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_TOKEN": TOKEN,
        "PYTHONPATH": str(Path(__file__).parent),
    }


def publish_command(built: Path, repo: str) -> list[str]:
    return [str(CLI), "publish", str(built), "--repo-id", repo, "--token", TOKEN]


def publish_cli(built: Path, repo: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(publish_command(built, repo), capture_output=True, text=True, env=env, timeout=300)


def read_back(env: dict[str, str], repo: str, revision: str = "main") -> dict[str, list]:
    """The rows of the remote dataset, read in a subprocess (load_dataset and streaming)."""
    read = subprocess.run(
        [sys.executable, "-c", READ_BACK, repo, revision],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert read.returncode == 0, read.stderr[-3000:]
    return json.loads(read.stdout.strip().splitlines()[-1])


def local_rows(built: Path) -> list:
    return fx.comparable_rows(datasets.load_dataset(str(built), split="train"))


def test_publish_then_load_dataset_and_streaming(built, tmp_path):
    with HubStandIn(token=TOKEN) as hub:
        env = hub_env(hub, tmp_path)
        result = publish_cli(built, "tester/hands", env)
        assert result.returncode == 0, result.stderr[-3000:]
        assert TOKEN not in result.stdout + result.stderr
        assert result.stdout.strip().endswith("/datasets/tester/hands")
        files = hub.files("tester/hands")
        assert "README.md" in files and "preview.png" in files
        assert sorted(p for p in files if p.startswith("data/")) == [
            "data/train-00000.parquet",
            "data/train-00001.parquet",
            "data/train-00002.parquet",
        ]
        assert not any("/." in p or p.startswith(".") for p in files)  # build bookkeeping stays local
        remote = read_back(env, "tester/hands")
    expected = local_rows(built)
    assert len(expected) == 6
    assert remote["regular"] == expected
    assert remote["streaming"] == expected


PUBLISH_TO_BRANCH = (
    "import sys; from builders.publish import publish; print(publish(*sys.argv[1:3], revision='v2'))"
)


def test_the_same_build_published_to_another_repo_and_branch_uploads_everything(built, tmp_path):
    """The upload state is per (repo, revision): a second destination is not "already committed"."""
    destinations = [("tester/first", "main"), ("tester/second", "main"), ("tester/first", "v2")]
    with HubStandIn(token=TOKEN) as hub:
        env = hub_env(hub, tmp_path)
        remotes = []
        for repo, revision in destinations:
            asked = len(hub.state.preuploads)
            if revision == "main":
                result = publish_cli(built, repo, env)
            else:
                command = [sys.executable, "-c", PUBLISH_TO_BRANCH, str(built), repo]
                result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
            assert result.returncode == 0, result.stderr[-3000:]
            assert {p for _, p in hub.state.preuploads[asked:]} == set(published_files(built))
            assert set(published_files(built)) <= set(hub.files(repo, revision))
            remotes.append(read_back(env, repo, revision))
        assert result.stdout.strip().endswith("/datasets/tester/first/tree/v2")
    expected = local_rows(built)
    assert all(remote == {"regular": expected, "streaming": expected} for remote in remotes)


def test_a_publish_killed_mid_upload_resumes_and_uploads_the_rest(built, tmp_path):
    gate = UploadGate(allow=1)  # the first LFS upload is stored, later ones wait
    repo = "tester/resumed"
    with HubStandIn(gate=gate, token=TOKEN) as hub:
        env = hub_env(hub, tmp_path)
        first = subprocess.Popen(
            publish_command(built, repo), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            stored = gate.stored.wait(timeout=300)
        finally:
            first.kill()  # SIGKILL: no cleanup runs
            first.wait(timeout=60)
        assert stored, "the publish never uploaded an LFS file"
        assert len(hub.state.lfs) == 1
        assert not any(p.startswith("data/") for p in hub.files(repo))  # nothing committed yet
        uploaded = next(iter(hub.state.lfs))
        gate.release()

        puts = len(hub.state.lfs_puts)
        again = publish_cli(built, repo, env)
        assert again.returncode == 0, again.stderr[-3000:]
        # Resumed, not restarted: what the killed run uploaded is not sent again, the rest is.
        assert uploaded not in hub.state.lfs_puts[puts:]
        assert len(hub.state.lfs_puts[puts:]) == len(hub.state.lfs) - 1 > 0
        remote = read_back(env, repo)
    expected = local_rows(built)
    assert remote == {"regular": expected, "streaming": expected}


def test_publish_fails_loudly_when_the_hub_loses_a_file(built, tmp_path):
    lost = "data/train-00001.parquet"
    with HubStandIn(drop_paths=frozenset({lost}), token=TOKEN) as hub:
        result = publish_cli(built, "tester/lossy", hub_env(hub, tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr  # a message, not a crash
    assert "tester/lossy" in result.stderr
    assert f"{lost}: missing" in result.stderr
    assert TOKEN not in result.stdout + result.stderr


def test_verification_names_missing_resized_and_extra_files(built):
    repo_id = "tester/checked"
    with HubStandIn(token=TOKEN) as hub:
        api = HfApi(endpoint=hub.endpoint, token=TOKEN)
        repo = hub.state.repos[repo_id] = Repo(repo_id, private=False)
        hub.state.commit(repo, [file_line(p, (built / p).read_bytes()) for p in published_files(built)])
        verify_published(api, built, repo_id)  # an exact copy passes

        hub.state.commit(
            repo,
            [
                {"key": "deletedFile", "value": {"path": "data/train-00002.parquet"}},
                file_line("preview.png", b"not the preview"),
                file_line("data/train-00009.parquet", b"left over from an older build"),
            ],
        )
        with pytest.raises(PublishMismatch) as raised:
            verify_published(api, built, repo_id)
    message = str(raised.value)
    assert f"{hub.endpoint}/datasets/{repo_id}" in message
    assert "data/train-00002.parquet: missing" in message
    assert f"preview.png: 15 bytes remotely, {(built / 'preview.png').stat().st_size} locally" in message
    assert "data/train-00009.parquet: not in this build" in message
    assert "data/train-00000.parquet" not in message


def file_line(path: str, data: bytes) -> dict:
    return {
        "key": "file",
        "value": {"path": path, "content": base64.b64encode(data).decode(), "encoding": "base64"},
    }


def test_publish_refuses_an_unbuilt_folder(tmp_path):
    builder = fx.folder_recipe(tmp_path)
    result = subprocess.run(
        [str(CLI), "publish", str(builder), "--repo-id", "a/b"], capture_output=True, text=True
    )
    assert result.returncode != 0 and "build it first" in result.stderr


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_build_into_an_fsspec_url_resumes_and_matches_the_local_build(built, tmp_path, engine):
    """`--output hf://datasets/...`: shards go through fsspec (HfFileSystem) to a real HTTP server."""
    photos = tmp_path / "photos"  # the folder the `built` fixture was built from
    url = "hf://datasets/tester/direct"
    command = [str(CLI), "build", str(built), "--source", str(photos), "--output", url]
    command += ["--shard-size", "3", "--num-proc", "2", "--engine", engine]
    with HubStandIn(token=TOKEN) as hub:
        env = hub_env(hub, tmp_path)
        first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        assert first.returncode == 0, first.stderr[-3000:]
        shards = sorted(p for p in hub.files("tester/direct") if p.startswith("data/train-"))
        assert shards == [f"data/train-0000{i}.parquet" for i in range(3)]

        # Lose a shard as a killed build would, and mark a finished one (same rows, other bytes);
        # building again redoes only the lost chunk and leaves the finished shard alone.
        marked = resaved(hub.files("tester/direct")[shards[0]])
        repo = hub.state.repos["tester/direct"]
        hub.state.commit(
            repo,
            [
                {"key": "deletedFile", "value": {"path": shards[1]}},
                {"key": "file", "value": {"path": shards[0], "content": marked, "encoding": "base64"}},
            ],
        )
        again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
        assert json.loads(again.stdout.strip().splitlines()[-1])["rows"] == 6
        files = hub.files("tester/direct")
        assert base64.b64encode(files[shards[0]]).decode() == marked
        assert {"README.md", "preview.png", "recipe.toml", *shards} <= set(files)
        remote = read_back(env, "tester/direct")
    assert remote["regular"] == local_rows(built)


def resaved(shard: bytes) -> str:
    """The same rows and metadata written with another codec, base64-encoded for a commit."""
    file = pq.ParquetFile(io.BytesIO(shard))
    metadata = {k: v for k, v in file.metadata.metadata.items() if k != b"ARROW:schema"}
    buffer = io.BytesIO()
    pq.write_table(file.read().replace_schema_metadata(metadata), buffer, compression="snappy")
    assert buffer.getvalue() != shard
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize("given", [None, "hf_wrongTokenForThisHub000000"])
def test_publishing_without_the_token_is_a_one_line_authentication_error(built, tmp_path, given):
    with HubStandIn(token=TOKEN) as hub:
        env = {k: v for k, v in hub_env(hub, tmp_path).items() if k != "HF_TOKEN"}
        command = [str(CLI), "publish", str(built), "--repo-id", "tester/hands"]
        result = subprocess.run(
            command + (["--token", given] if given else []),
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "tester/hands" in errors[0] and "401" in errors[0], result.stderr
        assert ("no token was given" in errors[0]) == (given is None)
        assert given is None or given not in result.stderr + result.stdout  # never shown
        assert "tester/hands" not in hub.state.repos  # nothing was written
        # and a private repo is not readable without it either
        hub.state.repos["tester/secret"] = Repo("tester/secret", private=True)
        read = subprocess.run(
            [sys.executable, "-c", "import huggingface_hub as h; h.HfApi().dataset_info('tester/secret')"],
            capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
        assert read.returncode != 0 and "401" in read.stderr
