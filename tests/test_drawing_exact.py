"""Our pure drawing against MediaPipe's own drawing_utils (and the LAION-Face spec), pixel for pixel."""

from __future__ import annotations

import numpy as np
import pytest
from mediapipe.framework.formats import landmark_pb2
from mediapipe.python.solutions import drawing_styles, drawing_utils, hands_connections, pose_connections
from mediapipe.python.solutions import face_mesh as mp_face_mesh

import conditioners
from conditioners import Detection, Instance

HAND_PHOTOS = [
    "hands/mediapipe_gesture_four_15a73593.jpg",
    "hands/hagrid_tile10_heart_two_hands.jpg",
    "hands/mmpose_freihand_00000355.jpg",
]
HOLISTIC_PHOTOS = ["hands/mediapipe_gesture_four_15a73593.jpg", "hands/mediapipe_gesture_call_1f5fb137.jpg"]
FACE_PHOTOS = [
    "faces/3ddfa_trump_hillary.jpg",
    "faces/skimage_astronaut.jpg",
    "faces/spiga_image_sportsfan.jpg",
]
OUTPUT_SIZES = [None, (333, 251), (1024, 1024)]


def to_proto(instance: Instance, size: tuple[int, int]) -> landmark_pb2.NormalizedLandmarkList:
    proto = landmark_pb2.NormalizedLandmarkList()
    for x, y, z, visibility in instance.points:
        landmark = proto.landmark.add(x=x / size[0], y=y / size[1], z=0.0 if np.isnan(z) else z)
        if not np.isnan(visibility):
            landmark.visibility = visibility
    return proto


def mediapipe_canvas(detection: Detection, size) -> np.ndarray:
    width, height = size or detection.size
    return np.zeros((height, width, 3), dtype=np.uint8)


def reference_hands(detection: Detection, size, encoded: bool) -> np.ndarray:
    canvas = mediapipe_canvas(detection, size)
    for instance in detection.instances:
        style = drawing_styles.get_default_hand_landmarks_style()
        if encoded:
            palm = {"right_hand": (251, 206, 177), "left_hand": (255, 255, 225)}[instance.kind]
            for idx in (0, 1, 5, 9, 13, 17):
                style[idx] = drawing_utils.DrawingSpec(color=palm, thickness=-1, circle_radius=5)
        drawing_utils.draw_landmarks(
            canvas,
            to_proto(instance, detection.size),
            hands_connections.HAND_CONNECTIONS,
            style,
            drawing_styles.get_default_hand_connections_style(),
        )
    return canvas


def reference_holistic(detection: Detection, size) -> np.ndarray:
    canvas = mediapipe_canvas(detection, size)
    connections = {
        "face": mp_face_mesh.FACEMESH_CONTOURS,
        "pose": pose_connections.POSE_CONNECTIONS,
        "left_hand": hands_connections.HAND_CONNECTIONS,
        "right_hand": hands_connections.HAND_CONNECTIONS,
    }
    for kind in ("face", "pose", "left_hand", "right_hand"):  # the documented drawing order
        for instance in detection.of_kind(kind):
            drawing_utils.draw_landmarks(canvas, to_proto(instance, detection.size), connections[kind])
    return canvas


def reference_laion_face(detection: Detection, size) -> np.ndarray:
    """The LAION-Face annotator as published: BGR specs, pupils as 4x4 squares, channels reversed."""
    spec = drawing_utils.DrawingSpec
    draw = {
        "head": spec((10, 200, 10), 2, 1),
        "left_eye": spec((180, 200, 10), 2, 1),
        "left_eyebrow": spec((180, 220, 10), 2, 1),
        "right_eye": spec((10, 200, 180), 2, 1),
        "right_eyebrow": spec((10, 220, 180), 2, 1),
        "mouth": spec((10, 180, 10), 2, 1),
    }
    connection_spec = {}
    for part, edges in (
        ("head", mp_face_mesh.FACEMESH_FACE_OVAL),
        ("left_eye", mp_face_mesh.FACEMESH_LEFT_EYE),
        ("left_eyebrow", mp_face_mesh.FACEMESH_LEFT_EYEBROW),
        ("right_eye", mp_face_mesh.FACEMESH_RIGHT_EYE),
        ("right_eyebrow", mp_face_mesh.FACEMESH_RIGHT_EYEBROW),
        ("mouth", mp_face_mesh.FACEMESH_LIPS),
    ):
        for edge in edges:
            connection_spec[edge] = draw[part]
    pupils = {468: (10, 200, 250), 473: (250, 200, 10)}
    canvas = mediapipe_canvas(detection, size)
    rows, cols, _ = canvas.shape
    for instance in detection.of_kind("face"):
        proto = to_proto(instance, detection.size)
        drawing_utils.draw_landmarks(canvas, proto, connection_spec.keys(), None, connection_spec)
        for idx, landmark in enumerate(proto.landmark):
            if idx not in pupils or landmark.HasField("visibility") and landmark.visibility < 0.9:
                continue
            if landmark.x >= 1.0 or landmark.x < 0 or landmark.y >= 1.0 or landmark.y < 0:
                continue
            x, y = int(cols * landmark.x), int(rows * landmark.y)
            canvas[y - 2 : y + 2, x - 2 : x + 2, :] = pupils[idx]
    return canvas[:, :, ::-1]


