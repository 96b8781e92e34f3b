"""The loader of landmark_controlnet.diffusion: model folders written by the released PyTorch libraries
(diffusers' save_pretrained, huggingface_hub's save_torch_state_dict, torch.save), local and through the
Hub stand-in, in every weights layout, and the errors a user sees."""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import ClassVar

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from hub_standin import HubStandIn
from safetensors.numpy import save_file

from conditioners.locations import NoSuchPathError
from landmark_controlnet.diffusion import loading, weights
from landmark_controlnet.diffusion.config import ModelConfig
from landmark_controlnet.diffusion.layers import ResnetBlock2D
from landmark_controlnet.diffusion.loading import (
    LoadingError,
    MissingExtraError,
    MissingFileError,
    PickleRefusedError,
    SafetensorsSource,
    from_pretrained,
)
from landmark_controlnet.diffusion.options import DEFAULT_OPTIONS, ModelOptions
from landmark_controlnet.diffusion.pretrained import PretrainedModule
from landmark_controlnet.diffusion.weights import WeightsError

TESTS = Path(__file__).parent
TOKEN = "hf_secretLoaderToken0987654321"


# -- a small loadable model: ResnetBlock2D's in a row -------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TinyConfig(ModelConfig):
    class_name: ClassVar[str] = "TinyResnets"
    channels: tuple[int, ...] = (8, 16, 16)
    norm_num_groups: int = 4


class TinyModel(PretrainedModule):
    """Checkpoint keys `resnets.<i>.<conv1|norm1|...>.<weight|bias>`; `old_resnets.` is a legacy name."""

    config_class = TinyConfig

    def __init__(self, config: TinyConfig, options: ModelOptions = DEFAULT_OPTIONS, *, rngs: nnx.Rngs):
        pairs = zip(config.channels[:-1], config.channels[1:], strict=True)
        self.resnets = nnx.List(
            [ResnetBlock2D(a, b, None, config.norm_num_groups, 1e-6, options, rngs) for a, b in pairs]
        )

    @staticmethod
    def ignore_unexpected(key: str) -> bool:
        return key == "position_ids"

    @staticmethod
    def legacy_key(key: str) -> str:
        return key.replace("old_resnets.", "resnets.")

    @staticmethod
    def legacy_tensor(key: str, tensor: np.ndarray) -> np.ndarray:
        """An imagined older writer stored norm1's scale as (C, 1)."""
        return tensor.reshape(-1) if key.endswith("norm1.weight") and tensor.ndim == 2 else tensor


class TinyTextModel(TinyModel):
    """The same model in the transformers layout (model.safetensors, pytorch_model.bin)."""

    weights_name = "model"


def checkpoint_shapes(config: TinyConfig) -> dict[str, tuple[int, ...]]:
    """PyTorch key -> PyTorch shape of every parameter, from the abstract model (no memory)."""
    abstract = nnx.eval_shape(lambda: TinyModel(config, rngs=nnx.Rngs(0)))
    return {
        weights.torch_key(path): weights.to_torch_layout(
            np.empty(var.get_raw_value().shape, np.uint8), path
        ).shape
        for path, var in weights.parameter_paths(abstract)
    }


def random_checkpoint(config: TinyConfig, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s, dtype=np.float32) for k, s in checkpoint_shapes(config).items()}


def write_config(folder: Path, config: TinyConfig = TinyConfig()) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config.to_dict()))
    return folder


def write_folder(folder: Path, tensors: dict[str, np.ndarray], name: str = "diffusion_pytorch_model") -> Path:
    save_file(tensors, str(write_config(folder) / f"{name}.safetensors"))
    return folder


