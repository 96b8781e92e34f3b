"""Peak resident memory of loading the full-size SD 1.5 UNet: our streaming from_pretrained against
the naive whole-file load, measured in the same run.

    .venv/bin/python benchmarks/load_memory.py [--workdir DIR] [--keep] [--no-fp16] [--record]

Writes a diffusers-layout folder with random weights (config.json = stable-diffusion-v1-5's unet
config; diffusion_pytorch_model.safetensors in fp32 and, unless --no-fp16, the fp16 variant), without
torch and without holding the checkpoint in memory: the shapes come from our abstract model, and the
safetensors header and data are written tensor by tensor. Then, one after another, child processes
load it and report their resident memory (VmRSS) after the imports, its high-water mark (VmHWM,
reset with /proc/self/clear_refs) during the load, and VmRSS after:
- streaming: `from_pretrained(UNet2DConditionModel, folder)` (and `variant="fp16"`);
- naive: `safetensors.numpy.load_file` of the whole file, then `weights.load_module` from that dict.
`ratio` = (peak - baseline) / parameter bytes: ~1 means the parameters plus a tensor; 2 two copies.
The last stdout line is the JSON; --record also writes benchmarks/results/load_memory_2cpu.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# benchmarks/conditioners.py would shadow the `conditioners` package our diffusion package imports.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]
sys.path.insert(0, str(REPO))
sys.path.append(str(REPO / "benchmarks"))  # last: benchmarks/conditioners.py must not shadow the package

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

from landmark_controlnet.diffusion import weights  # noqa: E402
from landmark_controlnet.diffusion.loading import from_pretrained  # noqa: E402
from landmark_controlnet.diffusion.unet import UNet2DConditionModel, UNetConfig  # noqa: E402
from landmark_controlnet.training.published_configs import SD15_UNET_CONFIG  # noqa: E402

RECORD = REPO / "benchmarks" / "results" / "load_memory_2cpu.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
FP16_FILE = "diffusion_pytorch_model.fp16.safetensors"
GB = 1e9

# Rough peak need per child, in parameter bytes, to wait for before starting it (plus the runtime).
EXPECTED_RATIO = {"streaming": 1.3, "naive": 2.5}
RUNTIME_BYTES = int(1.5 * GB)


# -- the checkpoint ------------------------------------------------------------------------------------


def checkpoint_layout(config: UNetConfig) -> tuple[dict[str, tuple[int, ...]], int]:
    """PyTorch key -> PyTorch shape of every parameter (from the abstract model), and the parameter bytes."""
    abstract = UNet2DConditionModel.abstract(config)
    layout, param_bytes = {}, 0
    for path, variable in weights.parameter_paths(abstract):
        shape = variable.get_raw_value().shape
        layout[weights.torch_key(path)] = weights.to_torch_layout(np.empty(shape, np.uint8), path).shape
        param_bytes += int(np.prod(shape)) * jnp.dtype(variable.get_raw_value().dtype).itemsize
    return dict(sorted(layout.items())), param_bytes


def safetensors_header(layout: dict[str, tuple[int, ...]], dtype: np.dtype) -> bytes:
    """The 8-byte length and JSON header of a file holding `layout`'s tensors in that order, contiguous."""
    name = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16"}[np.dtype(dtype)]
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key, shape in layout.items():
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        header[key] = {"dtype": name, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    return len(text).to_bytes(8, "little") + text


def random_tensors(layout: dict[str, tuple[int, ...]], seed: int) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(seed)
    for shape in layout.values():
        tensor = rng.standard_normal(shape, dtype=np.float32)
        tensor *= 0.02
        yield tensor


def write_checkpoint(folder: Path, layout: dict[str, tuple[int, ...]], fp16: bool, seed: int = 0) -> None:
    """config.json and the safetensors file(s), one random tensor in memory at a time."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(SD15_UNET_CONFIG, indent=2))
    dtypes = [np.float32, np.float16] if fp16 else [np.float32]
    names = {np.float32: WEIGHTS_FILE, np.float16: FP16_FILE}
    with contextlib.ExitStack() as stack:
        files = {dtype: stack.enter_context(open(folder / names[dtype], "wb")) for dtype in dtypes}
        for dtype, file in files.items():
            file.write(safetensors_header(layout, dtype))
        for tensor in random_tensors(layout, seed):
            for dtype, file in files.items():
                file.write(memoryview(tensor.astype(dtype, copy=False)).cast("B"))


# -- the children ------------------------------------------------------------------------------------


def status_bytes(field: str) -> int:
    kib = re.search(field + r":\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)
    return int(kib) * 1024


def reset_peak() -> None:
    """VmHWM := VmRSS. (ru_maxrss would not do: Linux carries it over fork and exec.)"""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def load_streaming(folder: Path, variant: str | None) -> tuple[nnx.Module, None]:
    return from_pretrained(UNet2DConditionModel, folder, variant=variant), None


def load_naive(folder: Path, variant: str | None) -> tuple[nnx.Module, dict[str, np.ndarray]]:
    tensors = load_file(folder / (FP16_FILE if variant else WEIGHTS_FILE))
    config = UNetConfig.from_json_file(folder / "config.json")
    model = weights.load_module(UNet2DConditionModel.abstract(config), weights.DictTensorSource(tensors))
    return model, tensors


def child(method: str, folder: Path, variant: str | None) -> None:
    """Print this process's memory around one load as JSON; the model is held until after is read."""
    jnp.zeros(1).block_until_ready()  # the runtime's own memory is not the loader's
    gc.collect()
    baseline = status_bytes("VmRSS")
    reset_peak()
    start = time.perf_counter()
    model, tensors = {"streaming": load_streaming, "naive": load_naive}[method](folder, variant)
    seconds = time.perf_counter() - start
    peak = status_bytes("VmHWM")
    del tensors
    gc.collect()
    after = status_bytes("VmRSS")
    count = sum(v.get_raw_value().size for _, v in weights.parameter_paths(model))
    print(
        json.dumps({"baseline": baseline, "peak": peak, "after": after, "load_s": seconds, "params": count})
    )


def available_bytes() -> int:
    kib = re.search(r"MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text()).group(1)
    return int(kib) * 1024


def wait_for_memory(need: int, wait_s: float) -> None:
    """Others share this machine: start a child only when it would fit."""
    deadline = time.monotonic() + wait_s
    while available_bytes() < need:
        if time.monotonic() > deadline:
            sys.exit(f"load_memory: {available_bytes() / GB:.1f} GB available, {need / GB:.1f} GB needed")
        print(f"waiting: {available_bytes() / GB:.1f} GB available, need {need / GB:.1f} GB", file=sys.stderr)
        time.sleep(15)


def run_child(method: str, folder: Path, variant: str | None, param_bytes: int, args) -> dict:
    wait_for_memory(
        max(int(args.min_free_gb * GB), int(EXPECTED_RATIO[method] * param_bytes) + RUNTIME_BYTES),
        args.wait_s,
    )
    command = [sys.executable, __file__, "--child", method, str(folder)]
    command += ["--variant", variant] if variant else []
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    if result.returncode != 0:
        sys.exit(f"load_memory: the {method} child failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def summarize(measured: dict, file_bytes: int, param_bytes: int) -> dict:
    growth = measured["peak"] - measured["baseline"]
    return {
        "file_bytes": file_bytes,
        "baseline_rss_bytes": measured["baseline"],
        "peak_rss_bytes": measured["peak"],
        "after_rss_bytes": measured["after"],
        "peak_minus_baseline_bytes": growth,
        "ratio": round(growth / param_bytes, 3),
        "load_s": round(measured["load_s"], 1),
    }


# -- main ---------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None, help="where to write the checkpoint (temp)")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint folder")
    parser.add_argument("--no-fp16", dest="fp16", action="store_false", help="skip the fp16 variant")
    parser.add_argument("--record", action="store_true", help=f"write {RECORD.relative_to(REPO)}")
    parser.add_argument("--min-free-gb", type=float, default=9.0, help="wait for this much MemAvailable")
    parser.add_argument("--wait-s", type=float, default=1800, help="give up waiting for memory after")
    parser.add_argument("--child", choices=["streaming", "naive"], help=argparse.SUPPRESS)
    parser.add_argument("folder", nargs="?", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    return parser.parse_args()


def measure(folder: Path, fp16: bool, param_bytes: int, args) -> dict:
    runs = [("streaming_fp32", "streaming", None), ("naive_fp32", "naive", None)]
    runs += [("streaming_fp16", "streaming", "fp16")] if fp16 else []
    results, params = {}, set()
    for name, method, variant in runs:  # one after another: never two big loads at once
        measured = run_child(method, folder, variant, param_bytes, args)
        params.add(measured["params"])
        file_bytes = (folder / (FP16_FILE if variant else WEIGHTS_FILE)).stat().st_size
        results[name] = summarize(measured, file_bytes, param_bytes)
        print(f"{name}: {json.dumps(results[name])}", file=sys.stderr)
    return {"parameters": params.pop() if len(params) == 1 else sorted(params), "runs": results}


def main() -> None:
    args = parse_args()
    if args.child:
        child(args.child, args.folder, args.variant)
        return
    config = UNetConfig.from_dict(SD15_UNET_CONFIG)
    layout, param_bytes = checkpoint_layout(config)
    disk_need = param_bytes * (1.5 if args.fp16 else 1.0) + GB
    workdir = args.workdir or Path(tempfile.gettempdir())
    workdir.mkdir(parents=True, exist_ok=True)
    if shutil.disk_usage(workdir).free < disk_need:
        sys.exit(f"load_memory: {workdir} has under {disk_need / GB:.1f} GB free for the checkpoint")
    root = Path(tempfile.mkdtemp(prefix="load_memory_", dir=workdir))
    try:
        start = time.perf_counter()
        write_checkpoint(root / "unet", layout, args.fp16)
        print(f"wrote {root / 'unet'} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        measured = measure(root / "unet", args.fp16, param_bytes, args)
    finally:
        if args.keep:
            print(f"kept {root / 'unet'}", file=sys.stderr)
        else:
            shutil.rmtree(root)
    report = {
        "benchmark": "load_memory",
        "command": ".venv/bin/python benchmarks/load_memory.py" + (" --record" if args.record else ""),
        "model": "SD 1.5 UNet2DConditionModel, full size (v1-5 unet/config.json), random weights",
        "machine": {
            "cpus": os.cpu_count(),
            "mem_total_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        },
        "measured": datetime.date.today().isoformat(),
        "parameter_bytes": param_bytes,
        **measured,
        "note": (
            "peak = VmHWM of a child process, reset to VmRSS after the imports (baseline); it counts "
            "file pages mapped into the process too. after = VmRSS with the model held and the naive "
            "dict released. ratio = (peak - baseline) / parameter_bytes (fp32 params, also for the "
            "fp16 file)."
        ),
    }
    text = json.dumps(report, indent=1)
    if args.record:
        RECORD.write_text(text + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
