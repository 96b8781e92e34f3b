"""Fidelity metrics on synthetic detections: known offsets, missing and extra instances, handedness."""

from __future__ import annotations

import numpy as np
import pytest

from conditioners.detection import Detection, Instance
from landmark_controlnet.evaluation.metrics import match_instances, score_row

BOX = 100.0  # every synthetic hand's landmark box is 100 px on its longer side


def hand(kind: str, origin: tuple[float, float], count: int = 21) -> Instance:
    rng = np.random.default_rng(count)
    xy = rng.uniform(0, BOX, size=(count, 2))
    xy[0], xy[1] = (0, 0), (BOX, BOX)  # pin the box
    return Instance(kind=kind, points=xy + np.asarray(origin))


def detection(*instances: Instance) -> Detection:
    return Detection(conditioner="hand_encoded", width=1000, height=1000, instances=list(instances))


def shifted(instance: Instance, offsets: np.ndarray) -> Instance:
    points = instance.points.copy()
    points[:, 0] += offsets
    return Instance(kind=instance.kind, points=points)


def test_known_offsets_give_the_pck_they_should():
    ref = hand("left_hand", (100, 100))
    # Offsets of 0.03, 0.07, 0.15 and 0.3 box sizes, on 6, 5, 5 and 5 points.
    offsets = np.repeat([0.03, 0.07, 0.15, 0.3], [6, 5, 5, 5]) * BOX
    summary = score_row(detection(ref), detection(shifted(ref, offsets))).summary()
    assert summary["instance_recall"] == 1.0
    assert summary["pck_0.05"] == pytest.approx(6 / 21)
    assert summary["pck_0.1"] == pytest.approx(11 / 21)
    assert summary["pck_0.2"] == pytest.approx(16 / 21)
    assert summary["mean_error"] == pytest.approx(offsets.mean() / BOX)
    assert summary["handedness_agreement"] == 1.0
    assert summary["extra_instances"] == 0


def test_a_missing_instance_gives_recall_n_minus_one_over_n_and_misses_all_its_points():
    refs = [hand("left_hand", (x, 100)) for x in (0, 300, 600)]
    score = score_row(detection(*refs), detection(refs[0], refs[2])).summary()
    assert score["instance_recall"] == pytest.approx(2 / 3)
    assert score["pck_0.05"] == pytest.approx(2 / 3)


def test_an_extra_instance_is_counted_and_does_not_steal_a_match():
    ref = hand("right_hand", (100, 100))
    stray = hand("right_hand", (700, 700))
    score = score_row(detection(ref), detection(stray, ref)).summary()
    assert score["extra_instances"] == 1
    assert score["instance_recall"] == 1.0
    assert score["pck_0.05"] == 1.0


def test_hands_match_across_handedness_and_the_disagreement_is_counted():
    ref = detection(hand("left_hand", (100, 100)), hand("right_hand", (500, 100)))
    swapped = detection(hand("right_hand", (100, 100)), hand("left_hand", (500, 100)))
    score = score_row(ref, swapped).summary()
    assert score["instance_recall"] == 1.0
    assert score["handedness_agreement"] == 0.0


def test_the_assignment_is_optimal_not_greedy():
    a, b = hand("left_hand", (0, 0)), hand("left_hand", (30, 0))
    # The closest pair is b-g0; greedy would take it and leave a unmatched (a-g1 is past the gate).
    g0, g1 = shifted(a, np.full(21, 20.0)), shifted(b, np.full(21, 25.0))
    pairs = dict(match_instances([a, b], [g0, g1]))
    assert pairs == {0: 0, 1: 1}


def test_far_apart_instances_and_other_kinds_do_not_match():
    ref = detection(hand("left_hand", (0, 0)))
    far = detection(hand("left_hand", (600, 600)))
    face = detection(Instance(kind="face", points=hand("left_hand", (0, 0)).points))
    for generated in (far, face):
        score = score_row(ref, generated).summary()
        assert score["instance_recall"] == 0.0
        assert score["pck_0.2"] == 0.0
        assert score["extra_instances"] == 1
        assert score["handedness_agreement"] is None


def test_an_unreadable_image_is_a_full_miss_and_rows_merge_into_micro_averages():
    ref = hand("left_hand", (100, 100))
    good = score_row(detection(ref), detection(ref))
    missing = score_row(detection(ref, hand("right_hand", (500, 100))), None)
    total = good.merge(missing).summary()
    assert total["rows"] == 2 and total["missed_images"] == 1
    assert total["instance_recall"] == pytest.approx(1 / 3)
    assert total["pck_0.1"] == pytest.approx(21 / 63)
    assert total["mean_error"] == 0.0


def test_focus_points_get_their_own_error():
    face = Instance(kind="face", points=np.random.default_rng(0).uniform(0, BOX, (478, 2)))
    face.points[:2, :2] = [[0, 0], [BOX, BOX]]
    moved = face.points.copy()
    moved[[468, 473], 0] += 0.1 * BOX
    ref = Detection(conditioner="face_pupils", width=500, height=500, instances=[face])
    gen = Detection(conditioner="face_pupils", width=500, height=500, instances=[Instance("face", moved)])
    score = score_row(ref, gen, focus_indices=(468, 473)).summary()
    assert score["focus_error"] == pytest.approx(0.1)
    assert score["pck_0.05"] == pytest.approx(476 / 478)
