"""Builds of real Parquet datasets from fixtures made of ../shared/data photos."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import builder_fixtures as fx
import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from hostile_corpus import orientations
from PIL import Image, ImageOps

import conditioners
from builders import BuildSettings, make_source
from builders.rows import DatasetNotBuiltError, open_dataset
from builders.run import run_build
from builders.worker import Splits

CLI = Path(sys.executable).with_name("landmark-controlnet")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture()
def folder_build(tmp_path, hand_build):
    """This test's copy of the session's hand photo build (3 items a shard)."""
    photos, builder = hand_build.copy_to(tmp_path)
    return photos, builder, hand_build


def test_folder_build_loads_with_datasets(folder_build):
    photos, builder, report = folder_build
    assert report.items == 8 and report.skipped == {"no_detection": 1, "unreadable": 1} and report.rows == 6
    dataset = datasets.load_dataset(str(builder), split="train")
    assert len(dataset) == 6 and len(set(dataset["source_id"])) == 6
    assert {"image", "conditioning_image", "caption", "landmarks", "source_id"} <= set(dataset.features)
    for row in dataset:
        assert isinstance(row["image"], Image.Image) and isinstance(row["conditioning_image"], Image.Image)
        assert row["image"].size == row["conditioning_image"].size
        detection = conditioners.Detection.from_json(row["landmarks"])
        np.testing.assert_array_equal(
            conditioners.draw(detection), np.asarray(row["conditioning_image"].convert("RGB"))
        )
    raw = dataset.cast_column("image", datasets.Image(decode=False))
    for row in raw:  # the original photo bytes, not a re-encode
        assert sha(row["image"]["bytes"]) == sha((photos / row["source_id"]).read_bytes())
    captions = dict(zip(dataset["source_id"], dataset["caption"], strict=True))
    assert captions["00_mediapipe_gesture_four_15a73593.jpg"] == "caption 0"  # metadata.jsonl
    assert captions["01_mmpose_freihand_00000355.jpg"] == "a right hand holding a spoon"  # side-car .txt
    assert captions["03_mediapipe_gesture_call_1f5fb137.jpg"] == "a hand"  # default


def test_dataset_card_is_valid_hub_yaml(folder_build):
    _, builder, report = folder_build
    text = (builder / "README.md").read_text()
    header = yaml.safe_load(text.split("---")[1])
    assert header["configs"][0]["data_files"] == [{"split": "train", "path": "data/train-*.parquet"}]
    assert header["dataset_info"]["splits"][0]["num_examples"] == report.rows
    assert {f["name"] for f in header["dataset_info"]["features"]} >= {
        "image",
        "conditioning_image",
        "caption",
    }
    assert (
        header["license"] and "controlnet" in header["tags"] and "image-to-image" in header["task_categories"]
    )
    assert "`no_detection` | 1" in text and "`unreadable` | 1" in text and "hand_encoded" in text
    assert "mediapipe.solutions.hands 0.10.21" in text
    assert Image.open(builder / "preview.png").size[0] > 256
    from huggingface_hub import DatasetCard

    card = DatasetCard(text)  # the Hub client's own parser accepts it
    assert card.data.to_dict()["configs"] == header["configs"]


def test_two_processes_build_the_same_rows(tmp_path, data_dir, folder_build):
    photos, single, _ = folder_build
    parallel = fx.folder_recipe(tmp_path / "parallel")
    run_build(str(parallel), str(photos), BuildSettings(shard_size=2, num_proc=2), progress=False)
    rows = {}
    for builder in (single, parallel):
        ds = datasets.load_dataset(str(builder), split="train").cast_column(
            "conditioning_image", datasets.Image(decode=False)
        )
        rows[builder] = sorted(
            zip(ds["source_id"], [sha(c["bytes"]) for c in ds["conditioning_image"]], strict=True)
        )
    assert rows[single] == rows[parallel]


def test_killed_build_resumes_without_duplicates_or_gaps(tmp_path, data_dir, hand_build):
    photos = fx.photo_folder(data_dir, tmp_path)
    reference = hand_build.root / "builder"  # the same photos, built straight through
    builder = fx.folder_recipe(tmp_path / "killed")
    command = [str(CLI), "build", str(builder), "--source", str(photos), "--shard-size", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((builder / "data").glob("train-*.parquet"))) < 2:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    partial = len(list((builder / "data").glob("train-*.parquet")))
    assert 2 <= partial < 6, "the build should have been killed part-way"
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    ids = {}
    for folder in (reference, builder):
        ids[folder] = datasets.load_dataset(str(folder), split="train")["source_id"]
    assert sorted(ids[builder]) == sorted(ids[reference]) and len(set(ids[builder])) == len(ids[builder])
    assert json.loads(result.stdout.strip().splitlines()[-1])["items"] == 8


def test_resume_refuses_other_settings(tmp_path, data_dir, folder_build):
    photos, builder, _ = folder_build
    with pytest.raises(ValueError, match="shard_size"):
        run_build(str(builder), str(photos), BuildSettings(shard_size=4), progress=False)
    report = run_build(str(builder), str(photos), BuildSettings(shard_size=4), overwrite=True, progress=False)
    assert report.rows == 6


def test_validation_fraction_holds_rows_out_by_source_id(tmp_path, data_dir, hand_build):
    photos, builder = fx.photo_folder(data_dir, tmp_path), fx.folder_recipe(tmp_path)
    settings = BuildSettings(shard_size=3, validation_fraction=0.4)
    report = run_build(str(builder), str(photos), settings, progress=False)
    train, validation = (datasets.load_dataset(str(builder), split=s) for s in ("train", "validation"))
    every_id = set(train["source_id"]) | set(validation["source_id"])
    assert len(every_id) == hand_build.rows == len(train) + len(validation), "a row lost or in both splits"
    held_out = {i for i in every_id if Splits("train", 0.4).of(i) == "validation"}
    assert set(validation["source_id"]) == held_out and 0 < len(held_out) < len(every_id)
    assert report.rows == len(train) and report.items == hand_build.items
    card = (builder / "README.md").read_text()
    assert f"`train`: {len(train)} rows" in card and f"`validation`: {len(validation)} rows" in card
    shards = {p: p.stat().st_mtime_ns for p in (builder / "data").glob("*.parquet")}
    again = run_build(str(builder), str(photos), settings, progress=False)  # resumed: nothing to do
    assert again.rows == report.rows and shards == {p: p.stat().st_mtime_ns for p in shards}
    with pytest.raises(ValueError, match="validation_fraction"):
        run_build(
            str(builder), str(photos), BuildSettings(shard_size=3, validation_fraction=0.2), progress=False
        )
    run_build(str(builder), str(photos), BuildSettings(shard_size=3), overwrite=True, progress=False)
    assert not list((builder / "data").glob("validation-*")), (
        "--overwrite keeps held-out rows of the old build"
    )
    assert len(datasets.load_dataset(str(builder), split="train")) == hand_build.rows


@pytest.mark.parametrize(
    "flags", [["--validation-fraction", "1.5"], ["--validation-fraction", "0.1", "--split", "validation"]]
)
def test_bad_validation_fractions_are_refused(tmp_path, flags, capsys):
    from landmark_controlnet.cli import main

    assert main(["build", str(fx.folder_recipe(tmp_path)), "--source", str(tmp_path), *flags]) == 2
    assert "--validation-fraction" in capsys.readouterr().err


def test_resize_and_crop_moves_the_landmarks(tmp_path, data_dir):
    """The stored landmarks are the full-size build's, scaled and moved by the centre crop (worked out
    here from the photo's size, not by the builder's code)."""
    photos = fx.photo_folder(data_dir, tmp_path)
    full = fx.folder_recipe(tmp_path / "full")
    builder = fx.folder_recipe(tmp_path, extra="[image]\nresize_short_side = 256\n")
    for folder in (full, builder):
        run_build(str(folder), str(photos), BuildSettings(max_samples=3), progress=False)
    unresized = {row["source_id"]: row for row in open_dataset(str(full))}
    dataset = open_dataset(str(builder))
    assert len(dataset) == 3 and set(dataset["source_id"]) == set(unresized)
    for row in dataset:
        assert row["image"].size == (256, 256) == row["conditioning_image"].size
        detection = conditioners.Detection.from_json(row["landmarks"])
        assert detection.size == (256, 256)
        np.testing.assert_array_equal(
            conditioners.draw(detection), np.asarray(row["conditioning_image"].convert("RGB"))
        )
        reference = conditioners.Detection.from_json(unresized[row["source_id"]]["landmarks"])
        width, height = reference.size
        top, left = centre_crop_top_left(width, height, 256)
        scale = np.array([256 / min(width, height)] * 2)
        assert len(detection.instances) == len(reference.instances) > 0
        for stored, whole in zip(detection.instances, reference.instances, strict=True):
            expected = whole.xy * scale - np.array([left, top])
            # Each build detects on its own copy of the photo: within 2 px of 256, where a wrong
            # crop offset or scale would be tens of pixels off.
            np.testing.assert_allclose(stored.xy, expected, atol=2.0)


def centre_crop_top_left(width: int, height: int, side: int) -> list[int]:
    """SDXL's crop coordinates for a resize of the short side to `side` and a centre crop (worked out
    here, not by the builder's code)."""
    resized_width, resized_height = (
        round(width * side / min(width, height)),
        round(height * side / min(width, height)),
    )
    return [(resized_height - side) // 2, (resized_width - side) // 2]


def crop_errors(stored: np.ndarray, frame: np.ndarray, top_left: list[int]) -> dict:
    """Mean absolute error of `stored` against the crop of `frame` at `top_left` and 1 px either side."""
    (top, left), (height, width) = top_left, stored.shape[:2]
    errors = {}
    for dy, dx in ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)):
        y, x = top + dy, left + dx
        if 0 <= y <= frame.shape[0] - height and 0 <= x <= frame.shape[1] - width:
            cut = frame[y : y + height, x : x + width].astype(np.float64)
            errors[dy, dx] = float(np.abs(stored.astype(np.float64) - cut).mean())
    return errors


