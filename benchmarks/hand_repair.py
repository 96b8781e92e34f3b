"""Hand repair speed, as ratios against baselines measured in the same run.

    .venv/bin/python benchmarks/hand_repair.py [--resolution 64] [--steps 20] [--model-steps 30]

- train: the `--inpainting` train step (two VAE encodes, 9-channel UNet) against the plain
  ControlNet train step, on tiny random models of the same shape and the same batch;
- refine: `refine-hands` on HandRefiner's five generated images (load, detect, depth and mask at
  full size, resize, sample, composite) against the Flax sampler alone on the same inputs.
Pass `--model DIR` (an inpainting SD folder) and `--controlnet DIR` to time real models on a GPU/TPU.
Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]
sys.path[:0] = [str(REPO)]

import jax  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from landmark_controlnet.training.models import (  # noqa: E402
    controlnet_from_unet,
    controlnet_options,
    load_base_model,
    split_models,
)
from landmark_controlnet.training.step import (  # noqa: E402
    LossConfig,
    Shardings,
    init_state_on_devices,
    learning_rate_schedule,
    make_optimizer,
    make_train_step,
)
from landmark_controlnet.training.tiny_sd import write_tiny_sd  # noqa: E402


def steps_per_second(model: str, resolution: int, steps: int, inpainting: bool) -> float:
    sd = load_base_model(model)
    graphs, frozen, params = split_models(
        sd, controlnet_from_unet(sd.unet, 0, controlnet_options(np.float32))
    )
    schedule = learning_rate_schedule("constant", 1e-4, 0, steps)
    optimizer = make_optimizer(schedule)
    shardings = Shardings.over_all_devices()
    state = init_state_on_devices(params, optimizer, 0, shardings)
    frozen = shardings.put({**frozen, "noise_schedule": sd.noise_schedule})
    step = make_train_step(graphs, optimizer, schedule, LossConfig(), shardings, params, frozen)
    rows = jax.device_count()
    rng = np.random.default_rng(0)
    image = (1, rows, resolution, resolution, 3)
    batch = {
        "pixel_values": rng.integers(0, 256, image, np.uint8),  # pictures travel as uint8
        "conditioning_pixel_values": rng.integers(0, 256, image, np.uint8),
        "input_ids": np.zeros((1, rows, sd.tokenizer.model_max_length), np.int32),
    }
    if inpainting:
        mask = np.zeros((1, rows, resolution, resolution, 1), np.uint8)
        mask[:, :, resolution // 4 : resolution // 2, resolution // 4 : resolution // 2] = 255
        batch["mask"] = mask
    batch = shardings.put_batch(batch)
    state, metrics = step(state, frozen, batch)  # compile
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, frozen, batch)
    jax.block_until_ready(metrics)
    return steps / (time.perf_counter() - start)


def bench_train(work: Path, resolution: int, steps: int, rounds: int) -> dict:
    plain = str(write_tiny_sd(work / "plain"))
    inpainting = str(write_tiny_sd(work / "inpainting", inpainting=True))
    rates: dict[str, list[float]] = {"plain": [], "inpainting": []}
    for _ in range(rounds):  # alternating: the machine is shared
        rates["plain"].append(steps_per_second(plain, resolution, steps, False))
        rates["inpainting"].append(steps_per_second(inpainting, resolution, steps, True))
    medians = {k: statistics.median(v) for k, v in rates.items()}
    return {
        "plain_steps_per_s": round(medians["plain"], 3),
        "inpainting_steps_per_s": round(medians["inpainting"], 3),
        "inpainting_over_plain": round(medians["inpainting"] / medians["plain"], 3),
    }


def bench_refine(
    model: str, controlnet: str, data: Path, resolution: int, model_steps: int, rounds: int
) -> dict:
    from landmark_controlnet.refine_hands import HandRefiner, working_size

    refiner = HandRefiner(model, controlnet, steps=model_steps)
    images = sorted((data / "images" / "generated").glob("*.jpg"))
    prompt = "a person making a hand gesture"
    inputs = []
    for path in images:  # the sampler's own inputs, prepared outside the timing
        detection = refiner.conditioner.detect(path)
        work = working_size(detection.size, resolution)
        photo = np.asarray(refiner.conditioner.load(path).pixels)
        photo = np.asarray(Image.fromarray(photo).resize(work))
        mask = refiner.conditioner.render_extra("mask", detection, work)
        inputs.append((photo[None], mask[None], refiner.conditioner.draw(detection, work)[None]))
    refiner(images[0], prompt, resolution=resolution)  # load and compile

    def full() -> None:
        for path in images:
            refiner(path, prompt, resolution=resolution)

    def sampler_only() -> None:
        for photo, mask, depth in inputs:
            refiner._sampler(refiner._controlnet_params, [prompt], depth, 0, 0.55, photos=photo, masks=mask)

    rates: dict[str, list[float]] = {"full": [], "sampler": []}
    for _ in range(rounds):
        for name, fn in (("sampler", sampler_only), ("full", full)):
            start = time.perf_counter()
            fn()
            rates[name].append(len(images) / (time.perf_counter() - start))
    medians = {k: statistics.median(v) for k, v in rates.items()}
    return {
        "images": len(images),
        "sampler_images_per_s": round(medians["sampler"], 3),
        "full_images_per_s": round(medians["full"], 3),
        "full_over_sampler": round(medians["full"] / medians["sampler"], 3),
    }


def tiny_controlnet(model: str, work: Path) -> str:
    from landmark_controlnet.training.export import save_controlnet

    sd = load_base_model(model)
    save_controlnet(controlnet_from_unet(sd.unet, 0, controlnet_options(np.float32)), work / "controlnet")
    return str(work / "controlnet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed train steps per round")
    parser.add_argument("--model-steps", type=int, default=30, help="denoising steps of refine-hands")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", help="an inpainting SD folder (default: tiny random)")
    parser.add_argument("--controlnet", help="a ControlNet folder (default: tiny random)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        train = bench_train(work, args.resolution, args.steps, args.rounds)
        model = args.model or str(work / "inpainting")
        controlnet = args.controlnet or tiny_controlnet(model, work)
        refine = bench_refine(model, controlnet, args.data, args.resolution, args.model_steps, args.rounds)
    report = {
        "benchmark": "hand_repair",
        "machine": {"cpus": os.cpu_count(), "devices": [str(d) for d in jax.devices()]},
        # Paths relative to the checkout: a recorded result names no machine.
        "settings": {
            k: (os.path.relpath(v.resolve(), REPO) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
        },
        "train": train,
        "refine": refine,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
