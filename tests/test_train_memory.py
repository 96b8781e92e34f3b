"""The trainer holds one layout of the frozen weights: once they are laid out on the mesh, the copies the
base model was loaded into (whole, on the first device) are gone, and validation samples from the
step's own arrays. FLUX.1-dev's transformer and T5 are 34 GB: a second copy on the first chip does
not fit beside its share of the training state.

Each case builds a run in a fresh process with 4 simulated CPU devices and a 2x2 `data`x`fsdp` mesh, then
lists JAX's live arrays: none may hold on a single device a weight that the step shards."""

from __future__ import annotations

import subprocess
import sys

import pytest
import train_fixtures as tf

from landmark_controlnet.training.tiny_flux import write_tiny_flux
from landmark_controlnet.training.tiny_sd import write_tiny_sd

CHECK = """
import gc, sys
import jax
from pathlib import Path
from landmark_controlnet.training.flags import parse_args
from landmark_controlnet.training.loop import build_run, setup_runtime, validate

args = parse_args(sys.argv[1:])
setup_runtime(args)
run = build_run(args)
gc.collect()
sharded = {
    (x.shape, x.dtype)
    for x in jax.tree.leaves(run.frozen)
    if isinstance(x, jax.Array) and not x.sharding.is_fully_replicated
}
assert sharded, "the mesh shards no frozen weight: the check would prove nothing"
whole = [
    (a.shape, a.dtype)
    for a in jax.live_arrays()
    if len(a.sharding.device_set) == 1 and (a.shape, a.dtype) in sharded
]
print("sharded frozen weights:", len(sharded), "whole copies on one device:", len(whole))
assert not whole, whole[:5]
validate(run, 1)  # samples from the sharded weights
assert (Path(args.output_dir) / "validation" / "step-000001.png").is_file()
print("OK")
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory, hand_build):
    root = tmp_path_factory.mktemp("train_memory")
    _, dataset = hand_build.copy_to(root)
    return {
        "root": root,
        "dataset": dataset,
        "flux": write_tiny_flux(root / "tiny-flux"),
        "sd": write_tiny_sd(root / "tiny-sd"),
    }


@pytest.mark.parametrize(
    "family, flags",
    [("flux", ["--cache_latents"]), ("sd", []), ("sd", ["--cache_latents"])],
    ids=["flux-cached", "sd", "sd-cached"],
)
def test_loaded_copies_are_released_and_validation_uses_the_sharded_weights(models, family, flags):
    output = models["root"] / f"run-{family}-{len(flags)}"
    command = tf.train_command(
        models[family], models["dataset"], output,
        "--mesh", "data=2,fsdp=2", "--fsdp_min_elements", "1024",
        "--validation_steps", "1", "--num_validation_images", "1", "--num_inference_steps", "2",
        "--latent_cache_dir", str(models["root"] / f"latent-cache-{family}"),
        *flags,
    )[2:]  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", CHECK, *command],
        capture_output=True,
        text=True,
        env=tf.train_env(4),
        timeout=900,
    )
    assert result.returncode == 0 and "OK" in result.stdout, result.stdout[-2000:] + result.stderr[-4000:]


@pytest.mark.parametrize("validates", [False, True], ids=["other-process", "process-0-validates"])
def test_with_several_processes_the_loaded_weights_leave_the_global_mesh(models, monkeypatch, validates):
    """Validation runs on process 0 alone, which cannot read arrays spanning the hosts: there the base
    is laid out over process 0's own devices, and elsewhere it goes to host memory; values unchanged."""
    import jax
    import numpy as np
    from flax import nnx

    from landmark_controlnet.diffusion.pipeline import load_stable_diffusion
    from landmark_controlnet.training import loop
    from landmark_controlnet.training.step import Shardings

    def weights(sd):
        return {name: nnx.to_pure_dict(nnx.state(m)) for name, m in sd.frozen_models().items()}

    sd = load_stable_diffusion(models["sd"], on_host=True)
    before = weights(sd)
    assert all(type(x) is np.ndarray for x in jax.tree.leaves(before))
    monkeypatch.setattr(loop.jax, "process_count", lambda: 2)
    loop.release_loaded_copies(sd, {}, Shardings.over_all_devices(), validates)
    after = weights(sd)
    leaves = jax.tree.leaves(after)
    if validates:
        assert all(
            isinstance(x, jax.Array) and x.sharding.device_set <= set(jax.local_devices()) for x in leaves
        )
    else:
        assert all(type(x) is np.ndarray for x in leaves)
    jax.tree.map(np.testing.assert_array_equal, after, before)
