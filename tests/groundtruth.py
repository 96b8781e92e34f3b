"""Ground truth of ../shared/data as arrays, and the accuracy measures the tests assert on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

# MediaPipe Pose (33 points) -> COCO's 17 body keypoints, in COCO order.
POSE_TO_COCO = [0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28]


@dataclass
class GroundTruthHand:
    points: np.ndarray  # (21, 2), MediaPipe order (wrist first)
    valid: np.ndarray  # (21,) bool
    kind: str | None  # "left_hand" / "right_hand" where the dataset says

    @property
    def box_side(self) -> float:
        xy = self.points[self.valid]
        return float(np.max(xy.max(axis=0) - xy.min(axis=0)))


def _triples(flat: list[float]) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(flat, dtype=np.float64).reshape(-1, 3)
    return values[:, :2], values[:, 2] > 0


def ground_truth_hands(image: Path, annotation: dict) -> list[GroundTruthHand]:
    """Every annotated hand of a per-image annotation file (OneHand10K, FreiHAND, Panoptic, InterHand)."""
    name = image.name
    hands = []
    if "interhand" in name:
        derived = next(s for s in annotation["sources"] if "keypoints_xyv" in s)
        values = np.asarray(derived["keypoints_xyv"], dtype=np.float64)
        for kind, block in (("right_hand", values[:21]), ("left_hand", values[21:])):
            # InterHand: fingers tip-to-base, wrist last; MediaPipe: wrist first, fingers base-to-tip.
            order = [20] + [f * 4 + (3 - j) for f in range(5) for j in range(4)]
            block = block[order]
            hands.append(GroundTruthHand(block[:, :2], block[:, 2] > 0, kind))
        return hands
    for source in annotation["sources"]:
        file_name = source["images"][0]["file_name"]
        kind = None
        if "freihand" in name:
            kind = "right_hand"  # FreiHAND holds right hands only
        elif file_name.endswith("_l.jpg"):
            kind = "left_hand"
        elif file_name.endswith("_r.jpg"):
            kind = "right_hand"
        for ann in source["annotations"]:
            points, valid = _triples(ann["keypoints"])
            hands.append(GroundTruthHand(points, valid, kind))
    return hands


def ground_truth_bodies(annotation: dict) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """COCO 17-keypoint people: (points (17, 2), valid (17,), bbox xywh)."""
    source = next(s for s in annotation["sources"] if s.get("file", "").endswith("test_coco.json"))
    people = []
    for ann in source["annotations"]:
        points, valid = _triples(ann["keypoints"])
        people.append((points, valid, np.asarray(ann["bbox"], dtype=np.float64)))
    return people


def pck(predicted: np.ndarray, truth: np.ndarray, valid: np.ndarray, threshold: float) -> float:
    """Share of valid keypoints within `threshold` pixels."""
    distances = np.linalg.norm(predicted[valid] - truth[valid], axis=1)
    return float(np.mean(distances <= threshold))


def match_nearest(candidates: list[np.ndarray], truth: np.ndarray, valid: np.ndarray) -> int | None:
    """Index of the candidate with the smallest mean distance to the valid ground-truth points."""
    if not candidates:
        return None
    errors = [np.mean(np.linalg.norm(c[valid] - truth[valid], axis=1)) for c in candidates]
    return int(np.argmin(errors))


def matched_hands(detection, truths):
    """Greedy one-to-one matching of ground-truth hands to detections by mean keypoint error,
    keeping pairs whose mean error is under 0.35 x the hand's size (the other hand of a pair is ~2x away)."""
    pairs = []
    for t, truth in enumerate(truths):
        for d, inst in enumerate(detection.instances):
            error = np.mean(np.linalg.norm(inst.xy[truth.valid] - truth.points[truth.valid], axis=1))
            pairs.append((error / truth.box_side, t, d))
    used_t, used_d, matches = set(), set(), []
    for relative_error, t, d in sorted(pairs):
        if t in used_t or d in used_d or relative_error > 0.35:
            continue
        used_t.add(t)
        used_d.add(d)
        matches.append((truths[t], detection.instances[d]))
    return matches
