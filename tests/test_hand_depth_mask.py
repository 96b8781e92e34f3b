"""`hand_depth_mask` on HandRefiner's generated images, its pure drawing, and the `hand_repair` builder."""

from __future__ import annotations

import json

import builder_fixtures as fx
import numpy as np
import pytest
from PIL import Image

import conditioners
from builders import BuildSettings
from builders.rows import open_dataset
from builders.run import run_build
from conditioners import Detection, Instance
from conditioners.hand_depth import FAR_LEVEL, NEAR_LEVEL, MaskSettings, mask_boxes

GENERATED = [f"handrefiner_test_{n}.jpg" for n in range(1, 6)]


@pytest.fixture(scope="session")
def generated(data_dir):
    """`generated(name)` -> the path of one of HandRefiner's generated test images."""
    return lambda name: data_dir / "images" / "generated" / name


@pytest.fixture(scope="module")
def depth_mask():
    with conditioners.get("hand_depth_mask") as conditioner:
        yield conditioner


def padded_keypoint_windows(detection: Detection):
    """For each hand keypoint inside the image, the window keypoint +- the hand's padding, clamped."""
    settings = MaskSettings.of(detection)
    for instance in detection.instances:
        pad = settings.pad(instance.bbox())
        for x, y in instance.xy:
            if 0 <= x < detection.width and 0 <= y < detection.height:
                x0, y0 = max(int(np.ceil(x - pad)), 0), max(int(np.ceil(y - pad)), 0)
                x1, y1 = min(int(x + pad), detection.width - 1), min(int(y + pad), detection.height - 1)
                yield (x, y, pad), (slice(y0, y1 + 1), slice(x0, x1 + 1))


@pytest.mark.parametrize("photo", GENERATED)
def test_generated_images_get_a_hand_depth_map_inside_a_padded_mask(photo, generated, depth_mask):
    result = depth_mask(generated(photo))
    detection = result.detection
    assert detection.skipped is None and detection.instances, "MediaPipe finds a hand in every test image"
    depth, mask = result.to_array(), result.extras["mask"]
    assert depth.shape[:2] == mask.shape == (detection.height, detection.width)
    assert (depth[..., 0] == depth[..., 1]).all() and (depth[..., 1] == depth[..., 2]).all(), "grey"
    assert set(np.unique(mask)) == {0, 255}
    for box in mask_boxes(detection):
        x0, y0, x1, y1 = (round(v) for v in box)
        inside = depth[y0:y1, x0:x1, 0]
        assert (inside > 0).mean() > 0.05, "the hand's depth fills part of its mask box"
    on_hand = depth[..., 0] > 0
    assert depth[on_hand, 0].max() == NEAR_LEVEL and depth[on_hand, 0].min() >= FAR_LEVEL - 1
    assert (mask[on_hand] == 255).mean() > 0.99, "the depth map lies inside the mask"
    for (x, y, pad), window in padded_keypoint_windows(detection):
        assert pad >= 30
        assert (mask[window] == 255).all(), f"keypoint ({x:.0f}, {y:.0f}) +- {pad:.0f} px not masked"
    assert (mask == 0).mean() > 0.5, "the mask stays local to the hands"


def test_mask_box_is_padded_by_the_spec_and_clamped(generated, depth_mask):
    detection = depth_mask.detect(generated(GENERATED[1]))
    mask = depth_mask.render_extra("mask", detection)
    (instance,) = detection.instances
    x0, y0, x1, y1 = instance.bbox()
    pad = max(30.0, 0.15 * max(x1 - x0, y1 - y0))
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    assert abs(cols[0] - max(x0 - pad, 0)) <= 1 and abs(cols[-1] + 1 - min(x1 + pad, 512)) <= 1
    assert abs(rows[0] - max(y0 - pad, 0)) <= 1 and abs(rows[-1] + 1 - min(y1 + pad, 512)) <= 1
    wider = conditioners.get("hand_depth_mask", padding=0.5, min_padding=0)
    assert (wider.render_extra("mask", wider.filter(detection)) > 0).sum() > (mask > 0).sum()


def test_tight_mask_hugs_the_hand_and_still_covers_the_padded_keypoints(generated):
    box = conditioners.get("hand_depth_mask")(generated(GENERATED[0]))
    with conditioners.get("hand_depth_mask", tight_mask=True) as tight_conditioner:
        tight = tight_conditioner(generated(GENERATED[0]))
    mask = tight.extras["mask"]
    assert 0 < (mask > 0).sum() < (box.extras["mask"] > 0).sum()
    ys, xs = np.mgrid[: mask.shape[0], : mask.shape[1]]
    for (x, y, pad), _ in padded_keypoint_windows(tight.detection):
        disk = (xs - x) ** 2 + (ys - y) ** 2 <= (pad - 1.5) ** 2
        assert (mask[disk] == 255).all()


