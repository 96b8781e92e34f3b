"""One command for a borrowed GPU: the attention kernels, then the full-size SD 1.5 and SDXL steps.

    .venv/bin/python benchmarks/device_check.py                       # on an H100 or H200, about 9 min
    .venv/bin/python benchmarks/device_check.py --scale 0.125 --quick # a CPU rehearsal, no figures

1. Attention micro-benchmark at SD 1.5's and SDXL's self- and cross-attention shapes, bf16:
   XLA against cuDNN's fused kernel (or splash on TPU), forward and backward; the time, the
   compiled program's temporary bytes, and the largest difference from an fp32 XLA reference.
2. `full_size_step.py` for SD 1.5 at 512 px, batch 16, no remat (a 3-step profile with --profile_dir).
3. `full_size_step.py` for SDXL at 1024 px, batch 8, with the remat policy that fits the card.

The model FLOPs for MFU come from `benchmarks/results/remat_costs_cpu.json` (counted on CPU), so
no unrolled program is lowered on the device. Writes
`benchmarks/results/device_check_<device>.json` and prints the same JSON as its last line.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]
sys.path.insert(0, str(REPO))

# (name, batch, query tokens, key tokens, heads, head dim): the step's largest attention calls.
ATTENTION_SHAPES = [
    ("sd15_self_64x64", 16, 4096, 4096, 8, 40),
    ("sd15_cross_64x64", 16, 4096, 77, 8, 40),
    ("sd15_self_16x16", 16, 256, 256, 8, 160),
    ("sdxl_self_64x64", 8, 4096, 4096, 10, 64),
    ("sdxl_self_32x32", 8, 1024, 1024, 20, 64),
]


def attention_benchmark(scale: float, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from landmark_controlnet.diffusion.attention import AttentionCall, attention, choose_kernel

    fused = "cudnn" if jax.default_backend() == "gpu" else "splash"
    results = {}
    for name, batch, queries, keys, heads, head_dim in ATTENTION_SHAPES:
        queries, keys = max(int(queries * scale), 128), max(int(keys * scale), 8)
        rng = np.random.default_rng(0)
        q, k, v = (
            jnp.asarray(rng.standard_normal((batch, n, heads, head_dim)), jnp.bfloat16)
            for n in (queries, keys, keys)
        )
        reference = attention(*(x.astype(jnp.float32) for x in (q, k, v)), "xla")
        entry = {}
        for kernel in ("xla", fused):
            runs, why = choose_kernel(kernel, AttentionCall.of(q, k, masked=False))
            step = jax.jit(
                jax.value_and_grad(lambda q, k, v, kernel=kernel: attention(q, k, v, kernel).sum())
            )
            compiled = step.lower(q, k, v).compile()
            jax.block_until_ready(compiled(q, k, v))
            started = time.perf_counter()
            for _ in range(repeats):
                out = compiled(q, k, v)
            jax.block_until_ready(out)
            memory = compiled.memory_analysis()
            difference = jnp.abs(attention(q, k, v, kernel).astype(jnp.float32) - reference).max()
            entry[kernel] = {
                "runs": runs if runs == kernel else f"{runs} ({why})",
                "forward_backward_ms": round((time.perf_counter() - started) / repeats * 1e3, 3),
                "temporary_mb": round(memory.temp_size_in_bytes / 1e6, 1) if memory else None,
                "max_abs_difference_from_fp32": float(difference),
            }
        entry["speedup"] = round(entry["xla"]["forward_backward_ms"] / entry[fused]["forward_backward_ms"], 2)
        results[name] = entry
        print(f"  attention {name}: {entry}", file=sys.stderr, flush=True)
    return results


def full_size(case: str, options: argparse.Namespace, extra: list[str]) -> dict:
    """One full_size_step.py case in its own process (its own peak memory; a crash costs one case)."""
    counted = json.loads((RESULTS / "remat_costs_cpu.json").read_text())
    model_tflop = counted["cases"][case]["policies"]["none"]["tflop_per_step"]
    command = [
        sys.executable,
        str(REPO / "benchmarks" / "full_size_step.py"),
        "--cases",
        case,
        "--steps",
        str(options.steps),
        "--scale",
        str(options.scale),
        *(["--model_tflop", str(model_tflop)] if options.scale == 1 else []),
        *extra,
    ]
    started = time.perf_counter()
    result = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    lines = result.stdout.strip().splitlines()
    if result.returncode or not lines:
        return {"error": f"exit status {result.returncode}", "seconds": round(time.perf_counter() - started)}
    return json.loads(lines[-1])["cases"][case]


def sdxl_policy() -> str:
    """'dots' keeps 68 GB for backward (remat_costs_cpu.json): an H200's 141 GB holds it with the
    weights and Adam moments; an 80 GB card needs 'layers' (33 GB, 1.21x the FLOPs)."""
    import jax

    limit = (jax.devices()[0].memory_stats() or {}).get("bytes_limit", 0)
    return "dots" if limit == 0 or limit > 120e9 else "layers"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="shrink widths and lengths (CPU rehearsal)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, smaller batches")
    parser.add_argument("--profile_dir", default=None, help="a 3-step trace of the SD 1.5 step goes here")
    options = parser.parse_args()
    import jax

    device = jax.devices()[0].device_kind
    report = {
        "device": device,
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "scale": options.scale,
    }
    started = time.perf_counter()
    report["attention"] = attention_benchmark(options.scale, repeats=2 if options.quick else 20)
    quick = ["--batch", "2", "--resolution", "128"] if options.quick else []
    profile = ["--profile_dir", options.profile_dir] if options.profile_dir else []
    report["sd15_cached"] = full_size("sd15_cached", options, [*quick, *profile])
    report["sdxl_cached"] = full_size("sdxl_cached", options, [*quick, "--remat", sdxl_policy()])
    report["seconds"] = round(time.perf_counter() - started)
    name = re.sub(r"[^a-z0-9]+", "_", device.lower()).strip("_")
    out = RESULTS / f"device_check_{name}{'_rehearsal' if options.scale != 1 else ''}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