@pytest.mark.parametrize("side", [256, None])
def test_size_columns_record_the_full_upright_photo_and_the_centre_crop(tmp_path, data_dir, side):
    hands = data_dir / "images" / "hands"
    photos = tmp_path / "photos"
    fx.link(hands / "hagrid_tile11_prayer.jpg", photos / "landscape.jpg")  # 780 x 437
    fx.link(hands / "mediapipe_gesture_four_15a73593.jpg", photos / "portrait.jpg")  # 384 x 512
    # A 1280 x 720 photo stored as a camera held sideways: 720 x 1280 pixels, EXIF orientation 6.
    upright = Image.open(hands / "mmpose_panoptic_005880453_01.jpg").convert("RGB")
    rotated = dict((name, data) for name, _, data in orientations(upright))["exif_6.jpg"]
    (photos / "rotated.jpg").write_bytes(rotated)
    assert Image.open(photos / "rotated.jpg").size == (720, 1280)
    builder = fx.folder_recipe(tmp_path, extra=f"[image]\nresize_short_side = {side}\n" if side else "")
    report = run_build(str(builder), str(photos), BuildSettings(), progress=False)
    dataset = open_dataset(str(builder))  # not a cached build
    assert report.rows == len(dataset) == 3, report.skipped
    assert dataset.features["original_size"] == datasets.Sequence(datasets.Value("int32"), length=2)
    assert dataset.features["crop_top_left"] == datasets.Sequence(datasets.Value("int32"), length=2)
    crops = {}
    for row in dataset:
        photo = ImageOps.exif_transpose(Image.open(photos / row["source_id"])).convert("RGB")
        width, height = photo.size
        assert row["original_size"] == [height, width], row["source_id"]
        if not side:  # the photo itself, upright as `datasets` decodes it
            assert row["image"].size == photo.size and row["crop_top_left"] == [0, 0]
            continue
        assert row["crop_top_left"] == centre_crop_top_left(width, height, side), row["source_id"]
        crops[row["source_id"]] = row["crop_top_left"]
        # The stored image is the photo resized to its scale and cut at crop_top_left, not 1 px off.
        scale = side / min(width, height)
        resized = photo.resize((round(width * scale), round(height * scale)), Image.Resampling.LANCZOS)
        errors = crop_errors(
            np.asarray(row["image"].convert("RGB")), np.asarray(resized), row["crop_top_left"]
        )
        assert errors.pop((0, 0)) < min(5, *errors.values()), (row["source_id"], errors)
    if not side:
        return
    assert crops["landscape.jpg"][0] == 0 < crops["landscape.jpg"][1]  # cut at the sides
    assert crops["portrait.jpg"][0] > 0 == crops["portrait.jpg"][1]  # cut at the top and bottom
    assert crops["rotated.jpg"][0] == 0 < crops["rotated.jpg"][1]  # landscape once upright
    assert "- `crop_top_left`: [top, left]" in (builder / "README.md").read_text()


