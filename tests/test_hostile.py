"""The hostile corpus (tests/hostile_corpus.py) through every conditioner, by `condition` and by a build.

Nothing may end a run; every input is accounted for with a known skip reason; unreadable files say
why; images too small for a detector are skipped before it, never reported as its error.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hostile_corpus import DAMAGED, READABLE, UNREADABLE, kind_of, write_hostile_corpus
from PIL import Image, ImageOps

import conditioners
from builders import BuildSettings
from builders.run import run_build
from builders.sources.folder import FolderSource
from conditioners import Detection, SkipReason
from conditioners.images import scaled_size
from landmark_controlnet.condition import ConditionRequest, run_condition

CORPUS_PHOTO = "hands/mmpose_onehand10k_33.jpg"  # a hand and a face: most detectors find something
BUILT_INS = [
    "hand_standard",
    "hand_encoded",
    "holistic",
    "face_pupils",
    "spiga68",
    "animal_pose",
    "hand_depth_mask",
]
SKIP_REASONS = {str(reason) for reason in SkipReason}


@pytest.fixture(scope="session")
def hostile(tmp_path_factory, data_dir) -> tuple[Path, dict[str, str]]:
    folder = tmp_path_factory.mktemp("hostile")
    return folder, write_hostile_corpus(folder, data_dir / "images" / CORPUS_PHOTO)


def of_kind(corpus: dict[str, str], kind: str) -> list[str]:
    return [name for name, description in corpus.items() if kind_of(description) == kind]


def detector_side(conditioner: conditioners.Conditioner, path: Path) -> int:
    """The shorter side of the pixels the detector would get (after the reduction for detection)."""
    with Image.open(path) as image:
        return min(scaled_size(image.size, conditioner.detect_long_side))


def upright_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return ImageOps.exif_transpose(image).size


def test_the_corpus_is_what_it_says(hostile):
    folder, corpus = hostile
    assert 40 <= len(corpus) <= 60 and sorted(p.name for p in folder.iterdir()) == sorted(corpus)
    assert len({Path(name).stem for name in corpus}) == len(corpus)
    assert {kind_of(d) for d in corpus.values()} == {UNREADABLE, READABLE, DAMAGED}
    assert Image.open(folder / "gray16.png").mode == "I;16"
    assert Image.open(folder / "cmyk.jpg").mode == "CMYK"
    assert (folder / "bomb.png").stat().st_size < 1000
    assert upright_size(folder / "exif_6.jpg") == upright_size(folder / "base.jpg")


@pytest.mark.parametrize("name", BUILT_INS)
def test_condition_accounts_for_every_hostile_file(name, hostile, conditioner_options, tmp_path):
    folder, corpus = hostile
    options = conditioner_options(name)
    assert run_condition(ConditionRequest((name,), (str(folder),), tmp_path / "out", options)) == 0
    out = tmp_path / "out" / name
    found = {file: Detection.from_json((out / f"{Path(file).stem}.json").read_text()) for file in corpus}
    assert {d.skipped for d in found.values()} <= SKIP_REASONS | {None}
    for file in of_kind(corpus, UNREADABLE):
        assert found[file].skipped == SkipReason.UNREADABLE and found[file].skip_message, file
        assert not (out / f"{Path(file).stem}.png").exists(), file
    errors = {file: d.skip_message for file, d in found.items() if d.skipped == SkipReason.DETECTOR_ERROR}
    assert not errors, f"{name}: the detector raised on {errors}"
    conditioner = conditioners.get(name, **options)  # its settings only: no detector is built
    for file in of_kind(corpus, READABLE):
        detection = found[file]
        assert detection.skipped != SkipReason.UNREADABLE, f"{file}: {detection.skip_message}"
        assert detection.size == upright_size(folder / file), file
        assert (out / f"{Path(file).stem}.png").exists(), file
        if detector_side(conditioner, folder / file) < conditioner.min_workable_side:
            assert detection.skipped == SkipReason.IMAGE_TOO_SMALL, file


def write_recipe(builder: Path, name: str, options: dict[str, str]) -> Path:
    lines = ["[source]", 'type = "folder"', "[conditioner]", f"name = {json.dumps(name)}"]
    if options:  # JSON strings are TOML basic strings
        lines += ["[conditioner.options]", *(f"{k} = {json.dumps(v)}" for k, v in options.items())]
    lines += ["[captioner]", 'type = "none"']
    builder.mkdir(parents=True)
    (builder / "recipe.toml").write_text("\n".join(lines) + "\n")
    return builder


@pytest.mark.parametrize("name", BUILT_INS)
def test_a_build_counts_every_hostile_file(name, hostile, conditioner_options, tmp_path):
    folder, corpus = hostile
    builder = write_recipe(tmp_path / "builder", name, conditioner_options(name))
    report = run_build(str(builder), str(folder), BuildSettings(shard_size=16), progress=False)
    listed = [item.source_id for item in FolderSource(folder)]
    assert sorted(listed) == sorted(corpus)  # every file of the corpus has an image suffix: all are listed
    assert report.items == len(listed)
    assert report.rows + sum(report.skipped.values()) == report.items
    assert set(report.skipped) <= SKIP_REASONS and SkipReason.DETECTOR_ERROR not in report.skipped
    unreadable = [file for file in listed if kind_of(corpus[file]) == UNREADABLE]
    damaged = [file for file in listed if kind_of(corpus[file]) == DAMAGED]
    assert len(unreadable) <= report.skipped.get(SkipReason.UNREADABLE, 0) <= len(unreadable) + len(damaged)
    card = (builder / "README.md").read_text()
    assert all(f"`{reason}`" in card for reason in report.skipped), card
