"""The trainer's `--dry_run` on the published SDXL configs, for a v5e-8 (8 chips): bytes per chip by mesh.

    .venv/bin/python benchmarks/sdxl_dry_run.py [--compile]

Writes the configs as a pipeline folder (no weight exists anywhere), then runs
`train_flax_controlnet.py --dry_run shapes` on 8 simulated CPU devices for a replicated and two
sharded meshes (bf16 compute, cached latents, batch 1 of 1024 px per chip) and prints JSON.
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
COMMON = ("--mixed_precision", "bf16", "--cache_latents", "--train_batch_size", "1", "--resolution", "1024")


def dry_run(model: Path, *flags: str) -> dict:
    command = [
        sys.executable, str(REPO / "train_flax_controlnet.py"), "--pretrained_model_name_or_path", str(model),
        "--output_dir", str(model / "unused"), *COMMON, *flags,
    ]  # fmt: skip
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode:
        raise SystemExit(result.stderr[-3000:])
    plan = json.loads(result.stdout.strip().splitlines()[-1])
    return {key: round(size / 1e9, 3) for key, size in plan["bytes_per_device"].items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--compile", action="store_true", help="add the compiled step's activations")
    options = parser.parse_args()
    from landmark_controlnet.training.published_configs import write_config_folder

    model = write_config_folder(Path(tempfile.mkdtemp(prefix="sdxl-configs-")), "sdxl")
    report: dict = {
        "model": "stable-diffusion-xl-base-1.0 (published configs), ControlNet from its UNet",
        "settings": "bf16 compute, fp32 ControlNet and AdamW, --cache_latents, 1 x 1024 px per chip",
        "gb_per_chip": {mesh: dry_run(model, "--dry_run", "shapes", "--mesh", mesh) for mesh in MESHES},
    }
    replicated, sharded = report["gb_per_chip"]["data=8"], report["gb_per_chip"]["data=1,fsdp=8"]
    report["fsdp8_over_replicated"] = {key: round(sharded[key] / replicated[key], 4) for key in sharded}
    if options.compile:
        report["compiled_on_cpu_fsdp8"] = {
            "no_remat": dry_run(model, "--dry_run", "--mesh", "data=1,fsdp=8"),
            "gradient_checkpointing": dry_run(
                model, "--dry_run", "--mesh", "data=1,fsdp=8", "--gradient_checkpointing"
            ),
        }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