def test_size_columns_of_a_build_that_stores_the_photos_themselves(folder_build):
    photos, builder, report = folder_build
    dataset = open_dataset(str(builder))  # not a cached build
    assert len(dataset) == report.rows > 0
    for row in dataset:
        width, height = ImageOps.exif_transpose(Image.open(photos / row["source_id"])).size
        assert row["original_size"] == [height, width] == [row["image"].height, row["image"].width]
        assert row["crop_top_left"] == [0, 0]
    card = (builder / "README.md").read_text()
    assert "- `original_size`: [height, width] of the source photo" in card
    header = yaml.safe_load(card.split("---")[1])
    assert {"name": "original_size", "list": "int32", "length": 2} in header["dataset_info"]["features"]


def test_every_builder_records_the_size_columns():
    from builders.recipe import BUILDERS_DIR, Recipe, builder_names
    from builders.sources import SOURCES
    from builders.worker import SIZE_FEATURES, dataset_features

    assert {"hand_repair", "hagrid_hand_enc", "face_synthetics_spiga", "laion_face"} <= set(builder_names())
    for name in builder_names():
        recipe = Recipe.load(BUILDERS_DIR / name)
        kind = "folder" if recipe.source_type == "images" else recipe.source_type
        source = object.__new__(SOURCES[kind])  # its columns, without a location to read
        features = dataset_features(source, recipe)
        assert {k: features[k] for k in SIZE_FEATURES} == SIZE_FEATURES, name


