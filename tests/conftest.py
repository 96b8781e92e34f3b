"""Shared fixtures: the real photos of ../shared/data, read in place."""

from __future__ import annotations

import csv
import json
import os
import zipfile
from pathlib import Path

import pytest

from conditioners.torchvision_guard import install_import_guard

# Before any test module imports diffusers or transformers, which import torchvision (see the guard).
install_import_guard()

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LANDMARK_CONTROLNET_DATA", REPO.parent / "shared" / "data")).resolve()


def pytest_configure(config: pytest.Config) -> None:
    if not (DATA / "MANIFEST.csv").exists() and os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        raise pytest.UsageError(f"test photos missing: {DATA}/MANIFEST.csv (required in CI)")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA / "MANIFEST.csv").exists():
        pytest.skip(f"test photos not found at {DATA}")
    return DATA


@pytest.fixture(scope="session")
def manifest(data_dir: Path) -> list[dict[str, str]]:
    with open(data_dir / "MANIFEST.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="session")
def images(data_dir: Path):
    """`images("hands")` -> sorted paths of the photos in images/hands."""
    suffixes = {".jpg", ".jpeg", ".png"}

    def list_images(category: str) -> list[Path]:
        return sorted(p for p in (data_dir / "images" / category).iterdir() if p.suffix.lower() in suffixes)

    return list_images


@pytest.fixture(scope="session")
def annotation(data_dir: Path):
    def load(image_path: Path) -> dict:
        rel = image_path.relative_to(data_dir / "images").with_suffix(".json")
        return json.loads((data_dir / "annotations" / "per_image" / rel).read_text())

    return load


@pytest.fixture(scope="session")
def hand_build(tmp_path_factory, data_dir):
    """One build of builder_fixtures' hand photo folder for the whole session (each build detects
    and encodes every photo again); tests work on their own `hand_build.copy_to(folder)`."""
    import builder_fixtures as fx

    return fx.build_hand_photos(data_dir, tmp_path_factory.mktemp("hand_build"))


@pytest.fixture(scope="session")
def spiga_weights(tmp_path_factory) -> Path:
    from detector_weights import write_random_spiga_weights

    return write_random_spiga_weights(tmp_path_factory.mktemp("spiga") / "spiga_300wpublic.pt")


@pytest.fixture(scope="session")
def animal_weights(tmp_path_factory) -> Path:
    from detector_weights import write_random_animal_checkpoint

    return write_random_animal_checkpoint(tmp_path_factory.mktemp("animal") / "animal.pkl.epoch400")


@pytest.fixture(scope="session")
def conditioner_options(request):
    """`conditioner_options(name)` -> the options that run `name` here (the tests' random weights
    for the conditioners whose real weights cannot be downloaded), for code that builds its own."""
    weights = {"spiga68": "spiga_weights", "animal_pose": "animal_weights"}

    def options(name: str) -> dict[str, str]:
        return {"weights": str(request.getfixturevalue(weights[name]))} if name in weights else {}

    return options


@pytest.fixture(scope="session")
def conditioner_cache(request):
    """One conditioner per name for the whole session (detectors are expensive to build).

    Conditioners whose weights cannot be downloaded here get random weights made by the tests.
    """
    import conditioners

    made: dict[str, conditioners.Conditioner] = {}
    weights = {"spiga68": "spiga_weights", "animal_pose": "animal_weights"}

    def get(name: str) -> conditioners.Conditioner:
        if name not in made:
            options = {"weights": str(request.getfixturevalue(weights[name]))} if name in weights else {}
            made[name] = conditioners.get(name, **options)
        return made[name]

    yield get
    for conditioner in made.values():
        conditioner.close()


HAND_BUNDLE = {  # name in the bundle: the solutions runtime's model
    "hand_detector.tflite": "palm_detection/palm_detection_full.tflite",
    "hand_landmarks_detector.tflite": "hand_landmark/hand_landmark_full.tflite",
}


@pytest.fixture(scope="session")
def hand_bundle(tmp_path_factory) -> Path:
    """A Tasks `hand_landmarker.task` assembled from the models the solutions runtime ships."""
    import mediapipe

    modules = Path(mediapipe.__file__).parent / "modules"
    bundle = tmp_path_factory.mktemp("tasks") / "hand_landmarker.task"
    with zipfile.ZipFile(bundle, "w", zipfile.ZIP_STORED) as archive:
        for name, source in HAND_BUNDLE.items():
            archive.write(modules / source, name)
    return bundle