def test_small_hands_are_flagged_not_dropped(generated, depth_mask):
    photo = Image.open(generated(GENERATED[1])).resize((192, 192))  # the hand shrinks to ~42x32 px
    detection = depth_mask.detect(photo)
    assert detection.skipped is None and detection.extra["small_hands"] == [0]
    full = depth_mask.detect(generated(GENERATED[1]))
    assert full.extra["small_hands"] == []


def synthetic_hand(tip_z: float) -> Detection:
    """A flat open hand, wrist at the bottom, fingers up; fingertips at depth `tip_z`."""
    points = []
    for finger in range(5):
        base_x = 80 + finger * 20
        for joint in range(4):
            z = tip_z * joint / 3
            points.append([base_x, 150 - joint * 25 - (0 if finger else -20), z, np.nan])
    points.insert(0, [120, 230, 0.0, np.nan])
    detection = Detection("hand_depth_mask", 256, 256, [Instance("right_hand", np.array(points))])
    detection.extra = {"mask": {"padding": 0.15, "min_padding": 30.0}}
    return detection


def test_nearest_is_brightest_and_background_black():
    cls = conditioners.conditioner_class("hand_depth_mask")
    towards = cls.draw(synthetic_hand(tip_z=-0.2))[..., 0]
    away = cls.draw(synthetic_hand(tip_z=+0.2))[..., 0]
    tip, wrist = (120, 75), (120, 228)  # (x, y) of the middle fingertip and the wrist
    assert towards[tip[1], tip[0]] > towards[wrist[1], wrist[0]] > 0
    assert away[tip[1], tip[0]] < away[wrist[1], wrist[0]]
    assert towards[0, 0] == 0 and towards[:20].max() == 0


def test_depth_and_mask_redraw_at_any_size_and_mirror():
    cls = conditioners.conditioner_class("hand_depth_mask")
    detection = synthetic_hand(tip_z=-0.1)
    mask = cls.render_extra("mask", detection)
    double = cls.render_extra("mask", detection, (512, 512))
    assert abs((double > 0).sum() - 4 * (mask > 0).sum()) <= 4 * 2 * 512
    mirrored = cls.render_extra("mask", detection.mirrored())
    assert np.abs(mirrored[:, ::-1].astype(int) - mask).sum() / 255 <= 2 * 256
    depth, depth_mirrored = cls.draw(detection), cls.draw(detection.mirrored())
    # x' = width - x: the mirrored drawing flipped back lies one pixel to the left
    flipped_back = depth_mirrored[:, ::-1, 0].astype(int)
    assert np.abs(flipped_back[:, :-1] - depth[:, 1:, 0]).mean() < 1.0
    assert cls.draw(Detection("hand_depth_mask", 64, 32)).max() == 0


def test_hand_repair_builder_writes_a_mask_column(tmp_path, data_dir):
    source = fx.generated_folder(data_dir, tmp_path)
    report = run_build("hand_repair", str(source), BuildSettings(), output=tmp_path / "out", progress=False)
    rows = open_dataset(str(tmp_path / "out"))
    assert report.rows == len(rows) == 5 and report.skipped == {"no_detection": 1, "unreadable": 1}
    assert {"image", "conditioning_image", "mask", "caption", "landmarks"} <= set(rows.features)
    cls = conditioners.conditioner_class("hand_depth_mask")
    for row in rows:
        assert row["image"].size == row["mask"].size == row["conditioning_image"].size == (512, 512)
        assert "making a hand gesture" in row["caption"]
        detection = Detection.from_json(row["landmarks"])
        stored = np.asarray(row["mask"])
        assert np.array_equal(stored, cls.render_extra("mask", detection)), "mask = re-drawn landmarks"
        depth = np.asarray(row["conditioning_image"].convert("L"))
        assert (depth[stored > 0] > 0).any() and (depth[stored == 0] > 0).mean() < 0.001
    assert json.loads(rows[0]["landmarks"])["extra"]["mask"]["min_padding"] == 30
    preview = Image.open(tmp_path / "out" / "preview.png")
    assert preview.width > 3 * 256, "the card preview shows photo, depth and mask"
    assert "`mask`" in (tmp_path / "out" / "README.md").read_text()
