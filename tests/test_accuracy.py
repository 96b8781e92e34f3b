"""Detection quality on the real photos, against their ground truth.

The thresholds are the levels measured on these photos (README, "Accuracy") less a small margin;
a regression in detection, coordinate mapping or handedness drops below them.
"""

from __future__ import annotations

import numpy as np
import pytest
from groundtruth import (
    POSE_TO_COCO,
    ground_truth_bodies,
    ground_truth_hands,
    matched_hands,
    pck,
)

ANNOTATED_HANDS = [
    "mmpose_freihand_00000355.jpg",
    "mmpose_interhand_image44669.jpg",
    "mmpose_interhand_image69148.jpg",
    "mmpose_onehand10k_1402.jpg",
    "mmpose_onehand10k_33.jpg",
    "mmpose_panoptic_005880453_01.jpg",
]


@pytest.fixture(scope="module")
def hand_matches(data_dir, annotation, conditioner_cache):
    hands = conditioner_cache("hand_encoded")
    matches = []
    for name in ANNOTATED_HANDS:
        path = data_dir / "images/hands" / name
        matches += [
            (name, *m) for m in matched_hands(hands.detect(path), ground_truth_hands(path, annotation(path)))
        ]
    return matches


def test_hand_detection_rate(images, conditioner_cache):
    hands = conditioner_cache("hand_standard")
    photos = images("hands")
    found = [p.name for p in photos if not hands.detect(p).skipped]
    # Measured: 16 of 17 (the interlocked InterHand pair is missed).
    assert len(found) >= len(photos) - 2, sorted({p.name for p in photos} - set(found))


def test_hand_keypoints_pck(hand_matches):
    # Measured: 5 of 8 annotated hands matched; mean PCK@0.2 0.85, PCK@0.1 0.72 (of the hand's size).
    assert len(hand_matches) >= 5
    pck20 = [pck(inst.xy, truth.points, truth.valid, 0.2 * truth.box_side) for _, truth, inst in hand_matches]
    pck10 = [pck(inst.xy, truth.points, truth.valid, 0.1 * truth.box_side) for _, truth, inst in hand_matches]
    assert np.mean(pck20) >= 0.80, pck20
    assert np.mean(pck10) >= 0.65, pck10


def test_handedness_is_anatomical(hand_matches):
    sided = [(name, truth.kind, inst.kind) for name, truth, inst in hand_matches if truth.kind]
    assert ("mmpose_freihand_00000355.jpg", "right_hand", "right_hand") in sided
    correct = [s for s in sided if s[1] == s[2]]
    # Measured at long side 512: 2 of 3 (the ~50 px Panoptic hand is called right; see the next test).
    assert len(sided) >= 3 and len(correct) / len(sided) >= 0.66, sided


def test_freihand_right_hand_is_encoded_as_right(data_dir, conditioner_cache):
    import conditioners

    detection = conditioner_cache("hand_encoded").detect(
        data_dir / "images/hands/mmpose_freihand_00000355.jpg"
    )
    assert [inst.kind for inst in detection.instances] == ["right_hand"]
    image = conditioners.draw(detection)
    wrist_x, wrist_y = detection.instances[0].xy[0].astype(int)
    assert tuple(image[wrist_y, wrist_x]) == (251, 206, 177)


def test_panoptic_handedness_at_full_resolution(data_dir, annotation):
    """At 1280x720 the hands are ~50 px; at full detection resolution the cellist's fingering hand is
    found and called left (at long side 512 MediaPipe's classifier flips it: see README). The single
    pass misses the bowing hand; the hand search finds it from the cellist's pose, called right."""
    import conditioners

    path = data_dir / "images/hands/mmpose_panoptic_005880453_01.jpg"
    truth = ground_truth_hands(path, annotation(path))
    with conditioners.get("hand_standard", detect_long_side=None, hand_regions="none") as single:
        matches = matched_hands(single.detect(path), truth)
    assert [(truth.kind, inst.kind) for truth, inst in matches] == [("left_hand", "left_hand")]
    with conditioners.get("hand_standard", detect_long_side=None) as search:
        matches = matched_hands(search.detect(path), truth)
    assert sorted((truth.kind, inst.kind) for truth, inst in matches) == [
        ("left_hand", "left_hand"),
        ("right_hand", "right_hand"),
    ]


def test_holistic_body_against_coco(data_dir, annotation):
    import conditioners

    scores = []
    with conditioners.get("holistic", require_hands=False) as holistic:
        for name in ("mmpose_coco_000000000785.jpg", "mmpose_coco_000000196141.jpg"):
            path = data_dir / "images/bodies" / name
            pose = holistic.detect(path).of_kind("pose")
            assert pose, name
            predicted = pose[0].xy[POSE_TO_COCO]
            people = ground_truth_bodies(annotation(path))
            # Holistic tracks one person: score it against the annotated person it lies on.
            best = max(
                pck(predicted, points, valid, 0.1 * max(box[2:]))
                for points, valid, box in people
                if valid.any()
            )
            scores.append(best)
    # Measured: PCK@0.1 (of the person's box) 1.00 and 0.93.
    assert min(scores) >= 0.85 and np.mean(scores) >= 0.9, scores


# The annotated eye centres of each face scheme: 68 points (300W): the mean of each eye's six
# contour points; 106 (LaPa): its two pupil points; 19 (AFLW): the eye centres; 29 (COFW): the pupils.
EYE_CENTRES = {
    68: lambda kp: np.array([kp[36:42].mean(0), kp[42:48].mean(0)]),
    106: lambda kp: kp[[104, 105]],
    19: lambda kp: kp[[7, 10]],
    29: lambda kp: kp[[16, 17]],
}


def test_face_pupils_lie_on_the_annotated_eye_centres(images, annotation):
    import conditioners

    # The dataset filter (shorter side >= 384 px) would skip the small COFW and LaPa crops.
    faces = conditioners.get("face_pupils", min_image_side=0)
    annotated = [p for p in images("faces") if p.name.startswith("mmpose_")]
    assert len(annotated) == 7
    for path in annotated:
        detection = faces.detect(path)
        assert not detection.skipped, (path.name, detection.skipped)
        face = max(detection.instances, key=lambda inst: inst.size())
        assert face.points.shape == (478, 4)
        keypoints = np.array(annotation(path)["sources"][0]["annotations"][0]["keypoints"], float)
        keypoints = keypoints.reshape(-1, 3)[:, :2]
        eyes = EYE_CENTRES[len(keypoints)](keypoints)
        interocular = float(np.linalg.norm(eyes[0] - eyes[1]))
        pupils = face.points[[468, 473], :2]
        distances = np.linalg.norm(pupils[:, None] - eyes[None], axis=-1) / interocular  # pupil x eye
        nearest = distances.argmin(axis=1)
        # Measured: at most 0.09 of the interocular distance (300W indoor 029, a turned face).
        assert sorted(nearest) == [0, 1] and distances.min(axis=1).max() < 0.15, (path.name, distances)


@pytest.mark.parametrize("name", ["hand_standard", "hand_encoded", "holistic", "face_pupils"])
def test_no_detection_on_negatives(name, images):
    import conditioners

    # min_image_side=0 so that the detector really runs on every negative.
    with conditioners.get(name, min_image_side=0) as conditioner:
        for path in images("negatives"):
            detection = conditioner.detect(path)
            assert detection.skipped == "no_detection" and not detection.instances, (
                path.name,
                detection.skipped,
            )
