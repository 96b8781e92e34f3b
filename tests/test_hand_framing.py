"""`[image] frame = "hands"`: rows cut around the hands of Full HD HaGRID-like photos.

The photos are `FRAMES`: shared hand photos pasted small into 1920 x 1080 frames over a real
background (`builder_fixtures.hagrid_small_hands`), one with its hand at the right edge (which a
centre crop cuts off), one centred, one with a two-handed gesture, and one with two people whose
hands are further apart than the frame is tall (the rectangle fallback).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import builder_fixtures as fx
import numpy as np
import pytest
from PIL import Image

import conditioners
from builders import BuildSettings
from builders.framing import HandFraming
from builders.recipe import Recipe, RecipeError, builder_names
from builders.rows import open_dataset
from builders.run import run_build
from builders.sources import make_source
from conditioners import Detection, Instance
from conditioners.images import box_framing, center_crop_framing, resize_and_crop
from landmark_controlnet.cli import main
from landmark_controlnet.evaluation.generate import load_rows, open_split
from landmark_controlnet.training import data as input_data

SIDE = 512
# Hands of 100-190 px (their landmark boxes' short sides), within HaGRID's 60-250 and large enough for
# one detector pass over the whole frame: this tests the framing, not the hand search.
FRAMES = {
    "peace": fx.SmallHandFrame(  # at the right edge: a centre crop keeps x 420-1500 of the frame
        "sklearn_china.jpg", (fx.PastedPhoto("hands/hagrid_tile04_one_finger.jpg", 160, (1415, 150)),)
    ),
    "four": fx.SmallHandFrame(  # centred
        "mediapipe_dino.jpg", (fx.PastedPhoto("hands/mediapipe_gesture_four_15a73593.jpg", 160, (714, 150)),)
    ),
    "heart": fx.SmallHandFrame(
        "sam_groceries.jpg", (fx.PastedPhoto("hands/hagrid_tile10_heart_two_hands.jpg", 133, (700, 100)),)
    ),
    "call": fx.SmallHandFrame(  # two people, hands ~1400 px apart: more than any square of the frame holds
        "sklearn_china.jpg",
        (
            fx.PastedPhoto("hands/mediapipe_gesture_rock_15cb4e8b.jpg", 220, (50, 150)),
            fx.PastedPhoto("hands/mediapipe_gesture_call_1f5fb137.jpg", 220, (1250, 150)),
        ),
    ),
}
BUILDERS = Path(__file__).resolve().parents[1] / "builders"


@pytest.fixture(scope="module")
def full_hd(tmp_path_factory, data_dir):
    """The Full HD source, built by the packaged `hagrid_hand_enc` recipe (frame = "hands") and by
    the same recipe with a centre crop; rows by gesture."""
    root = tmp_path_factory.mktemp("full_hd")
    source = fx.hagrid_small_hands(data_dir, root, FRAMES).root
    hands = run_build("hagrid_hand_enc", str(source), BuildSettings(), output=root / "hands", progress=False)
    centre_recipe = root / "centre_recipe"
    centre_recipe.mkdir()
    (centre_recipe / "recipe.toml").write_text(
        '[source]\ntype = "hagrid"\n[conditioner]\nname = "hand_encoded"\n'
        f'[captioner]\ntype = "template"\ntemplate = "a {{gesture}}"\n[image]\nresize_short_side = {SIDE}\n'
    )
    run_build(str(centre_recipe), str(source), BuildSettings(), output=root / "centre", progress=False)
    by_gesture = {
        name: {row["gesture"]: row for row in open_dataset(str(root / name))} for name in ("hands", "centre")
    }
    items = {item.extra["gesture"]: item for item in make_source("hagrid", str(source), "train")}
    return {"report": hands, "items": items, "root": root, **by_gesture}


def finite_points(detection: Detection) -> np.ndarray:
    points = np.concatenate([inst.xy for inst in detection.instances])
    return points[np.isfinite(points).all(axis=1)]


def test_every_photo_is_kept_with_all_its_hands_inside_the_stored_image(full_hd):
    assert full_hd["report"].rows == 4 and not full_hd["report"].skipped
    for gesture, row in full_hd["hands"].items():
        detection = Detection.from_json(row["landmarks"])
        image = row["image"]
        assert detection.size == image.size == row["conditioning_image"].size, gesture
        assert len(detection.instances) >= len(FRAMES[gesture].pasted), gesture
        points = finite_points(detection)
        assert (points >= 0).all() and (points[:, 0] <= image.width).all(), gesture
        assert (points[:, 1] <= image.height).all(), gesture
        record = detection.extra["framing"]
        assert record["size"] == list(image.size) and record["source_size"] == list(fx.SMALL_HANDS_FRAME)
        if gesture == "call":
            assert record["fallback"] and image.height == SIDE < image.width, image.size
        else:
            assert image.size == (SIDE, SIDE) and "fallback" not in record, gesture


def test_the_conditioning_image_is_the_stored_landmarks_redrawn(full_hd, tmp_path):
    for gesture, row in full_hd["hands"].items():
        stored = np.asarray(row["conditioning_image"].convert("RGB"))
        np.testing.assert_array_equal(conditioners.draw(Detection.from_json(row["landmarks"])), stored)
        # `landmark-controlnet draw` on the row's landmarks gives the same picture.
        (tmp_path / f"{gesture}.json").write_text(row["landmarks"])
        out = tmp_path / f"{gesture}.png"
        assert main(["draw", str(tmp_path / f"{gesture}.json"), "--out", str(out)]) == 0
        np.testing.assert_array_equal(np.asarray(Image.open(out).convert("RGB")), stored)


def test_size_columns_map_the_stored_pixels_back_onto_the_source(full_hd):
    with conditioners.get("hand_encoded") as hands:
        for gesture, row in full_hd["hands"].items():
            item = full_hd["items"][gesture]
            whole = hands.detect(item.image, hints=getattr(item, "hints", ()))  # as the build detects
            frame = Image.open(item.image).convert("RGB")
            assert row["original_size"] == [frame.height, frame.width]
            stored = Detection.from_json(row["landmarks"])
            (top, left), (width, height) = row["crop_top_left"], row["image"].size
            # The scale of the crop: the size columns name the photo and the corner, the landmarks'
            # framing record the zoom (SDXL's columns do not carry it).
            resized = stored.extra["framing"]["resized_size"]
            assert stored.extra["framing"]["offset"] == [left, top]
            scale = (resized[0] / frame.width, resized[1] / frame.height)
            back = stored.transformed(
                (1 / scale[0], 1 / scale[1]), (left / scale[0], top / scale[1]), frame.size
            )
            for ours, theirs in zip(back.instances, whole.instances, strict=True):
                assert ours.kind == theirs.kind
                assert np.nanmax(np.abs(ours.xy - theirs.xy)) < 1.0, gesture
            # The stored pixels are the photo resized to that scale and cut at crop_top_left, not 1 px off.
            reference = np.asarray(frame.resize(tuple(resized), Image.Resampling.LANCZOS), np.float64)
            photo = np.asarray(row["image"].convert("RGB"), np.float64)
            errors = {
                (dy, dx): np.abs(
                    photo - reference[top + dy : top + dy + height, left + dx : left + dx + width]
                ).mean()
                for dy, dx in ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))
                if 0 <= top + dy <= resized[1] - height and 0 <= left + dx <= resized[0] - width
            }
            assert errors.pop((0, 0)) < min(4, *errors.values()), (gesture, errors)


def test_hands_are_larger_than_with_centre_framing_and_side_hands_are_kept(full_hd):
    def hand_sizes(row):
        return [inst.size() for inst in Detection.from_json(row["landmarks"]).instances]

    assert "peace" not in full_hd["centre"]  # its hand is at the frame's right edge: cut off
    framed, centred = hand_sizes(full_hd["hands"]["four"]), hand_sizes(full_hd["centre"]["four"])
    assert len(framed) == len(centred) == 1 and framed[0] > 2 * centred[0], (framed, centred)
    assert min(hand_sizes(full_hd["hands"]["peace"])) > 100


def test_flip_and_evaluate_work_on_framed_rows(full_hd, tmp_path, capsys):
    for row in full_hd["hands"].values():
        detection = Detection.from_json(row["landmarks"])
        flipped = input_data.flipped_conditioning(row["conditioning_image"], row["landmarks"])
        assert flipped.size == row["image"].size
        np.testing.assert_array_equal(np.asarray(flipped), conditioners.draw(detection.mirrored()))
        prepared = input_data.prepare_conditioning(
            row, input_data.Columns(), input_data.ExampleOptions(resolution=64, size_ids=True), flip=True
        )
        assert prepared["conditioning_pixel_values"].shape == (64, 64, 3)
        assert list(prepared["time_ids"][:2]) == row["original_size"]
    # evaluate's rows: the stored landmarks, framed to its square resolution with their drawing. The
    # three square rows keep every landmark; the fallback row, wider than square, is cut at its sides
    # (as a square training crop cuts it).
    rows = load_rows(open_split(str(full_hd["root"] / "hands"), "train"), 4, 256)
    inside = []
    for row in rows:
        points = finite_points(row.reference)
        assert row.conditioning.shape[:2] == (256, 256) and row.reference.size == (256, 256)
        inside.append(bool((points >= 0).all() and (points <= 256).all()))
    assert sorted(inside) == [False, True, True, True]
    # The stored photos scored against their stored landmarks: the detector finds the same hands there.
    references, generated = tmp_path / "references", tmp_path / "generated"
    references.mkdir(), generated.mkdir()
    for gesture, row in full_hd["hands"].items():
        (references / f"{gesture}.json").write_text(row["landmarks"])
        row["image"].save(generated / f"{gesture}.png")
    capsys.readouterr()
    out = tmp_path / "out"
    assert (
        main(["evaluate", "--generated", str(generated), "--reference", str(references), "--out", str(out)])
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["instance_recall"] >= 0.8 and summary["pck_0.1"] >= 0.9, summary


# -- the geometry alone ------------------------------------------------------------------------
def hands_detection(*boxes, size=fx.SMALL_HANDS_FRAME):
    return Detection(
        "hand_encoded", *size, [Instance("right_hand", np.array([b[:2], b[2:]], float)) for b in boxes]
    )


def test_the_square_is_the_hands_box_with_context_at_least_min_side_and_inside_the_photo():
    framing = HandFraming(SIDE, 2.5, 384)
    (x0, y0, x1, y1), fallback = framing.source_box(hands_detection((900, 500, 1060, 600)))
    assert not fallback and (x1 - x0, y1 - y0) == (400, 400) and (x0 + x1) / 2 == 980 and (y0 + y1) / 2 == 550
    box, _ = framing.source_box(hands_detection((900, 500, 960, 540)))  # 60 px: min_side
    assert box[2] - box[0] == 384
    box, _ = framing.source_box(hands_detection((1850, 1000, 1910, 1070)))  # at the corner: shifted in
    assert box == (1920 - 384, 1080 - 384, 1920, 1080)
    box, _ = framing.source_box(hands_detection((100, 100, 300, 300), (700, 600, 900, 800)))  # capped
    assert box == (0, 0, 1080, 1080)
    # Hands 1600 px apart: the photo's whole short side, and each hand's 250 px context square.
    box, fallback = framing.source_box(hands_detection((100, 500, 200, 600), (1700, 400, 1800, 500)))
    assert fallback and box == (25, 0, 1875, 1080)
    portrait = hands_detection((100, 50, 200, 150), (500, 1800, 600, 1900), size=(1080, 1920))
    assert framing.source_box(portrait) == ((0, 0, 1080, 1920), True)  # clipped to the photo


def test_box_framing_and_its_resize_only_read_the_box(data_dir):
    photo = Image.open(data_dir / "images/bodies/mmpose_posetrack18_009473.jpg").convert("RGB")  # 1920x1080
    framing = box_framing(photo.size, (1500, 600, 1884, 984), SIDE)
    assert (
        framing.size == (SIDE, SIDE)
        and framing.offset == (2000, 800)
        and framing.resized_size == (2560, 1440)
    )
    quick = np.asarray(resize_and_crop(photo, framing, Image.Resampling.LANCZOS), np.int16)
    whole = np.asarray(
        photo.resize(framing.resized_size, Image.Resampling.LANCZOS).crop(framing.box), np.int16
    )
    assert np.abs(quick - whole).max() <= 2
    # A centred crop is the whole-frame resize and cut, exactly as before.
    centred = center_crop_framing(photo.size, SIDE)
    expected = photo.resize(centred.resized_size, Image.Resampling.LANCZOS).crop(centred.box)
    np.testing.assert_array_equal(
        np.asarray(resize_and_crop(photo, SIDE, Image.Resampling.LANCZOS)), expected
    )
    # A reduced decode of the same photo, framed by the same crop (as the worker cuts from `detail`).
    half = photo.resize((960, 540))
    cut = resize_and_crop(half, replace(framing, source_size=half.size), Image.Resampling.LANCZOS)
    assert cut.size == (SIDE, SIDE)


# -- recipes -----------------------------------------------------------------------------------
def test_hagrid_recipes_frame_around_the_hands():
    for name in ("hagrid_hand_enc", "hagrid_hand_std", "hagrid_holistic", "hagrid_hand_enc_sdxl"):
        recipe = Recipe.load(BUILDERS / name)
        assert recipe.frame == "hands" and recipe.hand_context == 2.5, name
        assert recipe.min_side == round(0.75 * recipe.resize_short_side), name
    sdxl = Recipe.load(BUILDERS / "hagrid_hand_enc_sdxl")
    assert sdxl.resize_short_side == 1024 and "SDXL" in sdxl.card["description"]
    assert "hagrid_hand_enc_sdxl" in builder_names()


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ('frame = "hands"', 'frame = "hands" needs resize_short_side'),
        ('frame = "middle"\nresize_short_side = 512', 'frame = \'middle\': use "center" or "hands"'),
        (
            'frame = "hands"\nresize_short_side = 512\nhand_context = 0.5',
            "hand_context = 0.5: give a number >= 1",
        ),
        ('frame = "hands"\nresize_short_side = 512\nmin_side = -3', "min_side = -3"),
        ("resize_short_side = 512\nhand_contxt = 2", "has no option 'hand_contxt'"),
    ],
)
def test_recipe_mistakes_are_one_line_errors(tmp_path, capsys, image, message):
    builder = fx.folder_recipe(tmp_path, extra=f"[image]\n{image}\n")
    with pytest.raises(RecipeError, match="recipe.toml: \\[image\\]"):
        Recipe.load(builder)
    assert main(["build", str(builder), "--source", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1, error
