"""`spiga68` and `animal_pose` drawings from ground-truth points, against references of the spec.

The references draw straight into an RGB array with cv2 (no palette canvas), take the spiga68
colours by their matplotlib names as the spec gives them, and the animal skeleton as DESIGN
section 4 writes it, so a slip in the conditioners' constants or drawing shows here.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from matplotlib.colors import to_rgb

import conditioners
from conditioners import Detection, Instance
from conditioners.animal_pose import EDGE_COLORS, JOINT_COLORS

FACES_68 = [
    "faces/mmpose_300w_indoor_020.png",
    "faces/mmpose_300w_indoor_029.png",
    "faces/mmpose_300wlp_AFW_134212_1_0.jpg",
]
CAT = "animals/mmpose_animalpose_ca110.jpg"
SIZES = [None, (512, 512), (200, 300), (97, 61)]

SPIGA_SPEC = [  # first, end, matplotlib colour name, closed and filled
    (0, 17, "lime", False),
    (17, 22, "yellow", False),
    (22, 27, "yellow", False),
    (27, 31, "orange", False),
    (31, 36, "orange", False),
    (36, 42, "magenta", True),
    (42, 48, "magenta", True),
    (48, 60, "cyan", True),
    (60, 68, "blue", True),
]
ANIMAL_SKELETON_1_BASED = [
    (1, 2), (1, 3), (1, 6), (2, 4), (3, 5), (2, 3), (6, 8), (6, 9), (6, 10), (7, 8),
    (7, 11), (7, 12), (10, 14), (14, 18), (9, 13), (13, 17), (12, 16), (16, 20), (11, 15), (15, 19),
]  # fmt: skip
# Animal-Pose as mmpose stores it -> openpifpaf's order (Nose, L_eye, R_eye, L_ear, R_ear, Throat, ...).
MMPOSE_TO_OPENPIFPAF = [4, 0, 1, 2, 3, 5, 6, 7, *range(8, 20)]


def ground_truth_points(annotation: dict) -> tuple[np.ndarray, tuple[int, int]]:
    source = annotation["sources"][0]
    image = source["images"][0]
    values = np.asarray(source["annotations"][0]["keypoints"], np.float64).reshape(-1, 3)
    return values, (image["width"], image["height"])


def rgb(name: str) -> tuple[int, int, int]:
    return tuple(round(c * 255) for c in to_rgb(name))


def reference_spiga(points: np.ndarray, source: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    canvas = np.zeros((size[1], size[0], 3), np.uint8)
    scale = np.array(size, np.float64) / np.array(source, np.float64)
    for first, end, color, closed in SPIGA_SPEC:
        polygon = np.round(points[first:end, :2] * scale).astype(np.int32).reshape(-1, 1, 2)
        if closed:
            cv2.fillPoly(canvas, [polygon], rgb(color))
        cv2.polylines(canvas, [polygon], closed, rgb(color), 4)
    return canvas


def reference_animal(points: np.ndarray, source: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    canvas = np.zeros((size[1], size[0], 3), np.uint8)
    scale = np.array(size, np.float64) / np.array(source, np.float64)
    width = max(1, math.floor(min(size) * 0.01))
    radius = max(1, math.floor(min(size) * 0.015))
    present = points[:, 2] > 0
    centers = [tuple(int(round(v)) for v in xy) for xy in points[:, :2] * scale]
    for (a, b), color in zip(ANIMAL_SKELETON_1_BASED, EDGE_COLORS, strict=True):
        if present[a - 1] and present[b - 1]:
            cv2.line(canvas, centers[a - 1], centers[b - 1], color, width)
    for index in np.flatnonzero(present):
        cv2.circle(canvas, centers[index], radius, JOINT_COLORS[index], -1)
    return canvas


def face_detection(values: np.ndarray, size: tuple[int, int]) -> Detection:
    return Detection("spiga68", size[0], size[1], [Instance("face", values[:, :2])])


def cat_detection(annotation: dict) -> tuple[Detection, np.ndarray]:
    values, size = ground_truth_points(annotation)
    points = values[MMPOSE_TO_OPENPIFPAF]
    confidence = (points[:, 2] > 0).astype(np.float64)
    instance = Instance("animal", np.column_stack([points[:, :2], np.zeros(20), confidence]), 1.0)
    return Detection("animal_pose", size[0], size[1], [instance]), points


@pytest.mark.parametrize("photo", FACES_68)
def test_spiga68_draws_ground_truth_faces_as_the_spec(photo, data_dir, annotation):
    values, source = ground_truth_points(annotation(data_dir / "images" / photo))
    assert values.shape == (68, 3)
    detection = face_detection(values, source)
    for size in SIZES:
        ours = conditioners.draw(detection, size)
        reference = reference_spiga(values, source, size or source)
        np.testing.assert_array_equal(ours, reference, err_msg=f"{photo} at {size}")
    colours = {tuple(c) for c in np.unique(ours.reshape(-1, 3), axis=0)}
    assert colours == {(0, 0, 0)} | {rgb(name) for *_, name, _ in SPIGA_SPEC}


def test_spiga68_fills_eyes_and_lips_but_not_the_jaw(data_dir, annotation):
    values, source = ground_truth_points(annotation(data_dir / "images" / FACES_68[0]))
    drawing = conditioners.draw(face_detection(values, source))
    mouth_centre = np.round(values[48:60, :2].mean(axis=0)).astype(int)
    assert tuple(drawing[mouth_centre[1], mouth_centre[0]]) in {rgb("cyan"), rgb("blue")}
    for eye in (slice(36, 42), slice(42, 48)):
        centre = np.round(values[eye, :2].mean(axis=0)).astype(int)
        assert tuple(drawing[centre[1], centre[0]]) == rgb("magenta")
    cheek = np.round((values[3, :2] + values[48, :2]) / 2).astype(int)  # inside the open jaw line
    assert tuple(drawing[cheek[1], cheek[0]]) == (0, 0, 0)


def test_spiga68_leaves_out_missing_points():
    points = np.full((68, 2), np.nan)
    points[36:42] = [[10, 10], [20, 8], [30, 10], [30, 14], [20, 16], [10, 14]]
    drawing = conditioners.draw(Detection("spiga68", 64, 64, [Instance("face", points)]))
    assert {tuple(c) for c in np.unique(drawing.reshape(-1, 3), axis=0)} == {(0, 0, 0), rgb("magenta")}


def test_animal_pose_draws_the_ground_truth_cat_as_the_spec(data_dir, annotation):
    detection, points = cat_detection(annotation(data_dir / "images" / CAT))
    assert 0 < (points[:, 2] > 0).sum() < 20  # the cat has hidden joints: they must be left out
    for size in SIZES:
        ours = conditioners.draw(detection, size)
        reference = reference_animal(points, detection.size, size or detection.size)
        np.testing.assert_array_equal(ours, reference, err_msg=f"{CAT} at {size}")


def test_animal_pose_joint_colours_sit_on_the_joints(data_dir, annotation):
    detection, points = cat_detection(annotation(data_dir / "images" / CAT))
    drawing = conditioners.draw(detection)
    assert math.floor(min(detection.size) * 0.015) == 3  # 300x240: radius 3, lines 2 px
    last_drawn = {}  # a later joint's disk covers an earlier one's centre where they overlap
    for index in np.flatnonzero(points[:, 2] > 0):
        last_drawn[tuple(int(v) for v in points[index, :2])] = index
    for (x, y), index in last_drawn.items():
        assert tuple(drawing[y, x]) == JOINT_COLORS[index], f"joint {index} at {(x, y)}"
    assert not drawing[:3, :3].any()  # hidden joints are stored at (0, 0): nothing drawn there


def test_animal_pose_draws_every_animal():
    one = np.column_stack([np.linspace(10, 40, 20), np.linspace(10, 40, 20), np.zeros(20), np.ones(20)])
    two = one + [50, 0, 0, 0]
    alone = conditioners.draw(Detection("animal_pose", 100, 60, [Instance("animal", one, 0.9)]))
    both = conditioners.draw(
        Detection("animal_pose", 100, 60, [Instance("animal", one, 0.9), Instance("animal", two, 0.5)])
    )
    assert both[:, 60:].any() and not alone[:, 60:].any()
