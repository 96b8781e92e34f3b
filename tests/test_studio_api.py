"""The Studio's application layer: paths confined to the data root, and endpoints that give what the
CLI gives for the same inputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from builders.rows import SplitNotFoundError, open_dataset
from conditioners import Detection, OptionError, UserError
from conditioners.locations import NoSuchPathError
from landmark_controlnet.generate import GenerateRequest
from landmark_controlnet.studio import (
    DataRoot,
    OutsideDataRootError,
    condition,
    confined_generate_request,
    dataset_rows,
)

CLI = Path(sys.executable).with_name("landmark-controlnet")
HAND_PHOTO = "images/hands/mediapipe_gesture_four_15a73593.jpg"


# -- confinement ---------------------------------------------------------------------------------
@pytest.fixture
def root(tmp_path: Path) -> DataRoot:
    inside = tmp_path / "root"
    (inside / "photos").mkdir(parents=True)
    (inside / "photos" / "a.jpg").write_bytes(b"")
    (tmp_path / "secret.txt").write_text("outside")
    (inside / "escape").symlink_to(tmp_path / "secret.txt")
    return DataRoot(inside)


def test_a_path_inside_the_root_is_accepted(root):
    assert root.resolve("photos/a.jpg") == root.directory / "photos" / "a.jpg"
    assert root.resolve(str(root.directory / "photos" / "a.jpg")) == root.directory / "photos" / "a.jpg"
    assert root.resolve("photos/../photos/a.jpg") == root.directory / "photos" / "a.jpg"
    assert root.locate("photos") == root.directory / "photos"


@pytest.mark.parametrize("typed", ["../secret.txt", "photos/../../secret.txt", "escape", "/etc/passwd"])
def test_paths_leading_outside_the_root_are_refused(root, typed):
    for refuse in (root.resolve, root.locate):
        with pytest.raises(OutsideDataRootError) as raised:
            refuse(typed)
        message = str(raised.value)
        assert "\n" not in message and typed in message and str(root.directory) in message


def test_hub_ids_pass_through_and_missing_paths_are_named(root):
    assert root.locate("user/dataset") == "user/dataset"
    assert (
        root.locate("hand_standard_builder") == "hand_standard_builder"
    )  # a builder name, for `open_dataset`
    for path_like in ("photos/missing", "./user/dataset", "a/b/c"):
        with pytest.raises(NoSuchPathError, match=f"^{path_like}: no such folder in the data root"):
            root.locate(path_like)


def test_generate_requests_are_confined_before_any_model_loads(root):
    request = GenerateRequest(
        base_model="owner/base", controlnet="photos", pose="data#3", prompt="a hand", out_dir=Path("out")
    )
    confined = confined_generate_request(request, root)
    assert confined.base_model == "owner/base" and confined.controlnet == str(root.directory / "photos")
    assert confined.pose == f"{root.directory / 'data'}#3" and confined.out_dir == root.directory / "out"
    for field, value in [("out_dir", Path("../out")), ("pose", "../x.jpg"), ("pose", "../data#0")]:
        with pytest.raises(OutsideDataRootError):
            confined_generate_request(GenerateRequest(**{**request.__dict__, field: value}), root)


# -- condition -----------------------------------------------------------------------------------
def test_condition_gives_what_the_cli_writes(data_dir, manifest, tmp_path):
    assert HAND_PHOTO in {row["file"] for row in manifest}
    photo = data_dir / HAND_PHOTO
    result = condition(photo, "hand_standard", {"max_num_hands": 2})
    run = subprocess.run(
        [str(CLI), "condition", str(photo), "--conditioner", "hand_standard", "--option", "max_num_hands=2",
         "--out-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    written = tmp_path / "hand_standard" / photo.stem
    expected = Image.open(written.with_suffix(".png"))
    assert np.array_equal(np.asarray(result.image.convert("RGB")), np.asarray(expected.convert("RGB")))
    ours, theirs = (
        Detection.from_json(result.detection_json),
        Detection.from_file(written.with_suffix(".json")),
    )
    assert result.instances == len(theirs.instances) > 0 and result.skipped is None
    for mine, cli in zip(ours.instances, theirs.instances, strict=True):
        assert mine.kind == cli.kind and np.array_equal(mine.points, cli.points, equal_nan=True)
    assert result.detection_json == written.with_suffix(".json").read_text()  # byte for byte


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_num_hands": "two"}, "max_num_hands='two'.* expects int"),
        ({"colour": 1}, "takes no option colour"),
    ],
)
def test_a_bad_option_is_a_one_line_error(data_dir, options, message):
    with pytest.raises(OptionError, match=message) as raised:
        condition(data_dir / HAND_PHOTO, "hand_standard", options)
    assert "\n" not in str(raised.value)


def test_an_unreadable_photo_is_a_one_line_error(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(UserError, match="broken.jpg: unreadable") as raised:
        condition(broken, "hand_standard", {})
    assert "\n" not in str(raised.value)


# -- dataset rows --------------------------------------------------------------------------------
def test_dataset_rows_page_through_the_rows_open_dataset_gives(hand_build):
    root = DataRoot(hand_build.root)
    table = open_dataset(str(hand_build.root / "builder"), "train")
    assert len(table) == hand_build.rows > 3
    first, rest = dataset_rows("builder", "train", 0, 2, root), dataset_rows("builder", "train", 2, 100, root)
    rows = first + rest
    assert len(first) == 2 and [row.index for row in rows] == list(range(len(table)))
    for row, record in zip(rows, table, strict=True):
        assert row.caption == record["caption"] and row.landmarks == record["landmarks"]
        assert np.array_equal(np.asarray(row.photo), np.asarray(record["image"].convert("RGB")))
        conditioning = record["conditioning_image"].convert("RGB")
        assert np.array_equal(np.asarray(row.conditioning_image), np.asarray(conditioning))
        kinds = [instance.kind for instance in Detection.from_json(record["landmarks"]).instances]
        assert row.instances == len(kinds) > 0 and sum(row.kinds.values()) == len(kinds)
        assert set(row.kinds) == set(kinds) <= {"left_hand", "right_hand", "hand"}
    assert dataset_rows("builder", "train", len(table), 5, root) == []


@pytest.mark.parametrize(
    ("split", "offset", "count", "error", "message"),
    [
        ("validation", 0, 5, SplitNotFoundError, "no 'validation' split; its splits: train"),
        ("train", 0, -1, OptionError, "count -1: between 1 and 100"),
        ("train", -2, 5, OptionError, "offset -2: the first row is 0"),
        ("train", 1000, 5, OptionError, "offset 1000 is past the end"),
    ],
)
def test_dataset_row_mistakes_are_one_line_errors(hand_build, split, offset, count, error, message):
    with pytest.raises(error, match=message) as raised:
        dataset_rows("builder", split, offset, count, DataRoot(hand_build.root))
    assert "\n" not in str(raised.value)


def test_dataset_locations_outside_the_root_are_refused(hand_build):
    with pytest.raises(OutsideDataRootError):
        dataset_rows(str(hand_build.root / "builder"), "train", 0, 1, DataRoot(hand_build.root / "photos"))


# -- what stays loaded ---------------------------------------------------------------------------
def test_detectors_are_built_once_and_reused(data_dir):
    from landmark_controlnet.loaded import Loaded

    loaded = Loaded()
    with loaded.detector("hand_encoded", {}) as first:
        pass
    condition(data_dir / HAND_PHOTO, "hand_encoded", {}, loaded=loaded)
    with loaded.detector("hand_encoded", {}) as again, loaded.detector("hand_standard", {}) as other:
        assert again is first and other is not first
    loaded.close()


def test_the_app_is_built_without_importing_jax(tmp_path):
    """JAX and the models load only when Generate is first used."""
    check = (
        "import sys; from landmark_controlnet.studio.app import StudioSettings, build_app; "
        f"build_app(StudioSettings({str(tmp_path)!r})); print('jax' in sys.modules, 'flax' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-2:] == ["False", "False"]
