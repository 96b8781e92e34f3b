"""Landmark ControlNet Studio: start-up, and its endpoints against the CLI, measured in the same run.

    .venv/bin/python benchmarks/app.py [--rounds 5] [--data ../shared/data] [--out FILE.json]

Prints JSON:
- startup_s: from starting `landmark-controlnet app` to its first served page;
- condition: the warm latency of /condition on a 1 MP photo over plain HTTP (upload the photo, call
  the endpoint, download the conditioning PNG), against the CLI's per-image time for the same photo
  and conditioner: the marginal cost of one more image in `condition` (the time for 9 copies minus
  the time for 1, over 8), which leaves out the start-up and model loading the app pays once.
  Target: ratio <= 1.5. The same call through gradio_client is reported too (its client-side
  bookkeeping adds about a tenth of a second);
- generate: the warm latency of /generate on the tiny random SD (64 px, 2 steps) against the
  `generate` command on the same inputs, which imports JAX, loads and compiles on every run.
Medians over the rounds; the machine is shared, so ratios matter, not absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

# benchmarks/conditioners.py would shadow the package: drop benchmarks/ from the path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

REPO = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).with_name("landmark-controlnet")
PHOTO = "images/hands/mediapipe_gesture_four_15a73593.jpg"
CONDITIONER = "hand_encoded"
ONE_MEGAPIXEL = (1155, 866)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def timed(command: list[str], **kwargs) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, **kwargs)
    return time.perf_counter() - start


def one_megapixel_photo(data: Path, folder: Path) -> Path:
    from PIL import Image

    path = folder / "photo_1mp.jpg"
    Image.open(data / PHOTO).convert("RGB").resize(ONE_MEGAPIXEL).save(path, quality=95)
    return path


def tiny_models(root: Path) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from tiny_models import tiny_controlnet

    from landmark_controlnet.training.tiny_sd import write_tiny_sd

    tiny_controlnet(write_tiny_sd(root / "tiny-sd"), root / "controlnet", 1)


def start_server(root: Path) -> tuple[subprocess.Popen, str, float]:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    start = time.perf_counter()
    process = subprocess.Popen(
        [str(CLI), "app", "--port", str(port), "--data-root", str(root)],
        cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                if answer.status == 200:
                    return process, url, time.perf_counter() - start
        except OSError:
            if process.poll() is not None:
                raise RuntimeError("the app exited before serving its page") from None
            time.sleep(0.1)


def cli_per_image(photo: Path, work: Path, rounds: int) -> float:
    many = work / "many"
    many.mkdir()
    for k in range(9):
        shutil.copyfile(photo, many / f"copy{k}.jpg")

    def run(inputs: list[str], out: str) -> float:
        shutil.rmtree(work / out, ignore_errors=True)
        return timed(
            [str(CLI), "condition", *inputs, "--conditioner", CONDITIONER, "--out-dir", str(work / out)]
        )

    one = [run([str(photo)], "one") for _ in range(rounds)]
    nine = [run([str(many)], "nine") for _ in range(rounds)]
    return (statistics.median(nine) - statistics.median(one)) / 8


def post(url: str, body: bytes, content_type: str) -> bytes:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=300) as answer:
        return answer.read()


def http_condition(url: str, photo: Path) -> bytes:
    """/condition as a plain HTTP client calls it: upload, run (unqueued), download the PNG."""
    boundary = "benchmark-boundary"
    form = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{photo.name}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + photo.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    [uploaded] = json.loads(
        post(url + "gradio_api/upload", form, f"multipart/form-data; boundary={boundary}")
    )
    photo_data = {"path": uploaded, "meta": {"_type": "gradio.FileData"}}
    call = json.dumps({"data": [photo_data, CONDITIONER, "{}"]}).encode()
    png, _ = json.loads(post(url + "gradio_api/run/condition", call, "application/json"))["data"]
    with urllib.request.urlopen(png["url"], timeout=300) as answer:
        return answer.read()


def endpoint_latency(call, rounds: int) -> float:
    call()  # warm: the detector built, the models loaded and compiled
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from gradio_client import Client, handle_file

    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp)
        photo = one_megapixel_photo(args.data, root)
        tiny_models(root)
        process, url, startup = start_server(root)
        try:
            client = Client(url, verbose=False)
            condition_http = endpoint_latency(lambda: http_condition(url, photo), args.rounds)
            condition = endpoint_latency(
                lambda: client.predict(handle_file(str(photo)), CONDITIONER, "{}", api_name="/condition"),
                args.rounds,
            )
            settings = json.dumps({"pose": str(photo), "steps": 2, "conditioner": CONDITIONER})
            generate = endpoint_latency(
                lambda: client.predict(
                    "tiny-sd", "controlnet", None, "a hand", settings, api_name="/generate"
                ),
                args.rounds,
            )
        finally:
            process.terminate()
            process.wait(timeout=30)
        per_image = cli_per_image(photo, root, args.rounds)
        generate_cli = [
            timed([str(CLI), "generate", "--base-model", str(root / "tiny-sd"), "--controlnet",
                   str(root / "controlnet"), "--pose", str(photo), "--conditioner", CONDITIONER, "--prompt",
                   "a hand", "--steps", "2", "--out-dir", str(root / f"cli_generate_{k}")])
            for k in range(max(1, args.rounds // 2))
        ]  # fmt: skip
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "rounds": args.rounds,
        "startup_s": round(startup, 2),
        "condition": {
            "photo": f"{ONE_MEGAPIXEL[0]}x{ONE_MEGAPIXEL[1]} ({PHOTO})",
            "conditioner": CONDITIONER,
            "app_warm_http_s": round(condition_http, 4),
            "app_warm_gradio_client_s": round(condition, 4),
            "cli_per_image_s": round(per_image, 4),
            "ratio_app_to_cli": round(condition_http / per_image, 3),
            "ratio_gradio_client_to_cli": round(condition / per_image, 3),
            "target_ratio": 1.5,
        },
        "generate": {
            "model": "tiny random SD 1.x, 64 px, 2 steps",
            "app_warm_s": round(generate, 3),
            "cli_s": round(statistics.median(generate_cli), 3),
            "ratio_app_to_cli": round(generate / statistics.median(generate_cli), 3),
        },
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