def strip_size_columns(shard: Path) -> None:
    """Rewrite a shard as builds wrote it before rows recorded their size (counts metadata kept)."""
    from builders.worker import SIZE_FEATURES

    table = pq.read_table(shard)
    features = datasets.Features.from_arrow_schema(table.schema)
    old = datasets.Features({k: v for k, v in features.items() if k not in SIZE_FEATURES})
    metadata = {  # the file's key-value metadata (the build counts), which read_table leaves out
        **{k: v for k, v in pq.ParquetFile(shard).metadata.metadata.items() if k != b"ARROW:schema"},
        b"huggingface": old.arrow_schema.metadata[b"huggingface"],
    }
    pq.write_table(table.drop_columns(list(SIZE_FEATURES)).replace_schema_metadata(metadata), shard)


def test_resuming_a_build_without_size_columns_keeps_its_schema(folder_build, caplog):
    from builders.parquet import read_counts
    from builders.storage import Folder

    photos, builder, report = folder_build
    shards = sorted((builder / "data").glob("train-*.parquet"))
    for shard in shards:
        strip_size_columns(shard)
    counts = read_counts(Folder(builder / "data"), shards[0].name)
    assert counts["kept"] > 0
    shards[-1].unlink()  # a partial build of the old schema
    resumed = run_build(str(builder), str(photos), BuildSettings(shard_size=3), progress=False)
    assert "without those columns" in caplog.text and "--overwrite" in caplog.text
    assert resumed.rows == report.rows and shards[-1].exists()
    assert read_counts(Folder(builder / "data"), shards[0].name) == counts
    for shard in shards:  # one schema: the rebuilt shard has the old one
        assert not {"original_size", "crop_top_left"} & set(pq.read_schema(shard).names)
    assert "original_size" not in (builder / "README.md").read_text()  # the card describes the shards
    dataset = open_dataset(str(builder))  # by its files: not a cached load of the build before
    assert len(dataset) == report.rows and "original_size" not in dataset.features
    caplog.clear()
    again = run_build(str(builder), str(photos), BuildSettings(shard_size=3), overwrite=True, progress=False)
    assert again.rows == report.rows and "without those columns" not in caplog.text
    rows = open_dataset(str(builder))
    assert (
        rows["crop_top_left"] == [[0, 0]] * report.rows
        and "original_size" in (builder / "README.md").read_text()
    )


