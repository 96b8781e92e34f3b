"""`spiga68` and `animal_pose` end to end, with weights the tests make (see detector_weights.py)."""

from __future__ import annotations

import datetime
import shutil

import numpy as np
import pytest
import torch
from detector_weights import write_random_animal_checkpoint

import conditioners
from conditioners import Detection
from conditioners._openpifpaf import ANIMALPOSE_WEIGHTS, UnsafeCheckpointError
from conditioners._spiga import SPIGA_WEIGHTS, _import_spiga
from conditioners.weights import WeightsNotFoundError

TWO_FACES = "faces/3ddfa_trump_hillary.jpg"
CAT = "animals/mmpose_animalpose_ca110.jpg"


@pytest.fixture()
def no_cuda(monkeypatch):
    """Any attempt to move a tensor or module to CUDA fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("CUDA was touched")

    monkeypatch.setattr(torch.Tensor, "cuda", refuse)
    monkeypatch.setattr(torch.nn.Module, "cuda", refuse)


@pytest.fixture()
def empty_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    for variable in (SPIGA_WEIGHTS.env_var, ANIMALPOSE_WEIGHTS.env_var):
        monkeypatch.delenv(variable, raising=False)
    return tmp_path


def test_spiga68_finds_each_face_and_gives_68_points_on_cpu(spiga_weights, data_dir, no_cuda):
    with conditioners.get("spiga68", weights=str(spiga_weights)) as faces:
        result = faces(data_dir / "images" / TWO_FACES)
    detection = result.detection
    assert detection.skipped is None and len(detection.instances) == 2
    for instance in detection.instances:
        assert instance.kind == "face" and instance.points.shape == (68, 4)
        assert 0.5 <= instance.score <= 1
        assert np.isfinite(instance.xy).all()
    assert Detection.from_json(detection.to_json()).instances[0].points.shape == (68, 4)
    assert result.to_array().shape == (detection.height, detection.width, 3)


def test_spiga68_matches_spigas_own_framework(spiga_weights, data_dir, monkeypatch):
    """Our CPU framework against SPIGA's own, its CUDA moves made no-ops, on the same boxes."""
    from conditioners.images import load_image

    with conditioners.get("spiga68", weights=str(spiga_weights)) as faces:
        pixels = load_image(data_dir / "images" / TWO_FACES, long_side=512).pixels
        boxes = faces.detector.face_boxes(pixels)
        ours = faces.detector(pixels)
    framework_class, model_config, _, _ = _import_spiga()
    monkeypatch.setattr(torch.nn.Module, "cuda", lambda self, *a, **k: self)
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    config = model_config("300wpublic", load_model_url=False)
    config.model_weights_path = str(spiga_weights.parent)
    upstream = framework_class(config).inference(pixels[:, :, ::-1].copy(), [xywh for xywh, _ in boxes])
    assert len(ours) == len(boxes) == 2
    for (points, _), theirs in zip(ours, upstream["landmarks"], strict=True):
        np.testing.assert_allclose(points, np.asarray(theirs), rtol=1e-4, atol=1e-3)


def test_spiga68_weights_from_the_environment_and_clear_errors(spiga_weights, empty_caches, monkeypatch):
    reason = conditioners.conditioner_class("spiga68").unavailable_reason()
    assert reason and "spiga_300wpublic.pt not found locally" in reason
    monkeypatch.setenv("SPIGA_WEIGHTS", str(spiga_weights))
    assert conditioners.conditioner_class("spiga68").unavailable_reason() is None
    with conditioners.get("spiga68") as faces:
        assert faces.detector.framework.model.training is False
    missing = empty_caches / "nowhere" / "spiga_300wpublic.pt"
    with pytest.raises(WeightsNotFoundError, match=f"{missing} \\(given\\) does not exist"):
        conditioners.get("spiga68", weights=str(missing)).detector  # noqa: B018


def test_animal_pose_draws_every_animal_the_network_finds(animal_weights, data_dir, no_cuda):
    with conditioners.get("animal_pose", weights=str(animal_weights)) as animals:
        result = animals(data_dir / "images" / CAT)
        strict = conditioners.get("animal_pose", weights=str(animal_weights), min_score=0.99)
        assert strict(data_dir / "images" / CAT).skipped == "no_detection"
    instances = result.detection.instances
    assert result.skipped is None and len(instances) > 1  # the rigged heads fire all over the image
    for instance in instances:
        assert instance.kind == "animal" and instance.points.shape == (20, 4) and instance.score >= 0.2
    drawn = result.to_array()
    for instance in instances:  # every animal is drawn, not only the first
        x, y = np.round(instance.xy[np.argmax(instance.visibility)]).astype(int)
        assert drawn[y, x].any(), f"animal at {(x, y)} not drawn"


def test_animal_pose_reads_the_torch_checkpoint_cache(animal_weights, empty_caches, data_dir):
    animals = conditioners.conditioner_class("animal_pose")
    assert "not found locally" in animals.unavailable_reason()
    with pytest.raises(WeightsNotFoundError, match="checkpoints/shufflenetv2k30-210511-120906-animal"):
        animals().detector  # noqa: B018
    cached = empty_caches / "torch" / "hub" / "checkpoints" / ANIMALPOSE_WEIGHTS.filename
    cached.parent.mkdir(parents=True)
    shutil.copyfile(animal_weights, cached)
    assert animals.unavailable_reason() is None
    with animals() as detector:
        assert detector(data_dir / "images" / CAT).detection.instances


def test_animal_checkpoint_naming_other_objects_is_refused_unless_trusted(tmp_path, data_dir):
    odd = write_random_animal_checkpoint(
        tmp_path / "odd.pkl", meta={"created": datetime.datetime(2021, 5, 11)}
    )
    with pytest.raises(UnsafeCheckpointError, match=r"odd\.pkl: .*datetime\.datetime.*trust_checkpoint=true"):
        conditioners.get("animal_pose", weights=str(odd)).detector  # noqa: B018
    with conditioners.get("animal_pose", weights=str(odd), trust_checkpoint=True) as animals:
        assert animals(data_dir / "images" / CAT).detection.instances
