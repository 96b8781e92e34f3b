"""The README's screenshots of Landmark ControlNet Studio, one per view, made from `make demo`'s outputs.

    make demo && .venv/bin/python docs/studio_screenshots.py [--demo outputs/demo] [--out docs/images]

Starts `landmark-controlnet app --data-root DEMO` and drives Debian's Chromium through each view:
a demo photo through hand_encoded, the demo_hands dataset, the tiny ControlNet on row 0's pose,
the tiny training run, and the generated image scored against that pose.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).with_name("landmark-controlnet")
PHOTO = REPO / "landmark_controlnet" / "demo_photos" / "handrefiner_test_2.jpg"
WAIT = 600_000


def serve(root: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [str(CLI), "app", "--port", str(port), "--data-root", str(root)]
    process = subprocess.Popen(command, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(300):
        try:
            with urllib.request.urlopen(url, timeout=5):
                return process, url
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError("the app did not start")


def fill(page, element: str, text: str) -> None:
    page.fill(f"#{element} textarea, #{element} input", text)


def shoot(page, out: Path, view: str) -> None:
    page.screenshot(path=str(out / f"studio_{view}.jpg"), full_page=True, quality=85)
    print(out / f"studio_{view}.jpg")


def views(page, demo: Path, out: Path) -> None:
    page.set_input_files("#condition-photos input[type=file]", str(PHOTO))
    page.click("#condition-run")
    page.locator("#condition-status").get_by_text("result(s) in").wait_for(timeout=WAIT)
    shoot(page, out, "conditioners")

    page.get_by_role("tab", name="Datasets").click()
    fill(page, "dataset-location", "demo_hands")
    page.click("#dataset-open")
    page.wait_for_selector("#dataset-grid img", timeout=WAIT)
    page.fill("#dataset-row input", "0")
    page.click("#dataset-row-show")
    page.wait_for_selector("#dataset-row-image img", timeout=WAIT)
    shoot(page, out, "datasets")

    page.get_by_role("tab", name="Generate").click()
    for element, text in [("gen-base", "tiny_sd"), ("gen-controlnet", "tiny_controlnet"),
                          ("gen-pose-text", "demo_hands#0"), ("gen-prompt", "a hand")]:  # fmt: skip
        fill(page, element, text)
    page.fill("#gen-steps input", "4")
    page.fill("#gen-count input", "2")
    page.click("#gen-run")
    page.wait_for_selector("#gen-images img", timeout=WAIT)
    shoot(page, out, "generate")

    page.get_by_role("tab", name="Runs").click()
    fill(page, "run-dir", "tiny_controlnet")
    page.click("#run-open")
    page.wait_for_selector("#run-grid img", timeout=WAIT)
    shoot(page, out, "runs")

    generated = sorted((demo / "studio_outputs" / "generate").glob("*/image_0.png"))[-1]
    evaluation = demo / "studio_outputs" / "screenshot_evaluation"
    shutil.rmtree(evaluation, ignore_errors=True)
    (evaluation / "generated").mkdir(parents=True)
    (evaluation / "references").mkdir()
    shutil.copyfile(generated, evaluation / "generated" / "row0_0.png")
    shutil.copyfile(generated.with_name("pose.json"), evaluation / "references" / "row0.json")
    page.get_by_role("tab", name="Evaluate").click()
    fill(page, "eval-generated", "studio_outputs/screenshot_evaluation/generated")
    fill(page, "eval-reference", "studio_outputs/screenshot_evaluation/references")
    fill(page, "eval-out", "studio_outputs/screenshot_evaluation/out")
    page.click("#eval-run")
    page.wait_for_selector("#eval-report img", timeout=WAIT)
    shoot(page, out, "evaluate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=REPO / "outputs" / "demo")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    process, url = serve(args.demo.resolve())
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            page.wait_for_selector("#condition-run", timeout=60_000)
            views(page, args.demo.resolve(), args.out)
            browser.close()
    finally:
        process.terminate()


if __name__ == "__main__":
    main()
