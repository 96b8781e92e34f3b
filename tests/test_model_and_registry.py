"""Detection round trips, filters with their skip reasons, and the conditioner registry."""

from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest

import conditioners
from conditioners import Detection, Filters, Instance, SkipReason
from conditioners.registry import ENTRY_POINT_GROUP


@pytest.mark.parametrize(
    "name,photo",
    [
        ("hand_encoded", "hands/hagrid_tile10_heart_two_hands.jpg"),
        ("hand_standard", "hands/mediapipe_gesture_call_1f5fb137.jpg"),
        ("holistic", "hands/mediapipe_gesture_four_15a73593.jpg"),
        ("face_pupils", "faces/3ddfa_trump_hillary.jpg"),
    ],
)
def test_detection_json_round_trip_redraws_the_same_image(name, photo, data_dir, conditioner_cache):
    result = conditioner_cache(name)(data_dir / "images" / photo)
    assert result.detection.instances
    restored = Detection.from_json(json.dumps(json.loads(result.detection.to_json())))
    np.testing.assert_array_equal(conditioners.draw(restored), result.to_array())
    assert restored.to_dict() == result.detection.to_dict()


def test_detection_json_layout(data_dir, conditioner_cache):
    detection = conditioner_cache("holistic").detect(
        data_dir / "images/hands/mediapipe_gesture_four_15a73593.jpg"
    )
    record = json.loads(detection.to_json())
    assert {"conditioner", "width", "height", "instances", "skipped", "detector", "detector_version"} <= set(
        record
    )
    assert record["detector_version"] == "0.10.21"
    pose = next(inst for inst in record["instances"] if inst["kind"] == "pose")
    assert len(pose["points"]) == 33 and all(len(p) == 4 for p in pose["points"])
    face = next(inst for inst in record["instances"] if inst["kind"] == "face")
    assert face["points"][0][3] is None  # FaceMesh gives no visibility: stored as null


def test_points_are_input_pixels_at_any_detection_resolution(data_dir):
    path = data_dir / "images/hands/mediapipe_gesture_rock_15cb4e8b.jpg"
    results = []
    for long_side in (256, 512, None):
        with conditioners.get("hand_standard", detect_long_side=long_side) as hands:
            detection = hands.detect(path)
        assert detection.size == (384, 512)  # the upright photo's (width, height), at any resolution
        results.append(detection.instances[0].xy)
    size = results[-1].max(axis=0) - results[-1].min(axis=0)
    for xy in results[:-1]:
        assert np.abs(xy - results[-1]).mean() < 0.05 * size.max()


def test_output_size_is_what_the_caller_asks(data_dir, conditioner_cache):
    result = conditioner_cache("hand_standard")(
        data_dir / "images/hands/mmpose_freihand_00000355.jpg", size=(64, 96)
    )
    assert result.to_array().shape == (96, 64, 3) and result.image.size == (64, 96)


def _instance(kind: str, box: float, offset: float = 10.0, n: int = 21) -> Instance:
    t = np.linspace(0, 1, n)
    return Instance(kind, np.column_stack([offset + box * t, offset + box * t[::-1]]))


def test_filters_give_named_reasons():
    def detection(*instances, size=(400, 400)):
        return Detection("hand_standard", size[0], size[1], list(instances))

    assert Filters().apply(detection()).skipped == SkipReason.NO_DETECTION
    assert (
        Filters(min_image_side=500).apply(detection(_instance("left_hand", 100))).skipped == "image_too_small"
    )
    small = Filters(min_instance_size=50).apply(
        detection(_instance("left_hand", 20), _instance("right_hand", 80))
    )
    assert small.skipped is None and [i.kind for i in small.instances] == ["right_hand"]
    assert (
        Filters(min_instance_size=50).apply(detection(_instance("left_hand", 20))).skipped
        == "instance_too_small"
    )
    outside = _instance("left_hand", 300, offset=250)  # most points beyond the 400 px image
    assert Filters(min_keypoint_fraction=0.8).apply(detection(outside)).skipped == "too_few_keypoints"
    crowd = detection(*[_instance("face", 60, offset=o) for o in (0, 100, 200)])
    assert Filters(max_instances=2).apply(crowd).skipped == "too_many_instances"


def test_conditioner_options_reach_the_filters(data_dir):
    path = data_dir / "images/faces/skimage_astronaut.jpg"
    with conditioners.get("face_pupils") as faces:
        assert faces.detect(path).skipped is None
    with conditioners.get("face_pupils", min_instance_size=10_000) as faces:
        assert faces.detect(path).skipped == "instance_too_small"
    with conditioners.get("holistic") as holistic:
        assert holistic.detect(path).skipped == "missing_required_part"
    with conditioners.get("holistic", require_hands=False) as holistic:
        assert holistic.detect(path).skipped is None


def test_detector_is_built_once_and_released(data_dir):
    path = data_dir / "images/hands/mmpose_freihand_00000355.jpg"
    with conditioners.get("hand_standard") as hands:
        hands.detect(path)
        detector = hands.detector
        hands.detect(path)
        assert hands.detector is detector
    assert hands._detector is None


def test_registry_lists_builtins_and_rejects_unknown_names():
    assert {"hand_standard", "hand_encoded", "holistic", "face_pupils"} <= set(conditioners.available())
    with pytest.raises(KeyError, match="available"):
        conditioners.get("no_such_conditioner")


def test_register_decorator_and_entry_point_plugins(tmp_path, monkeypatch):
    from conditioners import registry

    monkeypatch.setattr(registry, "_registered", dict(registry._registered))  # leave no plugin behind

    @conditioners.register("test_inline")
    class Inline(conditioners.Conditioner):
        def _create_detector(self):
            return object()

        def _detect(self, pixels):
            return [Instance("face", np.array([[0.5, 0.5]]))]

        @classmethod
        def paint(cls, canvas, detection):
            canvas.circle((1, 1), 1, (255, 0, 0), -1)

    assert "test_inline" in conditioners.available()
    result = conditioners.get("test_inline")(np.zeros((10, 20, 3), dtype=np.uint8))
    assert result.detection.instances[0].xy.tolist() == [[10.0, 5.0]]

    # A real installed distribution advertising a conditioner through the entry-point group.
    package = tmp_path / "thirdparty_pose.py"
    package.write_text(
        textwrap.dedent(
            """
        from conditioners.mediapipe_hands import StandardHandConditioner

        class ThirdPartyHands(StandardHandConditioner):
            pass
        """
        )
    )
    dist = tmp_path / "thirdparty_pose-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-pose\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nthird_hands = thirdparty_pose:ThirdPartyHands\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "third_hands" in conditioners.available()
    plugin = conditioners.get("third_hands")
    assert type(plugin).__name__ == "ThirdPartyHands" and plugin.name == "third_hands"
    sys.modules.pop("thirdparty_pose", None)
