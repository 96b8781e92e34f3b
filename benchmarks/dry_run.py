"""The trainer's `--dry_run` on published configs (SDXL, FLUX.1-dev) for 8 chips: bytes per chip by mesh.

    .venv/bin/python benchmarks/dry_run.py [--model sdxl|flux-dev] [--compile]

Writes the configs as a pipeline folder (no weight exists anywhere), then runs
`train_flax_controlnet.py --dry_run shapes` on 8 simulated CPU devices for a replicated and two
sharded meshes (bf16 compute, cached latents, batch 1 of 1024 px per chip), and on one device (an
H100 or H200), and prints JSON with whether each fits the HBM of v5e-8, v6e-8, v5p-8, H100 and H200
chips. FLUX.1-dev's ControlNet has diffusers' default size: 4 double and 10 single blocks.
`--compile` adds the compiled step's memory analysis at `data=1,fsdp=8` with and without
`--gradient_checkpointing` (about 7 minutes each on 2 cores). Those activation figures are the CPU
compiler's: a TPU's fuses and lays out differently, so on the VM itself run the same command.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]
sys.path.insert(0, str(REPO))

MESHES = ("data=8", "data=2,fsdp=4", "data=1,fsdp=8")
HBM_GB = {"v5e": 16, "v6e": 32, "v5p": 95, "H100": 80, "H200": 141}  # per chip, as sold
MODELS = {
    "sdxl": "stable-diffusion-xl-base-1.0 (published configs), ControlNet from its UNet",
    "flux-dev": "FLUX.1-dev (published configs), ControlNet from its transformer: 4 double, 10 single blocks",
}
MODEL_FLAGS = {"sdxl": (), "flux-dev": ("--num_double_layers", "4", "--num_single_layers", "10")}
COMMON = ("--mixed_precision", "bf16", "--cache_latents", "--train_batch_size", "1", "--resolution", "1024")


def dry_run(model: Path, *flags: str, devices: int = 8) -> dict:
    command = [
        sys.executable, str(REPO / "train_flax_controlnet.py"), "--pretrained_model_name_or_path", str(model),
        "--output_dir", str(model / "unused"), *COMMON, *flags,
    ]  # fmt: skip
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
    }
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode:
        raise SystemExit(result.stderr[-3000:])
    plan = json.loads(result.stdout.strip().splitlines()[-1])
    return {key: round(size / 1e9, 3) for key, size in plan["bytes_per_device"].items()}


def fits(gb_per_chip: dict) -> dict:
    """Which chips hold this state (parameters, optimiser, frozen weights, what backward keeps)."""
    total = sum(gb_per_chip.values())
    return {"total_gb": round(total, 2), "fits": [chip for chip, hbm in HBM_GB.items() if total < hbm]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=sorted(MODELS), default="sdxl")
    parser.add_argument("--compile", action="store_true", help="add the compiled step's activations")
    options = parser.parse_args()
    from landmark_controlnet.training.published_configs import write_config_folder

    model = write_config_folder(Path(tempfile.mkdtemp(prefix=f"{options.model}-configs-")), options.model)
    extra = MODEL_FLAGS[options.model]
    report: dict = {
        "model": MODELS[options.model],
        "settings": "bf16 compute, fp32 ControlNet and AdamW, --cache_latents, 1 x 1024 px per chip",
        "gb_per_chip": {
            mesh: dry_run(model, *extra, "--dry_run", "shapes", "--mesh", mesh) for mesh in MESHES
        },
    }
    report["one_gpu"] = dry_run(model, *extra, "--dry_run", "shapes", devices=1)
    remat = (*extra, "--dry_run", "shapes", "--gradient_checkpointing")
    report["gradient_checkpointing"] = {
        "data=1,fsdp=8": dry_run(model, *remat, "--mesh", "data=1,fsdp=8"),
        "one_gpu": dry_run(model, *remat, devices=1),
    }
    shown = [*report["gb_per_chip"].items(), ("one_gpu", report["one_gpu"])]
    shown += [
        (f"{mesh}, gradient_checkpointing", gb) for mesh, gb in report["gradient_checkpointing"].items()
    ]
    report["fits"] = {mesh: fits(gb) for mesh, gb in shown}
    replicated, sharded = report["gb_per_chip"]["data=8"], report["gb_per_chip"]["data=1,fsdp=8"]
    report["fsdp8_over_replicated"] = {
        key: round(sharded[key] / replicated[key], 4) if replicated[key] else None for key in sharded
    }
    if options.compile:
        report["compiled_on_cpu_fsdp8"] = {
            "no_remat": dry_run(model, *extra, "--dry_run", "--mesh", "data=1,fsdp=8"),
            "gradient_checkpointing": dry_run(
                model, *extra, "--dry_run", "--mesh", "data=1,fsdp=8", "--gradient_checkpointing"
            ),
        }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
