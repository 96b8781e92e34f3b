"""Hint boxes (a source's hand boxes) from the sources, through the build engines, to the conditioner,
and the hinted hands no pass found (`hint_not_found`) counted in the shards, the report and the card."""

from __future__ import annotations

import json
import math
import pickle
import subprocess
import sys
from pathlib import Path

import builder_fixtures as fx
import hint_recorder
import pytest
from hostile_corpus import orientations
from PIL import Image

import conditioners
from builders import BuildSettings, make_source
from builders.rows import open_dataset
from builders.run import run_build
from builders.sources import SourceItem
from builders.worker import Chunk
from conditioners import HintBox

CLI = Path(sys.executable).with_name("landmark-controlnet")
NAN = float("nan")


@pytest.fixture(autouse=True)
def _hint_recorder():
    with hint_recorder.registered():
        yield


# -- the sources ---------------------------------------------------------------------------------
def test_items_with_hints_pickle_as_the_engines_send_them():
    from ray import cloudpickle

    chunk = Chunk(
        3, [SourceItem("a", "a.jpg", hints=[HintBox(1, 2, 30, 40, "peace")]), SourceItem("b", b"x")]
    )
    for module in (pickle, cloudpickle):  # the local engine's processes, Ray's actors
        copy = module.loads(module.dumps(chunk))
        assert copy == chunk and copy.items[0].hints[0].label == "peace" and copy.items[1].hints == []


@pytest.mark.parametrize("v2", [False, True])
def test_hagrid_boxes_become_hints_in_pixels_of_the_upright_photo(tmp_path, data_dir, v2):
    root = fx.hagrid(data_dir, tmp_path, v2=v2)
    annotations = root / ("hagrid_annotations/train" if v2 else "ann_train_val") / "peace.json"
    records = json.loads(annotations.read_text())
    image_id = next(i for i in records if not i.startswith("ffffffff"))
    records[image_id]["bboxes"] = [
        [0.1, 0.2, 0.3, 0.4],
        [0.5, 0.5, 0.1],  # wrong length
        ["0.1", 0.2, 0.3, 0.4],  # not numbers
        [0.2, NAN, 0.1, 0.1],
        None,
        [0.6, 0.1, 0.2, 0.2],
    ]
    records[image_id]["labels"] = ["peace", "peace", "peace", "peace", "peace", "no_gesture"]
    annotations.write_text(json.dumps(records))
    items = {item.extra["gesture"]: item for item in make_source("hagrid", str(root), "train")}
    width, height = Image.open(data_dir / "images" / fx.HAGRID_GESTURES["peace"]).size  # 306 x 411
    peace = items["peace"]
    assert [h.label for h in peace.hints] == ["peace", "no_gesture"]  # no_gesture hands too
    assert [[h.x0, h.y0, h.x1, h.y1] for h in peace.hints] == [
        pytest.approx([0.1 * width, 0.2 * height, 0.4 * width, 0.6 * height]),
        pytest.approx([0.6 * width, 0.1 * height, 0.8 * width, 0.3 * height]),
    ]
    assert peace.extra["labels"] == records[image_id]["labels"]  # the column is as it was
    boxes = peace.extra["bboxes"]  # one per box, aligned with `labels`; malformed ones NaN
    assert len(boxes) == 6 and boxes[0] == [0.1, 0.2, 0.3, 0.4] and boxes[5] == [0.6, 0.1, 0.2, 0.2]
    assert all(math.isnan(v) for box in boxes[1:5] for v in box)
    heart_size = Image.open(data_dir / "images" / fx.HAGRID_GESTURES["heart"]).size
    assert items["heart"].hints == [HintBox.from_normalised_xywh([0.3, 0.2, 0.2, 0.3], heart_size, "peace")]
    features = make_source("hagrid", str(root), "train").features()
    assert features["bboxes"].feature.length == 4


def test_folder_hand_boxes_from_metadata(tmp_path, data_dir):
    folder = tmp_path / "photos"
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        fx.link(data_dir / "images" / fx.HAND_PHOTOS[0], folder / name)
    lines = [
        {
            "file_name": "a.jpg",
            "text": "a",
            "hand_boxes": [[1, 2, 30, 40], {"box": [5, 6, 70, 80], "label": "ok"}],
        },
        {
            "file_name": "b.jpg",
            "hand_boxes": [[1, 2, 3], {"label": "no box"}, "text", [1, "2", 3, 4], [0, 0, 9, 9]],
        },
        {"file_name": "c.jpg", "hand_boxes": "not a list"},
    ]
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    items = {item.source_id: item for item in make_source("folder", str(folder))}
    assert items["a.jpg"].hints == [HintBox(1, 2, 30, 40), HintBox(5, 6, 70, 80, "ok")]
    assert items["a.jpg"].caption == "a"
    assert items["b.jpg"].hints == [HintBox(0, 0, 9, 9)]  # the malformed entries left out
    assert items["c.jpg"].hints == []


