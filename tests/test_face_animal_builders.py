"""The `face_synthetics_spiga` and `animal_pose` builder folders, with the tests' random weights."""

from __future__ import annotations

import json

import builder_fixtures as fx
import pytest

from builders import BuildSettings
from builders.rows import open_dataset
from builders.run import run_build


def built(name: str, source: str, output, settings: BuildSettings | None = None):
    report = run_build(name, source, settings or BuildSettings(), output=output, progress=False)
    return report, open_dataset(str(output))


def test_face_synthetics_spiga_rows_keep_both_landmark_sets(tmp_path, data_dir, spiga_weights, monkeypatch):
    monkeypatch.setenv("SPIGA_WEIGHTS", str(spiga_weights))
    source = fx.face_synthetics(data_dir, tmp_path)
    report, rows = built("face_synthetics_spiga", str(source), tmp_path / "out")
    assert report.rows == len(rows) == 2 and not report.skipped
    assert {"image", "conditioning_image", "caption", "landmarks", "gt_landmarks"} <= set(rows.features)
    row = rows[0]
    assert row["caption"] == "a close-up photo of a face"
    detection = json.loads(row["landmarks"])
    assert detection["conditioner"] == "spiga68"
    assert [len(instance["points"]) for instance in detection["instances"]] == [68]
    assert len(row["gt_landmarks"]) == 70
    assert row["conditioning_image"].size == row["image"].size
    card = (tmp_path / "out" / "README.md").read_text()
    assert "FaceSynthetics SPIGA ControlNet" in card and (tmp_path / "out" / "preview.png").exists()


@pytest.mark.parametrize("layout", ["folder", "img2dataset"])
def test_animal_pose_builds_from_a_folder_or_img2dataset(
    layout, tmp_path, data_dir, animal_weights, monkeypatch
):
    monkeypatch.setenv("ANIMALPOSE_WEIGHTS", str(animal_weights))
    if layout == "folder":
        source = fx.animal_folder(data_dir, tmp_path)
    else:
        source = fx.img2dataset_tar(data_dir, tmp_path, fx.ANIMAL_PHOTOS)
    report, rows = built("animal_pose", str(source), tmp_path / "out")
    assert report.rows == len(rows) == len(fx.ANIMAL_PHOTOS)
    assert report.skipped == ({"unreadable": 1} if layout == "folder" else {})
    detection = json.loads(rows[0]["landmarks"])
    assert detection["conditioner"] == "animal_pose" and len(detection["instances"]) > 1
    assert all(len(instance["points"]) == 20 for instance in detection["instances"])
    captions = set(rows["caption"])
    assert ("a bulldog" in captions) == (layout == "folder")
    assert "url" in rows.features if layout == "img2dataset" else "url" not in rows.features
    assert "Animal pose ControlNet" in (tmp_path / "out" / "README.md").read_text()