REFERENCES = {
    "hand_standard": lambda d, s: reference_hands(d, s, encoded=False),
    "hand_encoded": lambda d, s: reference_hands(d, s, encoded=True),
    "holistic": reference_holistic,
    "face_pupils": reference_laion_face,
}
PHOTOS = {
    "hand_standard": HAND_PHOTOS,
    "hand_encoded": HAND_PHOTOS,
    "holistic": HOLISTIC_PHOTOS,
    "face_pupils": FACE_PHOTOS,
}


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_drawing_matches_reference_on_real_detections(name, data_dir, conditioner_cache):
    conditioner = conditioner_cache(name)
    drawn_any = False
    for photo in PHOTOS[name]:
        detection = conditioner.detect(data_dir / "images" / photo)
        assert detection.instances, f"{photo}: expected a detection to draw"
        for size in OUTPUT_SIZES:
            ours = conditioners.draw(detection, size)
            reference = REFERENCES[name](detection, size)
            assert ours.shape == reference.shape
            np.testing.assert_array_equal(ours, reference, err_msg=f"{name} on {photo} at {size}")
            drawn_any |= bool(ours.any())
    assert drawn_any


def random_detection(name: str, rng: np.random.Generator, size=(640, 480)) -> Detection:
    """Landmarks that hit the edge cases: outside the image, on its border, low visibility."""
    counts = {"hand_standard": {"right_hand": 21, "left_hand": 21}, "face_pupils": {"face": 478}}
    counts["hand_encoded"] = counts["hand_standard"]
    counts["holistic"] = {"face": 468, "pose": 33, "left_hand": 21, "right_hand": 21}
    instances = []
    for kind, n in counts[name].items():
        normalized = rng.uniform(-0.1, 1.1, size=(n, 2)).astype(np.float32)
        normalized[:3] = [[0.0, 0.0], [1.0, 1.0], [0.99999, 0.5]]  # the exact borders
        visibility = rng.uniform(0, 1, size=n).astype(np.float32) if kind == "pose" else np.full(n, np.nan)
        points = np.column_stack([normalized.astype(np.float64) * size, np.zeros(n), visibility])
        instances.append(Instance(kind, points))
    return Detection(name, size[0], size[1], instances)


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_drawing_matches_reference_on_edge_case_landmarks(name):
    rng = np.random.default_rng(0)
    for _ in range(5):
        detection = random_detection(name, rng)
        for size in OUTPUT_SIZES:
            np.testing.assert_array_equal(
                conditioners.draw(detection, size), REFERENCES[name](detection, size)
            )


def test_face_pupils_colours_and_channel_order(data_dir, conditioner_cache):
    """The right iris of the subject is RGB (250, 200, 10), drawn as a 4x4 square at landmark 468."""
    detection = conditioner_cache("face_pupils").detect(data_dir / "images/faces/skimage_astronaut.jpg")
    image = conditioners.draw(detection)
    face = detection.instances[0]
    for idx, rgb in ((468, (250, 200, 10)), (473, (10, 200, 250))):
        x, y = int(face.points[idx, 0]), int(face.points[idx, 1])
        square = image[y - 2 : y + 2, x - 2 : x + 2].reshape(-1, 3)
        assert (square == rgb).all(), f"pupil {idx}"
    colours = {tuple(c) for c in image.reshape(-1, 3)}
    expected = {(0, 0, 0), (10, 200, 10), (10, 200, 180), (10, 220, 180), (180, 200, 10), (180, 220, 10)}
    expected |= {(10, 180, 10), (250, 200, 10), (10, 200, 250)}
    assert colours == expected


def test_canvas_palette_png_decodes_to_the_drawing(data_dir, conditioner_cache):
    from io import BytesIO

    from PIL import Image

    result = conditioner_cache("hand_encoded")(data_dir / "images/hands/hagrid_tile10_heart_two_hands.jpg")
    decoded = np.asarray(Image.open(BytesIO(result.to_png())).convert("RGB"))
    np.testing.assert_array_equal(decoded, result.to_array())


def test_topology_is_mediapipe_solutions_in_its_iteration_order():
    """conditioners.topology holds mp.solutions' connection sets as data (the Tasks API's differ), in the
    order those frozensets iterate: the order lines are drawn in."""
    from mediapipe.python.solutions import face_mesh_connections

    from conditioners import topology

    expected = {
        "HAND": hands_connections.HAND_CONNECTIONS,
        "HAND_PALM": hands_connections.HAND_PALM_CONNECTIONS,
        "HAND_THUMB": hands_connections.HAND_THUMB_CONNECTIONS,
        "HAND_INDEX_FINGER": hands_connections.HAND_INDEX_FINGER_CONNECTIONS,
        "HAND_MIDDLE_FINGER": hands_connections.HAND_MIDDLE_FINGER_CONNECTIONS,
        "HAND_RING_FINGER": hands_connections.HAND_RING_FINGER_CONNECTIONS,
        "HAND_PINKY": hands_connections.HAND_PINKY_FINGER_CONNECTIONS,
        "FACE_OVAL": mp_face_mesh.FACEMESH_FACE_OVAL,
        "FACE_LEFT_EYE": mp_face_mesh.FACEMESH_LEFT_EYE,
        "FACE_LEFT_EYEBROW": mp_face_mesh.FACEMESH_LEFT_EYEBROW,
        "FACE_RIGHT_EYE": mp_face_mesh.FACEMESH_RIGHT_EYE,
        "FACE_RIGHT_EYEBROW": mp_face_mesh.FACEMESH_RIGHT_EYEBROW,
        "FACE_LIPS": mp_face_mesh.FACEMESH_LIPS,
        "FACE_CONTOURS": face_mesh_connections.FACEMESH_CONTOURS,
        "POSE": pose_connections.POSE_CONNECTIONS,
    }
    for name, edges in expected.items():
        assert getattr(topology, name) == tuple(edges), name
