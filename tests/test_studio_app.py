"""Landmark ControlNet Studio in a real browser (Debian's Chromium driven by Playwright) and through
its API (gradio_client), against the CLI's outputs for the same inputs.

One server for the module: `landmark-controlnet app` in a subprocess, its data root holding the
session's hand build, a tiny random SD with two perturbed ControlNets, and a 2-step training run;
HF_ENDPOINT points at the Hub stand-in, where the hand build is also published.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from hub_standin import HubStandIn
from PIL import Image
from tiny_models import tiny_controlnet
from train_fixtures import run_training

from landmark_controlnet.training.tiny_sd import write_tiny_sd

CLI = Path(sys.executable).with_name("landmark-controlnet")
CHROMIUM = Path("/usr/bin/chromium")
HAND_PHOTO = "images/hands/mediapipe_gesture_four_15a73593.jpg"
HUB_DATASET = "tester/hands"
TOKEN = "hf_studio_test_token"
UPLOAD_CAP_MB = 1
SLOW = 600_000  # ms: generation compiles the tiny models on first use


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with HubStandIn(token=TOKEN) as standin:
        yield standin


@pytest.fixture(scope="module")
def hub_env(hub, tmp_path_factory) -> dict[str, str]:
    return {
        **os.environ,
        "HF_ENDPOINT": hub.endpoint,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HOME": str(tmp_path_factory.mktemp("hf_home")),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_TOKEN": TOKEN,
        "JAX_PLATFORMS": "cpu",
        "GRADIO_ANALYTICS_ENABLED": "False",
    }


@pytest.fixture(scope="module")
def root(tmp_path_factory, hand_build, hub_env) -> Path:
    """The data root: hands/ (a built dataset, also published as tester/hands), tiny-sd/,
    controlnet/ and controlnet-b/, run/ (2 training steps with a validation grid)."""
    folder = tmp_path_factory.mktemp("studio_root")
    _, built = hand_build.copy_to(folder)
    built.rename(folder / "hands")
    published = subprocess.run(
        [str(CLI), "publish", str(folder / "hands"), "--repo-id", HUB_DATASET, "--token", TOKEN],
        capture_output=True, text=True, env=hub_env, timeout=300,
    )  # fmt: skip
    assert published.returncode == 0, published.stderr[-3000:]
    base = write_tiny_sd(folder / "tiny-sd")
    tiny_controlnet(base, folder / "controlnet", 1)
    tiny_controlnet(base, folder / "controlnet-b", 2)
    trained = run_training(
        base, folder / "hands", folder / "run", "--max_train_steps", "2", "--validation_steps", "2",
        "--num_validation_images", "1", "--num_inference_steps", "2", "--checkpointing_steps", "1",
        devices=1,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    return folder


@pytest.fixture(scope="module")
def server(root, hub_env):
    port = free_port()
    command = [
        str(CLI),
        "app",
        "--port",
        str(port),
        "--data-root",
        str(root),
        "--max-upload-mb",
        str(UPLOAD_CAP_MB),
    ]
    process = subprocess.Popen(
        command, cwd=root, env=hub_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                if answer.status == 200:
                    break
        except OSError:
            assert process.poll() is None, process.stdout.read().decode()[-3000:]
            time.sleep(1)
    else:
        process.kill()
        pytest.fail("the Studio did not serve its page within 3 minutes")
    yield url
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.is_file(), "Debian's chromium is not installed (make test installs it)"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture()
def page(browser, server):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(server)
    page.wait_for_selector("#condition-run", timeout=60_000)
    yield page
    page.close()


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server, verbose=False)


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def check_screenshot(page, path: Path) -> None:
    """The view as a person sees it: not blank, and with no error banner or traceback."""
    page.screenshot(path=str(path), full_page=True)
    pixels = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
    assert pixels.std() > 10, f"{path.name} is blank"
    text = page.inner_text("body")
    assert "Traceback" not in text and "Error:" not in text, text[-2000:]
    assert page.locator(".toast-body.error").count() == 0


def fetched(page, url: str) -> Image.Image:
    answer = page.request.get(url)
    assert answer.ok, url
    return Image.open(BytesIO(answer.body()))


def cli_condition(photo: Path, out: Path, conditioner: str = "hand_encoded") -> Path:
    result = subprocess.run(
        [str(CLI), "condition", str(photo), "--conditioner", conditioner, "--out-dir", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return out / conditioner


def without_input(detection_text: str) -> dict:
    """A detection JSON without the input path it names (the CLI's and the app's copies differ)."""
    detection = json.loads(detection_text)
    detection.get("extra", {}).pop("input", None)
    return detection


# -- Conditioners --------------------------------------------------------------------------------
def test_conditioners_view_shows_what_the_cli_writes(page, data_dir, tmp_path):
    photo = data_dir / HAND_PHOTO
    page.set_input_files("#condition-photos input[type=file]", str(photo))
    page.click("#condition-run")
    page.locator("#condition-status").get_by_text("result(s) in").wait_for(timeout=SLOW)
    page.wait_for_function("document.querySelectorAll('#condition-gallery img').length === 3")
    sources = page.eval_on_selector_all("#condition-gallery img", "images => images.map(i => i.src)")
    [shown] = [src for src in sources if src.endswith(f"/{photo.stem}.png")]
    expected = cli_condition(photo, tmp_path / "cli") / f"{photo.stem}.png"
    assert np.array_equal(np.asarray(fetched(page, shown)), np.asarray(Image.open(expected)))
    table = page.inner_text("#condition-instances")
    assert "left_hand" in table or "right_hand" in table
    check_screenshot(page, tmp_path / "conditioners.png")


def test_a_corrupt_upload_gets_the_cli_one_line_message(page, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    page.set_input_files("#condition-photos input[type=file]", str(broken))
    page.click("#condition-run")
    status = page.locator("#condition-status")
    status.get_by_text("broken.jpg: unreadable").wait_for(timeout=SLOW)
    assert status.inner_text().strip().count("\n") == 0
    assert "Traceback" not in page.inner_text("body")


def test_an_oversized_upload_is_refused(server, tmp_path):
    big = tmp_path / "big.jpg"
    big.write_bytes(os.urandom(UPLOAD_CAP_MB * 1024 * 1024 + 1))
    boundary = "studio-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + big.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        server + "gradio_api/upload",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 413


# -- Datasets ------------------------------------------------------------------------------------
def grid_of(page, location: str) -> str:
    page.fill("#dataset-location textarea, #dataset-location input", location)
    page.click("#dataset-open")
    page.wait_for_selector("#dataset-grid img", timeout=SLOW)
    page.wait_for_function("document.querySelector('#dataset-status').innerText.includes('rows match')")
    return page.inner_text("#dataset-grid")


def test_datasets_view_local_folder_and_hub_give_the_same_rows(page, root, tmp_path):
    from builders.rows import open_dataset

    open_tab(page, "Datasets")
    local = grid_of(page, "hands")
    rows = open_dataset(str(root / "hands"), "train")
    shown = page.locator("#dataset-grid img").count()
    assert shown == 2 * min(len(rows), 12)  # photo and conditioning image per row
    assert rows[0]["caption"][:40] in local
    assert page.locator("#dataset-skips canvas, #dataset-skips svg").count() > 0  # the skip chart
    assert "Hand" in page.inner_text("#dataset-summary") or "hand" in page.inner_text("#dataset-summary")
    page.fill("#dataset-row input", "0")
    page.click("#dataset-row-show")
    page.wait_for_selector("#dataset-row-image img", timeout=SLOW)
    assert '"instances"' in page.inner_text("#dataset-row-json")
    check_screenshot(page, tmp_path / "datasets.png")
    assert grid_of(page, HUB_DATASET) == local


def test_paths_outside_the_root_are_refused_in_the_page(page, root, tmp_path):
    (root / "escape").symlink_to(tmp_path)
    open_tab(page, "Datasets")
    for typed in ("../../etc/passwd", "/etc", "escape"):
        page.fill("#dataset-location textarea, #dataset-location input", typed)
        page.click("#dataset-open")
        page.locator("#dataset-status").get_by_text("outside the data root").wait_for(timeout=60_000)
        page.fill("#dataset-location textarea, #dataset-location input", "")


# -- Generate ------------------------------------------------------------------------------------
def test_generate_view_two_controlnets_side_by_side_with_scores(page, tmp_path):
    open_tab(page, "Generate")
    page.fill("#gen-base textarea, #gen-base input", "tiny-sd")
    page.fill("#gen-controlnet textarea, #gen-controlnet input", "controlnet")
    page.fill("#gen-compare textarea, #gen-compare input", "controlnet-b")
    page.fill("#gen-pose-text textarea, #gen-pose-text input", "hands#0")
    page.fill("#gen-prompt textarea, #gen-prompt input", "a hand")
    page.fill("#gen-steps input", "2")
    page.click("#gen-run")
    page.wait_for_selector("#gen-compared img", timeout=SLOW)
    assert page.locator("#gen-images img").count() == 1 and page.locator("#gen-conditioning img").count() == 1
    fidelity = page.inner_text("#gen-fidelity")
    assert "controlnet" in fidelity and "second" in fidelity and "image_0.png" in fidelity
    check_screenshot(page, tmp_path / "generate.png")


def api_generate(client, strength: float) -> tuple[list[str], dict]:
    settings = {"pose": "hands#0", "steps": 2, "strength": strength, "seed": 3}
    return client.predict("tiny-sd", "controlnet", None, "a hand", json.dumps(settings), api_name="/generate")


def test_generate_endpoint_gives_the_cli_images_and_strength_matters(client, root, tmp_path):
    files, report = api_generate(client, 1.0)
    off, _ = api_generate(client, 0.0)
    images = [np.asarray(Image.open(path)) for path in files]
    assert [Path(path).name for path in files] == ["conditioning.png", "image_0.png"]
    assert not np.array_equal(images[1], np.asarray(Image.open(off[1])))  # strength 0 vs 1
    out = tmp_path / "cli"
    result = subprocess.run(
        [str(CLI), "generate", "--base-model", str(root / "tiny-sd"), "--controlnet",
         str(root / "controlnet"), "--pose", f"{root / 'hands'}#0", "--prompt", "a hand", "--steps", "2",
         "--seed", "3", "--out-dir", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert np.array_equal(images[0], np.asarray(Image.open(out / "conditioning.png")))
    assert np.array_equal(images[1], np.asarray(Image.open(out / "image_0.png")))
    cli_report = json.loads((out / "report.json").read_text())
    assert report["images"] == cli_report["images"] and report["resolution"] == cli_report["resolution"]


# -- Runs and Evaluate ---------------------------------------------------------------------------
def test_runs_view_shows_the_loss_curve_and_validation_grid(page, tmp_path):
    open_tab(page, "Runs")
    page.fill("#run-dir textarea, #run-dir input", "run")
    page.click("#run-open")
    page.wait_for_selector("#run-grid img", timeout=SLOW)
    page.wait_for_selector("#run-loss canvas, #run-loss svg", timeout=60_000)
    assert "last logged step 2" in page.inner_text("#run-status")
    assert "Checkpoints at steps: 1, 2" in page.inner_text("#run-saved")
    check_screenshot(page, tmp_path / "runs.png")


def test_evaluate_view_scores_a_folder(page, client, root, tmp_path):
    files, _ = api_generate(client, 1.0)
    out = Path(files[1]).parent  # the endpoint's copy; the outputs are in the data root
    generated, references = root / "eval" / "generated", root / "eval" / "references"
    generated.mkdir(parents=True)
    references.mkdir()
    (generated / "row_0.png").write_bytes(Path(files[1]).read_bytes())
    pose = next((root / "studio_outputs" / "api_generate").glob("*/pose.json"))
    (references / "row.json").write_text(pose.read_text())
    assert out.exists()
    open_tab(page, "Evaluate")
    page.fill("#eval-generated textarea, #eval-generated input", "eval/generated")
    page.fill("#eval-reference textarea, #eval-reference input", "eval/references")
    page.fill("#eval-out textarea, #eval-out input", "eval/out")
    page.click("#eval-run")
    page.wait_for_selector("#eval-report img", timeout=SLOW)
    assert "pck_0.1" in page.inner_text("#eval-table")
    assert (root / "eval" / "out" / "summary.json").is_file()
    check_screenshot(page, tmp_path / "evaluate.png")


# -- the other endpoints -------------------------------------------------------------------------
def test_condition_endpoint_gives_the_cli_files(client, data_dir, tmp_path):
    from gradio_client import handle_file

    photo = data_dir / HAND_PHOTO
    png, detection = client.predict(handle_file(str(photo)), "hand_encoded", "{}", api_name="/condition")
    folder = cli_condition(photo, tmp_path / "cli")
    assert np.array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(folder / f"{photo.stem}.png")))
    assert without_input(detection) == without_input((folder / f"{photo.stem}.json").read_text())


def test_dataset_rows_endpoint_gives_open_dataset_rows(client, root):
    from builders.rows import open_dataset

    rows, pictures = client.predict("hands", "train", 1, 3, api_name="/dataset_rows")
    table = open_dataset(str(root / "hands"), "train")
    assert [row["index"] for row in rows] == [1, 2, 3]
    for row, record in zip(rows, table.select(range(1, 4)), strict=True):
        assert row["caption"] == record["caption"] and row["landmarks"] == record["landmarks"]
    photos = [path for path in pictures if path.endswith("_photo.png")]
    assert np.array_equal(np.asarray(Image.open(photos[0])), np.asarray(table[1]["image"].convert("RGB")))


@pytest.mark.parametrize("typed", ["../../etc/passwd", "/etc", "escape-link"])
def test_endpoints_refuse_paths_outside_the_root(client, root, tmp_path, typed):
    from gradio_client.exceptions import AppError

    if typed == "escape-link" and not (root / typed).exists():
        (root / typed).symlink_to(tmp_path)
    with pytest.raises(AppError, match="outside the data root"):
        client.predict(typed, "train", 0, 1, api_name="/dataset_rows")