def write_shards(folder: Path, tensors: dict[str, np.ndarray], shards: int) -> list[str]:
    """The tensors split over `shards` files in key order, with diffusers' index; returns the shard names."""
    keys = sorted(tensors)
    names = [f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    weight_map = {key: names[i * shards // len(keys)] for i, key in enumerate(keys)}
    for name in names:
        save_file({k: tensors[k] for k in keys if weight_map[k] == name}, str(folder / name))
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    return names


def loaded(model: nnx.Module) -> dict[str, np.ndarray]:
    return weights.torch_state_dict(model)


def assert_same_tensors(ours: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> None:
    assert sorted(ours) == sorted(reference)
    for key, value in reference.items():
        np.testing.assert_array_equal(ours[key], value, err_msg=key)


# -- the PyTorch reference: the same structure as a diffusers model, written by save_pretrained -------


@functools.cache
def diffusers_reference_class():
    """A diffusers ModelMixin with TinyModel's keys (built lazily: the Hub child imports this module)."""
    import torch
    from diffusers import ConfigMixin, ModelMixin
    from diffusers.configuration_utils import register_to_config
    from diffusers.models.resnet import ResnetBlock2D as TorchResnetBlock2D

    class TinyResnets(ModelMixin, ConfigMixin):
        @register_to_config
        def __init__(self, channels: tuple[int, ...] = (8, 16, 16), norm_num_groups: int = 4):
            super().__init__()
            pairs = zip(channels[:-1], channels[1:], strict=True)
            self.resnets = torch.nn.ModuleList(
                [TorchResnetBlock2D(in_channels=a, out_channels=b, temb_channels=None, groups=norm_num_groups)
                 for a, b in pairs]
            )  # fmt: skip

    return TinyResnets


@pytest.fixture(scope="module")
def torch_model():
    from tests.diffusion_parity import perturb  # imports torch: not at module level (the children import us)

    return perturb(diffusers_reference_class()(), seed=0)


def torch_tensors(model, dtype=None) -> dict[str, np.ndarray]:
    """The reference state dict as fp32 numpy, rounded through `dtype` first when given."""
    state = model.state_dict()
    return {k: (v.to(dtype) if dtype else v).float().numpy() for k, v in state.items()}


def with_dtype(model, dtype):
    return copy.deepcopy(model).to(dtype)


# -- local folders ------------------------------------------------------------------------------------


def test_a_diffusers_folder_loads_every_tensor_exactly(torch_model, tmp_path):
    torch_model.save_pretrained(tmp_path, safe_serialization=True)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    model = from_pretrained(TinyModel, tmp_path)
    assert_same_tensors(loaded(model), torch_tensors(torch_model))
    half = from_pretrained(TinyModel, str(tmp_path), options=ModelOptions(param_dtype=jnp.bfloat16))
    assert {v.get_raw_value().dtype for _, v in weights.parameter_paths(half)} == {jnp.dtype(jnp.bfloat16)}


def test_a_pipeline_component_loads_from_its_subfolder_and_the_index_names_the_components(
    torch_model, tmp_path
):
    torch_model.save_pretrained(tmp_path / "unet")
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.39.0",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "safety_checker": [None, None],
        "requires_safety_checker": False,
    }
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    assert_same_tensors(
        loaded(from_pretrained(TinyModel, tmp_path, subfolder="unet")), torch_tensors(torch_model)
    )

    pipeline = loading.read_model_index(tmp_path)
    assert pipeline.pipeline_class == "StableDiffusionPipeline"
    assert pipeline.components == {
        "unet": "UNet2DConditionModel",
        "vae": "AutoencoderKL",
        "text_encoder": "CLIPTextModel",
        "tokenizer": "CLIPTokenizer",
        "scheduler": "PNDMScheduler",
    }
    assert not loading.is_sdxl(pipeline) and not pipeline.has("controlnet")
    index.update(text_encoder_2=["transformers", "CLIPTextModelWithProjection"], _class_name="SDXL")
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    assert loading.is_sdxl(loading.read_model_index(tmp_path))
    with pytest.raises(MissingFileError, match="model_index.json"):
        loading.read_model_index(tmp_path / "unet")


def test_the_fp16_variant_loads_into_fp32_params_as_the_rounded_reference(torch_model, tmp_path):
    import torch

    torch_model.save_pretrained(tmp_path)
    with_dtype(torch_model, torch.float16).save_pretrained(tmp_path, variant="fp16")
    assert (tmp_path / "diffusion_pytorch_model.fp16.safetensors").is_file()

    fp16 = from_pretrained(TinyModel, tmp_path, variant="fp16")
    assert {v.get_raw_value().dtype for _, v in weights.parameter_paths(fp16)} == {jnp.dtype(jnp.float32)}
    rounded = torch_tensors(torch_model, torch.float16)
    assert_same_tensors(loaded(fp16), rounded)
    exact = torch_tensors(torch_model)
    assert any(not np.array_equal(rounded[k], exact[k]) for k in exact)  # the variant file was read
    assert_same_tensors(loaded(from_pretrained(TinyModel, tmp_path)), exact)


def test_bf16_tensors_are_read(torch_model, tmp_path):
    import torch

    with_dtype(torch_model, torch.bfloat16).save_pretrained(tmp_path, variant="bf16")
    model = from_pretrained(TinyModel, tmp_path, variant="bf16")
    assert_same_tensors(loaded(model), torch_tensors(torch_model, torch.bfloat16))


@pytest.mark.parametrize("variant", [None, "fp16"])
def test_a_sharded_diffusers_checkpoint_loads_from_its_index(torch_model, tmp_path, variant):
    import torch

    reference = torch_model if variant is None else with_dtype(torch_model, torch.float16)
    reference.save_pretrained(tmp_path, variant=variant, max_shard_size="8KB")
    index_name = loading.weight_file_names("diffusion_pytorch_model", variant, "safetensors").indexes[0]
    assert (tmp_path / index_name).is_file()  # the name diffusers 0.39 writes is the one we look for
    shards = set(json.loads((tmp_path / index_name).read_text())["weight_map"].values())
    assert len(shards) > 2
    model = from_pretrained(TinyModel, tmp_path, variant=variant)
    assert_same_tensors(loaded(model), torch_tensors(reference))


def test_the_transformers_layout_single_variant_and_sharded(torch_model, tmp_path):
    import torch
    from huggingface_hub import save_torch_state_dict

    reference = torch_tensors(torch_model)
    write_folder(tmp_path / "single", reference, "model")
    assert_same_tensors(loaded(from_pretrained(TinyTextModel, tmp_path / "single")), reference)

    write_folder(tmp_path / "variant", torch_tensors(torch_model, torch.float16), "model.fp16")
    variant = from_pretrained(TinyTextModel, tmp_path / "variant", variant="fp16")
    assert_same_tensors(loaded(variant), torch_tensors(torch_model, torch.float16))

    save_torch_state_dict(torch_model.state_dict(), write_config(tmp_path / "sharded"), max_shard_size="8KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert_same_tensors(loaded(from_pretrained(TinyTextModel, tmp_path / "sharded")), reference)


def test_legacy_keys_and_layouts_are_converted_and_ignorable_keys_skipped(tmp_path):
    reference = random_checkpoint(TinyConfig(), seed=1)
    stored = {k.replace("resnets.0.", "old_resnets.0."): v for k, v in reference.items()}
    stored["old_resnets.0.norm1.weight"] = reference["resnets.0.norm1.weight"][:, None]
    stored["position_ids"] = np.arange(4, dtype=np.int64)
    write_folder(tmp_path, stored)
    assert_same_tensors(loaded(from_pretrained(TinyModel, tmp_path)), reference)


def test_safetensors_source_reads_several_shards_and_refuses_a_key_in_two(tmp_path):
    reference = random_checkpoint(TinyConfig(), seed=2)
    keys = sorted(reference)
    save_file({k: reference[k] for k in keys[:5]}, str(tmp_path / "a.safetensors"))
    save_file({k: reference[k] for k in keys[5:]}, str(tmp_path / "b.safetensors"))
    with SafetensorsSource([tmp_path / "a.safetensors", tmp_path / "b.safetensors"]) as source:
        assert sorted(source.keys()) == keys
        np.testing.assert_array_equal(source.get(keys[-1]), reference[keys[-1]])
        assert "2 shards" in source.describe()
    save_file({keys[0]: reference[keys[0]]}, str(tmp_path / "c.safetensors"))
    with pytest.raises(WeightsError, match=f"{keys[0]}.*a.safetensors.*c.safetensors"):
        SafetensorsSource([tmp_path / "a.safetensors", tmp_path / "c.safetensors"])
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="bad.safetensors"):
        SafetensorsSource([tmp_path / "bad.safetensors"])
    source = SafetensorsSource([tmp_path / "a.safetensors"])
    assert source.get(keys[0]).dtype == np.float32


# -- pickles ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "bin_name"), [(TinyModel, "diffusion_pytorch_model.bin"), (TinyTextModel, "pytorch_model.bin")]
)
def test_a_pickled_bin_is_refused_without_the_opt_in_and_loaded_with_it(torch_model, tmp_path, cls, bin_name):
    import torch

    write_config(tmp_path)
    state = {k: v.to(torch.bfloat16) if "conv1" in k else v for k, v in torch_model.state_dict().items()}
    torch.save(state, tmp_path / bin_name)
    with pytest.raises(PickleRefusedError, match=f"{bin_name}.*allow_pickle=True"):
        from_pretrained(cls, tmp_path)
    model = from_pretrained(cls, tmp_path, allow_pickle=True)
    assert_same_tensors(loaded(model), {k: v.float().numpy() for k, v in state.items()})
    (tmp_path / bin_name).write_bytes(b"not a pickle")
    with pytest.raises(LoadingError, match=f"{bin_name}: torch.load"):
        from_pretrained(cls, tmp_path, allow_pickle=True)


# -- errors -------------------------------------------------------------------------------------------


def test_a_missing_config_or_weights_file_is_named_with_what_was_found(tmp_path):
    write_folder(tmp_path, random_checkpoint(TinyConfig(), seed=3))
    (tmp_path / "config.json").unlink()
    with pytest.raises(MissingFileError) as missing_config:
        from_pretrained(TinyModel, tmp_path)
    message = str(missing_config.value)
    assert "config.json not found" in message and str(tmp_path) in message
    assert "found instead: diffusion_pytorch_model.safetensors" in message

    write_folder(tmp_path / "unet", {}, "model")  # config.json and the transformers layout only
    with pytest.raises(MissingFileError) as missing_weights:
        from_pretrained(TinyModel, tmp_path, subfolder="unet")
    message = str(missing_weights.value)
    assert "subfolder 'unet'" in message and "diffusion_pytorch_model.safetensors" in message
    assert "found instead: config.json, model.safetensors" in message

    write_folder(tmp_path / "default", random_checkpoint(TinyConfig(), seed=3))
    with pytest.raises(MissingFileError, match=r"diffusion_pytorch_model\.fp16\.safetensors.*variant=None"):
        from_pretrained(TinyModel, tmp_path / "default", variant="fp16")
    with pytest.raises(NoSuchPathError, match="nowhere: no such model folder"):
        from_pretrained(TinyModel, tmp_path / "nowhere")
    with pytest.raises(MissingFileError, match=r"no subfolder 'vae' \(subfolders: \['default', 'unet'\]\)"):
        from_pretrained(TinyModel, tmp_path, subfolder="vae")
    with pytest.raises(LoadingError, match="revision='v2' applies to Hub repos"):
        from_pretrained(TinyModel, tmp_path / "default", revision="v2")
    with pytest.raises(LoadingError, match="convert_single_file"):
        from_pretrained(TinyModel, tmp_path / "default" / "diffusion_pytorch_model.safetensors")


def test_a_missing_or_extra_key_or_a_missing_shard_is_named(tmp_path):
    reference = random_checkpoint(TinyConfig(), seed=4)
    write_folder(tmp_path / "missing", {k: v for k, v in reference.items() if k != "resnets.1.conv2.weight"})
    with pytest.raises(
        WeightsError, match=r"diffusion_pytorch_model\.safetensors.*'resnets\.1\.conv2\.weight'"
    ):
        from_pretrained(TinyModel, tmp_path / "missing")
    write_folder(tmp_path / "extra", {**reference, "resnets.9.conv1.weight": np.zeros(3, np.float32)})
    with pytest.raises(WeightsError, match=r"unexpected weights 'resnets\.9\.conv1\.weight'"):
        from_pretrained(TinyModel, tmp_path / "extra")

    sharded = write_config(tmp_path / "sharded")
    (sharded / write_shards(sharded, reference, shards=2)[1]).unlink()
    with pytest.raises(MissingFileError, match="shard diffusion_pytorch_model-00002-of-00002.safetensors"):
        from_pretrained(TinyModel, sharded)


# -- the project's own models, from a pipeline folder the PyTorch libraries wrote -----------------------

TINY_UNET = {
    "block_out_channels": [32, 64],
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "layers_per_block": 1,
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "norm_num_groups": 8,
    "sample_size": 8,
}
TINY_VAE = {
    "block_out_channels": [32, 64],
    "down_block_types": ["DownEncoderBlock2D"] * 2,
    "up_block_types": ["UpDecoderBlock2D"] * 2,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 16,
}
TINY_CLIP = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_attention_heads": 2,
    "num_hidden_layers": 2,
    "vocab_size": 1000,
    "projection_dim": 16,
}


def test_a_pipeline_of_our_unet_vae_and_clip_loads_from_fp16_sharded_save_pretrained_folders(tmp_path):
    """diffusers and transformers write fp16 variants (sharded and not); they load into fp32 params."""
    import diffusers
    import transformers

    from landmark_controlnet.diffusion.clip import CLIPTextModel
    from landmark_controlnet.diffusion.unet import UNet2DConditionModel
    from landmark_controlnet.diffusion.vae import AutoencoderKL
    from tests.diffusion_parity import perturb

    unet = perturb(diffusers.UNet2DConditionModel(**TINY_UNET), seed=1).half()
    vae = perturb(diffusers.AutoencoderKL(**TINY_VAE), seed=3).half()
    clip = perturb(transformers.CLIPTextModel(transformers.CLIPTextConfig(**TINY_CLIP)), seed=2).half()
    unet.save_pretrained(tmp_path / "unet", variant="fp16", max_shard_size="100KB")
    vae.save_pretrained(tmp_path / "vae", variant="fp16")
    clip.save_pretrained(tmp_path / "text_encoder", variant="fp16", max_shard_size="40KB")
    assert (tmp_path / "text_encoder" / "model.safetensors.index.fp16.json").is_file()
    index = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}
    index.update(vae=["diffusers", "AutoencoderKL"], text_encoder=["transformers", "CLIPTextModel"])
    (tmp_path / "model_index.json").write_text(json.dumps(index))

    pipeline = loading.read_model_index(tmp_path)
    components = [
        ("unet", UNet2DConditionModel, unet),
        ("vae", AutoencoderKL, vae),
        ("text_encoder", CLIPTextModel, clip),
    ]
    for component, ours, theirs in components:
        assert pipeline.components[component] == ours.config_class.class_name
        model = from_pretrained(ours, tmp_path, subfolder=component, variant="fp16")
        reference = {  # under the Hub's names (transformers 5 drops CLIPTextModel's `text_model.`)
            ours.legacy_key(k): v.float().numpy()
            for k, v in theirs.state_dict().items()
            if not ours.ignore_unexpected(k)
        }
        assert_same_tensors(loaded(model), reference)
        assert {v.get_raw_value().dtype for _, v in weights.parameter_paths(model)} == {
            jnp.dtype(jnp.float32)
        }


