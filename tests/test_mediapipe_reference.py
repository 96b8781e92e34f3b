"""MediaPipe's landmarks on every shared photo, against those mediapipe 0.10.21 gave on numpy 1.26."""

from __future__ import annotations

import copy

import mediapipe_reference as reference
import numpy as np


def test_landmarks_match_the_mediapipe_0_10_21_reference(data_dir):
    stored = reference.read()
    assert stored["versions"]["mediapipe"] == "0.10.21" and stored["versions"]["numpy"].startswith("1.")
    found = sum(len(d["instances"]) for photos in stored["detections"].values() for d in photos.values())
    assert found > 200  # hands, faces, poses: not a file of empty detections
    assert reference.differences(stored["detections"], reference.detect_all(data_dir)) == []


def test_a_moved_point_or_a_lost_hand_is_named():
    stored = reference.read()["detections"]
    photo, hands = next((p, d) for p, d in stored["hand_standard"].items() if d["instances"])
    moved = copy.deepcopy(stored)
    point = moved["hand_standard"][photo]["instances"][0]["xy"][8]
    point[0] += 2e-4 * max(hands["size"])
    lost = copy.deepcopy(stored)
    lost["hand_standard"][photo]["instances"].pop(0)
    assert reference.differences(stored, stored) == []
    [message] = reference.differences(stored, moved)
    assert photo in message and "moved" in message
    [message] = reference.differences(stored, lost)
    assert photo in message and "hand_standard" in message


def test_the_hand_search_keeps_the_single_pass_hands(data_dir):
    """With the search on (the default), every hand of the reference is still there, on the same
    side, with the same landmarks: where the single pass found a hand, the search only adds hands
    (other people's, smaller ones) or replaces one it saw too small to draw well."""
    stored = reference.read()["detections"]["hand_standard"]
    searched = reference.detect_all(data_dir, {}, ("hand_standard",))["hand_standard"]
    total, moved = 0, []
    for photo, want in stored.items():
        found = searched[photo]["instances"]
        for hand in want["instances"]:
            total += 1
            xy = np.array(hand["xy"], float)
            same_side = [np.array(h["xy"], float) for h in found if h["kind"] == hand["kind"]]
            error = min((np.abs(other - xy).max() for other in same_side), default=np.inf)
            if not error <= 1e-4 * max(want["size"]):
                moved.append((photo, hand["kind"], float(error)))
    assert total > 30 and moved == []
    added = sum(len(searched[p]["instances"]) - len(w["instances"]) for p, w in stored.items())
    assert added > 0  # the search did run: people's and tiles' hands the single pass missed