# -- through the engines, to the conditioner ------------------------------------------------------
# Hand boxes in pixels of the upright photos, as a folder source gives them: bad ones too (NaN, empty,
# outside), which reach the conditioner and are not searched. `background` boxes hold no hand.
HINTED_PHOTOS = {
    "landscape.jpg": (  # hagrid_tile11_prayer, 780 x 437
        [330, 150, 460, 300],
        {"box": [5, 5, 60, 60], "label": hint_recorder.NOT_THERE},  # cut off by a centre crop
        {"box": [NAN, 10, 50, 50], "label": "nan"},
        {"box": [100, 100, 100, 180], "label": "empty"},
        {"box": [2000, 2000, 2100, 2100], "label": "outside"},
    ),
    "portrait.jpg": (  # mediapipe_gesture_four, 384 x 512
        {"box": [228, 242, 293, 336], "label": "four"},
        {"box": [150, 420, 250, 500], "label": hint_recorder.NOT_THERE},
    ),
    "rotated.jpg": (  # mmpose_panoptic, 1280 x 720 upright, stored 720 x 1280 with EXIF orientation 6
        {"box": [704, 191, 767, 240], "label": "bow hand"},
        {"box": [744, 315, 797, 385], "label": "fingerboard hand"},
    ),
}


def hinted_folder(data: Path, root: Path) -> Path:
    hands = data / "images" / "hands"
    folder = root / "photos"
    fx.link(hands / "hagrid_tile11_prayer.jpg", folder / "landscape.jpg")
    fx.link(hands / "mediapipe_gesture_four_15a73593.jpg", folder / "portrait.jpg")
    upright = Image.open(hands / "mmpose_panoptic_005880453_01.jpg").convert("RGB")
    (folder / "rotated.jpg").write_bytes(dict((n, d) for n, _, d in orientations(upright))["exif_6.jpg"])
    lines = [{"file_name": name, "hand_boxes": list(boxes)} for name, boxes in HINTED_PHOTOS.items()]
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return folder


def as_hint(entry) -> HintBox:
    return HintBox(*entry) if isinstance(entry, list) else HintBox(*entry["box"], label=entry["label"])


def expected_hints(name: str, upright: tuple[int, int], side: int | None) -> tuple[list[HintBox], tuple]:
    """The hints of photo `name` in the pixels of the picture the conditioner sees, worked out here:
    the photo itself, or its short side resized to `side` and centre-cropped to a square; and that
    picture's size."""
    hints = [as_hint(entry) for entry in HINTED_PHOTOS[name]]
    if not side:
        return hints, upright
    width, height = upright
    resized = (round(width * side / min(upright)), round(height * side / min(upright)))
    (sx, sy), left, top = (
        (resized[0] / width, resized[1] / height),
        (resized[0] - side) // 2,
        (resized[1] - side) // 2,
    )
    moved = [
        HintBox(h.x0 * sx - left, h.y0 * sy - top, h.x1 * sx - left, h.y1 * sy - top, h.label) for h in hints
    ]
    return moved, (side, side)