@pytest.mark.parametrize("short_side", [None, 256])
def test_a_build_decodes_each_photo_once_and_captions_the_stored_pixels(
    tmp_path, data_dir, monkeypatch, short_side
):
    import builders.captioners
    import conditioners.base
    from builders import worker

    decodes: list[str] = []
    for module in (conditioners.base, worker):
        real = module.load_image
        monkeypatch.setattr(
            module, "load_image", lambda *a, _real=real, **k: decodes.append(1) or _real(*a, **k)
        )
    seen: list[tuple[int, ...]] = []

    class Recording(builders.captioners.ColumnCaptioner):  # the captioner of fx.folder_recipe
        def __call__(self, inputs):
            seen.extend(item.pixels.shape for item in inputs)
            return super().__call__(inputs)

    monkeypatch.setitem(builders.captioners.CAPTIONERS, "column", Recording)
    photos = fx.photo_folder(data_dir, tmp_path)
    extra = f"[image]\nresize_short_side = {short_side}\n" if short_side else ""
    report = run_build(
        str(fx.folder_recipe(tmp_path, extra=extra)), str(photos), BuildSettings(), progress=False
    )
    readable = report.items - report.skipped.get("unreadable", 0)
    # Once at the detector's scale and, for the hand search without a recipe frame, once at full
    # size, for the photos larger than the detector's copy.
    larger = sum(
        max(Image.open(p).size) > 512
        for p in photos.iterdir()
        if p.suffix == ".jpg" and p.stat().st_size > 100
    )
    most = report.items + (0 if short_side else larger)
    assert readable <= len(decodes) <= most and len(seen) == report.rows > 0
    if short_side:  # the captioner sees the photo as stored in the row: framed, not the uncropped one
        assert all(shape[:2] == (short_side, short_side) for shape in seen)


@pytest.mark.parametrize("v2", [False, True])
def test_hagrid_layouts(tmp_path, data_dir, v2):
    root = fx.hagrid(data_dir, tmp_path, v2=v2)
    items = list(make_source("hagrid", str(root), "train"))
    assert [i.extra["gesture"] for i in items] == ["heart", "peace", "two_up"]  # missing images skipped
    assert items[0].extra["labels"] == ["peace"] and items[0].extra["user_id"].startswith("user")
    report = run_build("hagrid_hand_enc", str(root), BuildSettings(), output=tmp_path / "out", progress=False)
    dataset = datasets.load_dataset(str(tmp_path / "out"), split="train")
    assert report.rows == len(dataset) >= 2
    assert set(dataset["gesture"]) <= {"heart", "peace", "two_up"}
    assert all(
        c == f"a person making a {g.replace('_', ' ')} gesture"
        for c, g in zip(dataset["caption"], dataset["gesture"], strict=True)
    )
    assert not (tmp_path / "out" / "hagrid_hand_enc.py").exists()


def test_img2dataset_tar_and_parquet(tmp_path, data_dir):
    tar_items = list(make_source("img2dataset", str(fx.img2dataset_tar(data_dir, tmp_path))))
    assert [i.source_id for i in tar_items] == ["000000000", "000000001", "000000002"]
    assert tar_items[1].caption == "a portrait photo 1" and tar_items[1].extra["url"].endswith("1.jpg")
    assert tar_items[0].image == (data_dir / "images" / fx.FACE_PHOTOS[0]).read_bytes()
    parquet_items = list(make_source("img2dataset", str(fx.img2dataset_parquet(data_dir, tmp_path))))
    assert [i.caption for i in parquet_items] == ["face 0", "face 1", "face 2"]
    out = tmp_path / "laion"
    report = run_build(
        "laion_face", str(tmp_path / "laion_face_tar"), BuildSettings(), output=out, progress=False
    )
    assert report.rows == 3 and report.skipped == {}
    assert datasets.load_dataset(str(out), split="train")["caption"] == [
        f"a portrait photo {i}" for i in range(3)
    ]


@pytest.mark.parametrize("streaming", [False, True])
def test_datasets_source(tmp_path, data_dir, streaming):
    folder = fx.hf_dataset(data_dir, tmp_path)
    source = make_source(
        "hf_dataset",
        str(folder),
        "train",
        image_column="photo",
        caption_column="text",
        id_column="uid",
        streaming=streaming,
    )
    items = list(source)
    assert [(i.source_id, i.caption) for i in items] == [("a", "text 0"), ("b", "text 1"), ("c", "text 2")]
    assert items[0].read_bytes() == (data_dir / "images" / fx.HAND_PHOTOS[0]).read_bytes()


