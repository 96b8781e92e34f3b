"""The hand search (`hand_regions`): shared photos pasted small into Full HD frames.

Each pasted hand's reference is the single pass's detection of the photo at its own size, mapped
through the paste. A hand counts as found when a detected hand of the same side lies within 0.3 of
its span (mean point distance), and its landmarks are scored by PCK@0.2 of the span.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

import conditioners
from conditioners import HintBox, Instance, OptionError
from conditioners.hand_regions import (
    Found,
    HandSearch,
    Region,
    SearchSettings,
    group_regions,
    same_hand,
    tile_boxes,
)

FULL_HD = (1920, 1080)
RIGHT_HAND = "hands/mmpose_freihand_00000355.jpg"  # FreiHAND: right hands only
HAND_ONLY = "hands/mediapipe_gesture_four_15a73593.jpg"
PEOPLE = ("hands/mediapipe_gesture_call_1f5fb137.jpg", "hands/hagrid_tile04_one_finger.jpg")
BACKGROUND = "negatives/sklearn_china.jpg"


@dataclass
class Frame:
    pixels: np.ndarray
    hands: list[Instance]  # the pasted photos' own hands, in frame pixels

    def hints(self, pad: float = 0.15) -> list[HintBox]:
        boxes = []
        for hand in self.hands:
            x0, y0, x1, y1 = hand.bbox()
            margin = pad * max(x1 - x0, y1 - y0)
            boxes.append(HintBox(x0 - margin, y0 - margin, x1 + margin, y1 + margin))
        return boxes


def own_hands(path: Path, mirror: bool) -> tuple[Image.Image, list[Instance]]:
    photo = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    if mirror:
        photo = ImageOps.mirror(photo)
    with conditioners.get("hand_encoded", hand_regions="none", detect_long_side=None) as single:
        found = single.detect(np.asarray(photo)).instances
    assert found, f"no hand in {path.name} at its own size"
    return photo, found


def paste(data_dir: Path, pasted: list[tuple[str, float, tuple[int, int], bool]]) -> Frame:
    """Each (photo, span of its largest hand in px, top-left, mirrored) pasted over the background."""
    background = Image.open(data_dir / "images" / BACKGROUND).convert("RGB")
    frame = ImageOps.fit(background, FULL_HD, Image.Resampling.LANCZOS)
    hands = []
    for name, hand_span, at, mirror in pasted:
        photo, found = own_hands(data_dir / "images" / name, mirror)
        scale = hand_span / max(max(h.bbox()[2] - h.bbox()[0], h.bbox()[3] - h.bbox()[1]) for h in found)
        size = (round(photo.width * scale), round(photo.height * scale))
        frame.paste(photo.resize(size, Image.Resampling.LANCZOS), at)
        for hand in found:
            points = hand.points.copy()
            points[:, 0] = points[:, 0] * size[0] / photo.width + at[0]
            points[:, 1] = points[:, 1] * size[1] / photo.height + at[1]
            hands.append(replace(hand, points=points))
    return Frame(np.asarray(frame), hands)


def match(reference: Instance, found: list[Instance]) -> Instance | None:
    span = max(reference.bbox()[2] - reference.bbox()[0], reference.bbox()[3] - reference.bbox()[1])
    distances = [np.linalg.norm(h.xy - reference.xy, axis=1).mean() / span for h in found]
    if not distances or min(distances) > 0.3:
        return None
    return found[int(np.argmin(distances))]


def pck(reference: Instance, hand: Instance, threshold: float = 0.2) -> float:
    span = max(reference.bbox()[2] - reference.bbox()[0], reference.bbox()[3] - reference.bbox()[1])
    return float(np.mean(np.linalg.norm(hand.xy - reference.xy, axis=1) < threshold * span))


@pytest.fixture(scope="module")
def left_and_right(data_dir) -> Frame:
    """A right hand and its mirror image (a left hand), 64 px each, far apart."""
    return paste(data_dir, [(RIGHT_HAND, 64, (300, 300), False), (RIGHT_HAND, 64, (1300, 650), True)])


@pytest.fixture(scope="module")
def hand_encoded():
    with conditioners.get("hand_encoded") as conditioner:
        yield conditioner


def test_hints_find_small_hands_and_keep_their_sides(left_and_right, hand_encoded):
    assert [h.kind for h in left_and_right.hands] == ["right_hand", "left_hand"]
    with conditioners.get("hand_encoded", hand_regions="none") as single:
        assert len(single.detect(left_and_right.pixels).instances) < 2  # what the search is for
    detection = hand_encoded.detect(left_and_right.pixels, hints=left_and_right.hints())
    assert len(detection.instances) == 2
    assert detection.extra["hints"] == 2 and detection.extra["hint_not_found"] == 0
    for reference in left_and_right.hands:
        hand = match(reference, detection.instances)
        assert hand is not None and hand.kind == reference.kind, reference.kind
        assert hand.extra["found_by"] == "hints"
        assert pck(reference, hand) >= 0.9
    # The hints' crops went through one detector call: the hands are far apart, so two crops.
    assert all(h.xy.min() >= 0 and h.xy[:, 0].max() < FULL_HD[0] for h in detection.instances)


def test_a_hint_without_a_hand_is_counted(left_and_right, hand_encoded):
    empty = HintBox(900, 100, 980, 180, "no_gesture")
    detection = hand_encoded.detect(left_and_right.pixels, hints=[*left_and_right.hints(), empty])
    assert detection.extra["hint_not_found"] == 1 and len(detection.instances) == 2


def test_a_hand_found_twice_is_one_instance(left_and_right, hand_encoded):
    hints = left_and_right.hints()
    shifted = [HintBox(h.x0 + 8, h.y0 - 6, h.x1 + 8, h.y1 - 6) for h in hints]
    detection = hand_encoded.detect(left_and_right.pixels, hints=hints + shifted + hints)
    assert sorted(h.kind for h in detection.instances) == ["left_hand", "right_hand"]


def test_tiles_find_a_hand_with_no_body_in_view(data_dir):
    frame = paste(data_dir, [(HAND_ONLY, 96, (1500, 700), False)])
    (reference,) = frame.hands
    with conditioners.get("hand_encoded", hand_regions="tiles") as tiles:
        detection = tiles.detect(frame.pixels)
    assert detection.extra["tiles"] > 10
    hand = match(reference, detection.instances)
    assert hand is not None and hand.kind == reference.kind and pck(reference, hand) >= 0.9
    assert hand.extra["found_by"] == "tiles"
    assert len(detection.instances) == 1  # overlapping tiles that saw it too merged into it
    with conditioners.get("hand_encoded") as auto:  # no person in view: "auto" tiles too
        searched = auto.detect(frame.pixels)
    assert searched.extra["people"] == 0 and searched.extra["tiles"] == detection.extra["tiles"]
    assert len(searched.instances) == 1 and match(reference, searched.instances) is not None


def test_pose_finds_the_hands_of_two_people(data_dir):
    frame = paste(data_dir, [(PEOPLE[0], 70, (150, 300), False), (PEOPLE[1], 70, (1250, 250), False)])
    with conditioners.get("hand_encoded", hand_regions="pose", max_num_hands=1) as pose:
        detection = pose.detect(frame.pixels)
    assert detection.extra["people"] >= 2
    for reference in frame.hands:
        hand = match(reference, detection.instances)
        assert hand is not None, reference.bbox()
        assert hand.extra["found_by"] in ("frame", "pose") and pck(reference, hand) >= 0.9
    assert any(h.extra["found_by"] == "pose" for h in detection.instances)


def test_bad_hints_are_ignored_with_a_warning(left_and_right, hand_encoded, caplog):
    bad = [
        HintBox(float("nan"), 0, 50, 50),
        HintBox(100, 100, 100, 160),  # zero width
        HintBox(5000, 5000, 5100, 5100),  # outside
    ]
    with caplog.at_level(logging.WARNING, logger="conditioners.hand_regions"):
        detection = hand_encoded.detect(left_and_right.pixels, hints=bad + left_and_right.hints()[:1])
    assert len([r for r in caplog.records if "ignored" in r.getMessage()]) == 3
    assert detection.extra["hints"] == 1 and detection.skipped is None
    with caplog.at_level(logging.WARNING, logger="conditioners.hand_regions"):
        only_bad = hand_encoded.detect(left_and_right.pixels, hints=bad)  # searched as without hints
    assert "hints" not in only_bad.extra and "people" in only_bad.extra


def test_the_tasks_backend_searches_too(left_and_right, hand_bundle):
    with conditioners.get("hand_encoded", backend="tasks", model_path=str(hand_bundle)) as tasks:
        detection = tasks.detect(left_and_right.pixels, hints=left_and_right.hints())
    assert sorted(h.kind for h in detection.instances) == ["left_hand", "right_hand"]
    assert {h.extra["found_by"] for h in detection.instances} == {"hints"}


def test_the_search_can_be_switched_off_and_is_the_single_pass(data_dir, images):
    photo = images("hands")[0]
    with conditioners.get("hand_standard", hand_regions="none") as single:
        assert single.load(photo).detail is None  # no full-resolution decode either
        assert "hints" not in single.detect(photo, hints=[HintBox(0, 0, 50, 50)]).extra


@pytest.mark.parametrize(
    "options",
    [
        {"hand_regions": "everywhere"},
        {"tile_overlap": 1.5},
        {"tile_size": 10},
        {"crop_context": 0.5},
        {"max_num_hands": "two"},
        {"max_num_hands": 0},
    ],
)
def test_bad_search_options_are_one_line_errors(options):
    with pytest.raises(OptionError, match=next(iter(options))):
        conditioners.get("hand_encoded", **options)


def test_tiles_cover_the_picture_with_overlap():
    settings = SearchSettings(tile_size=384, tile_scales=2, tile_overlap=0.3)
    tiles = tile_boxes(FULL_HD, settings)
    covered = np.zeros(FULL_HD[::-1], bool)
    for x0, y0, x1, y1 in tiles:
        assert x1 - x0 in (384, 768)
        covered[int(y0) : int(y1), int(x0) : int(x1)] = True
    assert covered.all()
    assert tile_boxes((300, 200), settings) == []  # the whole-frame pass already sees tile scale


def test_nearby_regions_share_a_crop_and_distant_ones_do_not():
    def region(x: float, y: float, span: float) -> Region:
        return Region(
            (x - 1.5 * span, y - 1.5 * span, x + 1.5 * span, y + 1.5 * span),
            (x, y, x + span, y + span),
            "hints",
        )

    close = group_regions([region(100, 100, 60), region(170, 110, 60)], 3.0, 2)
    far = group_regions([region(100, 100, 60), region(900, 500, 60)], 3.0, 2)
    crowd = group_regions([region(100, 100, 60), region(150, 100, 60), region(200, 100, 60)], 3.0, 2)
    assert len(close) == 1 and len(far) == 2 and len(crowd) == 2


def test_a_sharper_view_replaces_only_a_poorly_seen_hand():
    hand = Instance("left_hand", np.column_stack([np.linspace(0, 40, 21), np.linspace(0, 40, 21)]))
    moved = replace(hand, points=hand.points + 1.0)
    assert same_hand(hand, moved)
    search = HandSearch(
        SearchSettings(), None, None, None, np.zeros((10, 10, 3)), np.zeros((10, 10, 3)), (10, 10), 2
    )
    search.found = [Found(hand, pixel_size=4.0)]  # seen 10 detector px across
    search.add([Found(replace(moved, extra={"found_by": "tiles"}), pixel_size=1.0)])
    assert len(search.found) == 1 and search.found[0].instance.extra["found_by"] == "tiles"
    search.found = [Found(hand, pixel_size=0.25)]  # seen 160 px across: kept as it was
    search.add([Found(moved, pixel_size=0.1)])
    assert search.found[0].instance is hand


def test_a_tasks_pose_model_that_cannot_be_had_turns_the_pose_pass_off(
    left_and_right, hand_bundle, tmp_path, monkeypatch, caplog
):
    monkeypatch.setenv("MEDIAPIPE_POSE_LANDMARKER", str(tmp_path / "missing.task"))
    options = {"backend": "tasks", "model_path": str(hand_bundle)}
    with caplog.at_level(logging.WARNING), conditioners.get("hand_encoded", **options) as auto:
        detection = auto.detect(left_and_right.pixels)  # "auto": tiles stand in for the pose pass
    assert detection.extra["people"] == 0 and detection.extra["tiles"] > 0
    assert any("pose pass is off" in r.getMessage() for r in caplog.records)
    pose = conditioners.get("hand_encoded", hand_regions="pose", **options)
    with pose, pytest.raises(conditioners.UserError, match="missing.task"):
        pose.detect(left_and_right.pixels)  # asked for by name: a clear error


def test_a_process_that_never_closes_its_conditioner_still_exits(data_dir):
    """The pose pass's MediaPipe graph, left to the garbage collector at interpreter shutdown, can
    hang there: live conditioners are closed at exit instead."""
    script = (
        "import conditioners\n"
        "def run():\n"
        "    hands = conditioners.get('hand_depth_mask')\n"
        f"    return hands.detect({str(data_dir / 'images' / 'negatives' / 'fan_grass.jpg')!r}), hands\n"
        "detection, _ = run()\n"
        "assert 'people' in detection.extra, detection.extra\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def bright_square_hands(least_share: float):
    """A stand-in detector: the bright square in a crop is a hand, when it spans at least
    `least_share` of the crop (as the palm detector needs a hand large enough in its view)."""

    def detect(pixels: np.ndarray) -> list[Instance]:
        ys, xs = np.nonzero(pixels[..., 0] > 128)
        if len(xs) == 0:
            return []
        height, width = pixels.shape[:2]
        if (xs.max() - xs.min() + 1) < least_share * width:
            return []
        grid = np.linspace(0.0, 1.0, 21)
        points = np.column_stack(
            [
                (xs.min() + grid * (xs.max() - xs.min())) / width,
                (ys.min() + grid * (ys.max() - ys.min())) / height,
            ]
        )
        return [Instance("left_hand", points)]

    return detect


def square_picture(box: tuple[int, int, int, int], size: tuple[int, int] = (400, 300)) -> np.ndarray:
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    pixels[box[1] : box[3], box[0] : box[2]] = 255
    return pixels


def test_a_hint_missed_in_its_crop_is_looked_for_again_closer():
    pixels = square_picture((200, 100, 240, 140))
    search = HandSearch(
        SearchSettings(), None, bright_square_hands(0.4), None, pixels, lambda: pixels, (400, 300), 2
    )
    report = search.run(lambda: [], [HintBox(195, 95, 245, 145)])  # first crop: 150 px, hand 40 px
    assert report == {"hints": 1, "hint_not_found": 0}
    assert len(search.hands()) == 1 and search.hands()[0].extra["found_by"] == "hints"
    unfound = HandSearch(
        SearchSettings(), None, bright_square_hands(0.9), None, pixels, lambda: pixels, (400, 300), 2
    )
    assert unfound.run(lambda: [], [HintBox(195, 95, 245, 145)])["hint_not_found"] == 1


@pytest.mark.parametrize(("mode", "people_asked"), [("auto", 1), ("pose", 3)])
def test_auto_stops_looking_for_people_once_it_has_its_hands(mode, people_asked):
    pixels = square_picture((100, 100, 130, 130)) | square_picture((250, 100, 280, 130))
    asked = []

    def people(_: np.ndarray):
        for index in range(3):
            asked.append(index)
            person = np.full((33, 4), 0.5)  # both wrists of a person at the two squares
            person[[15, 17, 19], :2] = (115 / 400, 110 / 300), (115 / 400, 120 / 300), (115 / 400, 120 / 300)
            person[[16, 18, 20], :2] = (265 / 400, 110 / 300), (265 / 400, 120 / 300), (265 / 400, 120 / 300)
            person[11:13, :2] = (0.2, 0.5), (0.8, 0.5)
            yield person

    detect = bright_square_hands(0.0)
    settings = SearchSettings(hand_regions=mode, crop_context=2.0)
    search = HandSearch(settings, detect, detect, people, pixels, lambda: pixels, (400, 300), 2)
    report = search.run(lambda: [], [])
    assert len(search.hands()) == 2 and report["people"] == people_asked and len(asked) == people_asked