def assert_same_hints(seen: list[dict], expected: list[HintBox], tolerance: float) -> None:
    assert [h["label"] for h in seen] == [h.label for h in expected]
    for got, want in zip(seen, expected, strict=True):
        want_box = [want.x0, want.y0, want.x1, want.y1]
        for a, b in zip(got["box"], want_box, strict=True):
            assert (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tolerance, (got, want)


ENGINES = {
    "local": ("local", 1, None),
    "local_2_processes": ("local", 2, None),
    "ray": ("ray", 2, None),
    "local_resized_512": ("local", 1, 512),
}


@pytest.mark.parametrize("engine, num_proc, side", list(ENGINES.values()), ids=list(ENGINES))
def test_hints_reach_the_conditioner_in_the_pixels_it_sees(
    tmp_path, data_dir, monkeypatch, engine, num_proc, side
):
    hint_recorder.install_plugin(tmp_path / "plugin", monkeypatch)  # for spawned processes and Ray's
    photos = hinted_folder(data_dir, tmp_path)
    extra = f"[image]\nresize_short_side = {side}\n" if side else ""
    builder = fx.folder_recipe(tmp_path, conditioner=hint_recorder.NAME, extra=extra)
    settings = BuildSettings(shard_size=2, num_proc=num_proc)  # two shards: counts are summed
    if engine == "ray":
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            report = run_build(str(builder), str(photos), settings, engine="ray", progress=False)
        finally:
            ray.shutdown()
    else:
        report = run_build(str(builder), str(photos), settings, progress=False)
    rows = open_dataset(str(builder))
    assert report.rows == len(rows) == 3 and report.skipped == {}
    usable = not_found = 0
    for row in rows:
        detection = conditioners.Detection.from_json(row["landmarks"])
        height, width = row["original_size"]
        expected, size = expected_hints(row["source_id"], (width, height), side)
        assert detection.size == size
        assert_same_hints(detection.extra["hints_seen"], expected, tolerance=1.0 if side else 1e-6)
        good = [h for h in expected if h.problem(size) is None]
        usable += len(good)
        not_found += sum(h.label == hint_recorder.NOT_THERE for h in good)
    # the centre crop cuts the landscape's background box off: not searched, so not counted
    assert (usable, not_found) == ((6, 2) if not side else (5, 1))
    assert (report.hints, report.hint_not_found) == (usable, not_found)
    card = (builder / "README.md").read_text()
    assert f"{not_found} of {usable} hinted hands were not found" in card
    assert f"| `hint_not_found`: found by no detector pass | {not_found} |" in card


def test_a_build_without_hints_says_nothing_of_them(tmp_path, data_dir):
    from builders.engine import BuildReport

    photos = tmp_path / "photos"
    fx.link(data_dir / "images" / fx.HAND_PHOTOS[0], photos / "a.jpg")
    builder = fx.folder_recipe(tmp_path, conditioner=hint_recorder.NAME)
    report = run_build(str(builder), str(photos), BuildSettings(), progress=False)
    assert (report.rows, report.hints, report.hint_not_found) == (1, 0, 0)
    assert "hinted hands" not in (builder / "README.md").read_text()
    assert BuildReport("x", "train").to_dict()["hint_not_found"] == 0


# -- real photos, the real hand conditioner --------------------------------------------------------
@pytest.fixture(scope="module")
def small_hands(tmp_path_factory, data_dir) -> fx.SmallHands:
    return fx.hagrid_small_hands(data_dir, tmp_path_factory.mktemp("small_hands"))


def test_small_hand_fixture_boxes_are_hints_around_the_pasted_hands(small_hands):
    items = list(make_source("hagrid", str(small_hands.root), "train"))
    assert sorted(item.source_id for item in items) == sorted(small_hands.hands)
    labels = [hint.label for item in items for hint in item.hints]
    assert "no_gesture" in labels
    for item in items:
        hands = small_hands.hands[item.source_id]
        assert 1 <= len(hands) <= 2  # the hand conditioners' max_num_hands
        for hand, hint in zip(hands, item.hints, strict=False):  # the hands' boxes come first
            assert [hint.x0, hint.y0, hint.x1, hint.y1] == pytest.approx(list(hand), abs=0.01)
            assert 60 <= max(hand[2] - hand[0], hand[3] - hand[1]) / (1 + 2 * fx.BOX_PADDING) <= 120
        assert len(item.hints) >= len(hands) and Image.open(item.image).size == fx.SMALL_HANDS_FRAME
    planted = sum(len(item.hints) - len(small_hands.hands[item.source_id]) for item in items)
    assert planted == small_hands.empty_boxes == 2


def hagrid_recipe(root: Path, extra: str = "") -> Path:
    builder = root / "hagrid_builder"
    builder.mkdir(parents=True)
    (builder / "recipe.toml").write_text(
        '[source]\ntype = "hagrid"\n[conditioner]\nname = "hand_encoded"\n'
        f'[captioner]\ntype = "template"\ntemplate = "a person making a {{gesture:words}} gesture"\n{extra}'
    )
    return builder


def test_every_small_hand_of_full_hd_frames_is_kept_and_empty_boxes_are_counted(tmp_path, small_hands):
    builder = hagrid_recipe(tmp_path)
    command = [str(CLI), "build", str(builder), "--source", str(small_hands.root)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    hinted = sum(len(hands) for hands in small_hands.hands.values()) + small_hands.empty_boxes
    assert (report["hints"], report["hint_not_found"]) == (hinted, small_hands.empty_boxes), report
    assert f"hint_not_found: {small_hands.empty_boxes} of {hinted} hinted hands" in result.stderr
    rows = open_dataset(str(builder))
    assert sorted(rows["source_id"]) == sorted(small_hands.hands), report["skipped"]
    for row in rows:
        detection = conditioners.Detection.from_json(row["landmarks"])
        hands = small_hands.hands[row["source_id"]]
        assert len(detection.instances) == len(hands), (row["source_id"], detection.extra)
        centres = [
            ((x0 + x1) / 2, (y0 + y1) / 2) for x0, y0, x1, y1 in (i.bbox() for i in detection.instances)
        ]
        for x0, y0, x1, y1 in hands:  # each pasted hand found, where it was pasted
            assert any(x0 <= x <= x1 and y0 <= y <= y1 for x, y in centres), (row["source_id"], centres)
        assert detection.extra["hint_not_found"] == len(fx.SMALL_HAND_FRAMES[row["gesture"]].empty_boxes)
    card = (builder / "README.md").read_text()
    assert f"{small_hands.empty_boxes} of {hinted} hinted hands were not found" in card
    assert "counts of hands, not of images" in card


# Every kind of unusable box, and one good box around the hand, in pixels of the upright photo.
BAD_BOXES = [
    [NAN, 10, 50, 50],
    [40, 40, 40, 90],  # zero width
    [90, 90, 60, 120],  # x1 < x0
    [5000, 5000, 5100, 5100],  # outside
    [-400, -400, -300, -300],  # outside, negative
    [-1e12, -1e12, 1e12, 1e12],  # larger than any photo
    [1e308, 0, float("inf"), 10],
]


@pytest.mark.parametrize("side", [None, 256])
def test_bad_hints_never_crash_a_build(tmp_path, data_dir, side):
    photos = tmp_path / "photos"
    boxes = {"four.jpg": [228, 242, 293, 336], "call.jpg": [121, 225, 196, 292]}
    fx.link(data_dir / "images" / "hands" / "mediapipe_gesture_four_15a73593.jpg", photos / "four.jpg")
    fx.link(data_dir / "images" / "hands" / "mediapipe_gesture_call_1f5fb137.jpg", photos / "call.jpg")
    lines = [{"file_name": name, "hand_boxes": [*BAD_BOXES, box]} for name, box in boxes.items()]
    (photos / "metadata.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    extra = f"[image]\nresize_short_side = {side}\n" if side else ""
    report = run_build(
        str(fx.folder_recipe(tmp_path, extra=extra)), str(photos), BuildSettings(), progress=False
    )
    assert report.rows == 2 and report.skipped == {}
    # Searched: the good box and the huge one (it covers the photo), both around a hand.
    assert report.hints == 4 and report.hint_not_found <= 1, report


def drop_columns(shard: Path, names: list[str]) -> None:
    """Rewrite a shard as builds wrote it before rows had the columns `names` (its counts kept)."""
    import datasets
    import pyarrow.parquet as pq

    table = pq.read_table(shard)
    features = datasets.Features.from_arrow_schema(table.schema)
    old = datasets.Features({k: v for k, v in features.items() if k not in names})
    metadata = {  # the file's key-value metadata (the build counts), which read_table leaves out
        **{k: v for k, v in pq.ParquetFile(shard).metadata.metadata.items() if k != b"ARROW:schema"},
        b"huggingface": old.arrow_schema.metadata[b"huggingface"],
    }
    pq.write_table(table.drop_columns(names).replace_schema_metadata(metadata), shard)


def test_resuming_a_hagrid_build_from_before_the_bboxes_column_keeps_its_schema(tmp_path, data_dir, caplog):
    import pyarrow.parquet as pq

    root, builder = fx.hagrid(data_dir, tmp_path, v2=True), hagrid_recipe(tmp_path)
    settings = BuildSettings(shard_size=1)
    report = run_build(str(builder), str(root), settings, progress=False)
    shards = sorted((builder / "data").glob("train-*.parquet"))
    assert len(shards) == report.rows >= 2 and "bboxes" in pq.read_schema(shards[0]).names
    for shard in shards:
        drop_columns(shard, ["bboxes"])
    shards[-1].unlink()  # a partial build of the old schema
    resumed = run_build(str(builder), str(root), settings, progress=False)
    assert "bboxes" in caplog.text and "without those columns" in caplog.text
    assert resumed.rows == report.rows and shards[-1].exists()
    assert not any("bboxes" in pq.read_schema(shard).names for shard in shards)
    rows = open_dataset(str(builder))
    assert len(rows) == report.rows and "bboxes" not in rows.features