def test_face_synthetics_source(tmp_path, data_dir):
    items = list(make_source("face_synthetics", str(fx.face_synthetics(data_dir, tmp_path))))
    assert [i.source_id for i in items] == ["000000", "000001"]
    assert len(items[0].extra["gt_landmarks"]) == 70 and items[0].extra["gt_landmarks"][1] == [11.0, 21.0]


def test_show_says_how_to_build(tmp_path):
    builder = fx.folder_recipe(tmp_path)
    with pytest.raises(DatasetNotBuiltError, match="landmark-controlnet build"):
        open_dataset(str(builder))
    result = subprocess.run([str(CLI), "show", str(builder)], capture_output=True, text=True)
    assert result.returncode == 2 and "landmark-controlnet build" in result.stderr
    assert "Traceback" not in result.stderr


def test_template_captioner_formats_words():
    from builders.captioners import CaptionInput, TemplateCaptioner
    from builders.sources import SourceItem

    row = CaptionInput(
        SourceItem("x", b"", extra={"gesture": "two_up_inverted"}),
        None,
        conditioners.Detection("hand_standard", 1, 1, []),
    )
    assert TemplateCaptioner("a person making a {gesture:words} gesture")([row]) == [
        "a person making a two up inverted gesture"
    ]


def test_ray_engine_matches_local_engine(tmp_path, data_dir, folder_build):
    import ray

    photos, local, _ = folder_build
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out = fx.folder_recipe(tmp_path / "ray")
        report = run_build(
            str(out), str(photos), BuildSettings(shard_size=3, num_proc=2), engine="ray", progress=False
        )
    finally:
        ray.shutdown()
    assert report.rows == 6 and report.skipped == {"no_detection": 1, "unreadable": 1}
    rows = {}
    for folder in (local, out):
        ds = datasets.load_dataset(str(folder), split="train").cast_column(
            "image", datasets.Image(decode=False)
        )
        rows[folder] = sorted(zip(ds["source_id"], ds["caption"], ds["landmarks"], strict=True))
    assert rows[out] == rows[local]
    assert (out / "README.md").exists()


def test_blip_captioner_with_a_tiny_local_model(tmp_path, data_dir):
    from tiny_models import tiny_blip

    model_dir = tiny_blip(tmp_path / "blip")
    photos = fx.photo_folder(data_dir, tmp_path)
    builder = tmp_path / "blip_builder"
    builder.mkdir()
    (builder / "recipe.toml").write_text(
        '[source]\ntype = "folder"\n[conditioner]\nname = "hand_standard"\n'
        f'[captioner]\ntype = "blip"\nmodel = "{model_dir}"\nbatch_size = 4\nmax_new_tokens = 5\n'
    )
    report = run_build(str(builder), str(photos), BuildSettings(), progress=False)
    captions = datasets.load_dataset(str(builder), split="train")["caption"]
    assert report.rows == 6 and len(captions) == 6
    words = set(" ".join(captions).split())
    assert words and words <= set(fx_vocab()), words  # generated by the model, from its tiny vocabulary
    assert "BLIP" in (builder / "README.md").read_text()


def fx_vocab() -> list[str]:
    from tiny_models import TINY_VOCAB

    return [w for w in TINY_VOCAB if not w.startswith("[")]


def test_a_rebuilt_folder_loads_its_new_rows_not_a_cached_build(tmp_path, data_dir):
    photos = sorted((data_dir / "images/hands").glob("hagrid_*.jpg"))[:4]
    builder = fx.folder_recipe(tmp_path)
    loaded = []
    for batch in (photos[:2], photos[2:]):  # as many rows each time: datasets' cache key alone stays the same
        folder = tmp_path / f"photos_{len(loaded)}"
        folder.mkdir()
        for photo in batch:
            fx.link(photo, folder / photo.name)
        run_build(str(builder), str(folder), BuildSettings(), overwrite=True, progress=False)
        loaded.append(sorted(open_dataset(str(builder))["source_id"]))
    assert loaded == [sorted(p.name for p in photos[:2]), sorted(p.name for p in photos[2:])]