# -- the Hub ------------------------------------------------------------------------------------------

HUB_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    from conditioners.errors import UserError
    from landmark_controlnet.diffusion import loading, weights
    from test_diffusion_loading import TinyModel

    repo, out = sys.argv[1], sys.argv[2]
    errors = {}

    def attempt(name, repo=repo, **kwargs):
        try:
            model = loading.from_pretrained(TinyModel, repo, **kwargs)
            np.savez(f"{out}/{name}.npz", **weights.torch_state_dict(model))
        except UserError as exc:
            errors[name] = f"{type(exc).__name__}: {exc}"

    attempt("main", subfolder="unet")
    attempt("branch", subfolder="unet", revision="v2")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        attempt("not_cached", subfolder="vae")
    else:
        attempt("no_revision", subfolder="unet", revision="nope")
        attempt("no_weights", subfolder="text_encoder")
        attempt("no_repo", repo="someone/absent", subfolder="unet")
    print(json.dumps(errors))
    """
)


def hub_env(hub: HubStandIn, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "HF_ENDPOINT": hub.endpoint,
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_TOKEN": TOKEN,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }


def publish(hub: HubStandIn, repo: str, folder: Path, prefix: str, revision: str = "main") -> None:
    for path in sorted(folder.iterdir()):
        hub.add_model_file(repo, f"{prefix}/{path.name}", path.read_bytes(), revision=revision)


def load_in_child(env: dict[str, str], out: Path) -> dict[str, str]:
    """Run HUB_SCRIPT; the models it loads land in `out`, the errors it met come back by name."""
    out.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", HUB_SCRIPT, "owner/pipe", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert TOKEN not in result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_hub_repo_loads_by_revision_and_subfolder_downloading_only_what_it_needs(tmp_path):
    """main is sharded (the index is fetched first); branch v2 adds a single file, which wins there."""
    main, branch = random_checkpoint(TinyConfig(), seed=5), random_checkpoint(TinyConfig(), seed=6)
    write_shards(write_config(tmp_path / "main"), main, shards=2)
    write_folder(tmp_path / "branch", branch)
    with HubStandIn(token=TOKEN) as hub:
        publish(hub, "owner/pipe", tmp_path / "main", "unet")
        hub.add_model_file("owner/pipe", "unet/diffusion_pytorch_model.bin", b"decoy: never downloaded")
        hub.add_model_file("owner/pipe", "vae/diffusion_pytorch_model.safetensors", b"decoy: other model")
        hub.add_model_file("owner/pipe", "text_encoder/config.json", b"{}")
        hub.add_model_file("owner/pipe", "text_encoder/model.safetensors", b"decoy")
        publish(hub, "owner/pipe", tmp_path / "branch", "unet", revision="v2")
        env = hub_env(hub, tmp_path)
        errors = load_in_child(env, tmp_path / "online")
        requested = list(hub.state.requests)
    assert_same_tensors(dict(np.load(tmp_path / "online" / "main.npz")), main)
    assert_same_tensors(dict(np.load(tmp_path / "online" / "branch.npz")), branch)
    assert set(errors) == {"no_revision", "no_weights", "no_repo"}
    assert "Hub repo owner/pipe" in errors["no_revision"] and "revision 'nope'" in errors["no_revision"]
    assert "no such revision" in errors["no_revision"]
    no_weights = errors["no_weights"]
    assert no_weights.startswith("MissingFileError") and "subfolder 'text_encoder'" in no_weights
    assert "diffusion_pytorch_model.safetensors" in no_weights
    assert "found instead: config.json, model.safetensors" in no_weights
    assert "someone/absent" in errors["no_repo"] and "repo not found" in errors["no_repo"]

    # The stand-in is gone: offline, both revisions load from the Hugging Face cache.
    offline = load_in_child({**env, "HF_HUB_OFFLINE": "1"}, tmp_path / "offline")
    assert_same_tensors(dict(np.load(tmp_path / "offline" / "main.npz")), main)
    assert_same_tensors(dict(np.load(tmp_path / "offline" / "branch.npz")), branch)
    assert set(offline) == {"not_cached"} and "could not be reached" in offline["not_cached"]

    downloads = [r.split(" ", 1)[1] for r in requested if "/resolve/" in r]
    assert not any(p.endswith(".bin") or "/vae/" in p for p in downloads), downloads
    assert any(p.endswith("/main/unet/diffusion_pytorch_model.safetensors.index.json") for p in downloads)
    assert not any(p.endswith("/v2/unet/diffusion_pytorch_model.safetensors.index.json") for p in downloads)


# -- streaming ----------------------------------------------------------------------------------------

# The kernel's high-water mark of this process's resident memory (VmHWM), reset to the current RSS
# before loading. resource.getrusage's ru_maxrss would not do: Linux carries it over fork and exec, so
# a child started by a big pytest process reports the parent's peak.
PEAK_SCRIPT = textwrap.dedent(
    """
    import json, re, sys
    import jax.numpy as jnp
    from landmark_controlnet.diffusion import loading
    from test_diffusion_loading import TinyModel

    def status(field):
        kib = re.search(field + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)
        return int(kib) * 1024

    jnp.zeros(1).block_until_ready()  # the runtime's own memory is not the loader's
    before = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    model = loading.from_pretrained(TinyModel, sys.argv[1])
    print(json.dumps({"peak_growth": status("VmHWM") - before}))
    """
)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_loading_holds_the_parameters_and_one_tensor_not_the_file_twice(tmp_path):
    """A 226 MB checkpoint: peak RSS grows by the parameters (1x) plus at most a tensor, well under 1.6x."""
    config = TinyConfig(channels=(1024, 1024, 1024, 1024), norm_num_groups=32)
    folder = write_config(tmp_path / "big", config)
    save_file(random_checkpoint(config, seed=7), str(folder / "diffusion_pytorch_model.safetensors"))
    size = (folder / "diffusion_pytorch_model.safetensors").stat().st_size
    assert size > 200e6
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    env["JAX_PLATFORMS"] = "cpu"
    result = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(folder)], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    growth = json.loads(result.stdout.strip().splitlines()[-1])["peak_growth"]
    assert size * 0.9 < growth < 1.6 * size, (growth / size, size)


# -- single-file checkpoints --------------------------------------------------------------------------


def test_single_file_conversion_refuses_pickles_and_names_the_extra_it_needs(tmp_path, monkeypatch):
    ckpt = tmp_path / "v1-5.ckpt"
    ckpt.write_bytes(b"pickle")
    with pytest.raises(PickleRefusedError, match="allow_pickle=True"):
        loading.convert_single_file(ckpt, tmp_path / "out")
    with pytest.raises(LoadingError, match="sdxl="):
        loading.convert_single_file(ckpt, tmp_path / "out", allow_pickle=True)
    with pytest.raises(MissingFileError, match="absent.safetensors"):
        loading.convert_single_file(tmp_path / "absent.safetensors", tmp_path / "out")

    checkpoint = tmp_path / "sdxl.safetensors"
    save_file({"conditioner.embedders.1.model.ln_final.weight": np.ones(2, np.float32)}, str(checkpoint))
    assert loading._single_file_is_sdxl(checkpoint, None, pickled=False)
    monkeypatch.setitem(sys.modules, "diffusers", None)  # as if the train extra were not installed
    with pytest.raises(MissingExtraError, match=r"landmark-controlnet\[train\]"):
        loading.convert_single_file(checkpoint, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bfloat16_numpy_arrays_round_trip_through_safetensors(tmp_path):
    """The loader relies on numpy knowing bfloat16 (ml_dtypes) for safe_open(framework="numpy")."""
    values = np.array([1.0, -2.5, 3.140625], dtype=ml_dtypes.bfloat16)
    save_file({"x": values}, str(tmp_path / "x.safetensors"))
    with SafetensorsSource([tmp_path / "x.safetensors"]) as source:
        read = source.get("x")
    assert read.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(read.astype(np.float32), values.astype(np.float32))
