"""SPIGA (`300wpublic`, 68 iBUG points) on CPU, behind MediaPipe face detection boxes.

SPIGA's own `SPIGAFramework.__init__` moves the model to CUDA unconditionally and downloads from
Google Drive. `CpuSpigaFramework` keeps SPIGA's pre- and post-processing (crop, 3D model, camera
matrix, mapping back to image pixels) and loads the weights itself: a plain state dict, read with
`torch.load(weights_only=True)` onto the CPU, from the file `resolve_weights` finds.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ._mediapipe import quiet_native_logs
from .torchvision_guard import import_torchvision
from .weights import WeightsFile, resolve_weights

SPIGA_WEIGHTS = WeightsFile(
    filename="spiga_300wpublic.pt",
    description="SPIGA 300W weights (spiga_300wpublic.pt, 254 MB)",
    env_var="SPIGA_WEIGHTS",
    hub_repo="aprados/spiga",
    url="https://drive.google.com/uc?export=download&confirm=yes&id=1YrbScfMzrAAWMJQYgxdLZ9l57nmTdpQC",
    sha256=None,  # the authors publish none; Hub downloads are checked against the Hub's LFS SHA-256
)
SPIGA_CONFIG = "300wpublic"


def _import_spiga() -> tuple[Any, Any, Any, Any]:
    import_torchvision()  # SPIGA imports torchvision.transforms (for Compose only)
    with warnings.catch_warnings():  # SPIGA needs pkg_resources (setuptools<81), which warns
        warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
        from spiga.inference import pretreatment
        from spiga.inference.config import ModelConfig
        from spiga.inference.framework import SPIGAFramework
        from spiga.models.spiga import SPIGA
    return SPIGAFramework, ModelConfig, SPIGA, pretreatment


def load_spiga(weights_file: Path) -> Any:
    """SPIGA's framework with the model of `weights_file` on the CPU, ready for `.inference`."""
    import torch

    framework_class, model_config, network, pretreatment = _import_spiga()

    class CpuSpigaFramework(framework_class):
        def __init__(self) -> None:  # replaces SPIGA's (CUDA, Google Drive); its methods are kept
            self.model_cfg = model_config(SPIGA_CONFIG, load_model_url=False)
            self.gpus = []
            self.transforms = pretreatment.get_transformers(self.model_cfg)
            self.model_inputs = ["image", "model3d", "cam_matrix"]
            dataset = self.model_cfg.dataset
            self.model = network(num_landmarks=dataset.num_landmarks, num_edges=dataset.num_edges)
            state = torch.load(weights_file, map_location="cpu", weights_only=True)
            self.model.load_state_dict(state)
            self.model.eval()
            model_3d = pretreatment.AddModel3D(
                dataset.ldm_ids,
                ftmap_size=self.model_cfg.ftmap_size,
                focal_ratio=self.model_cfg.focal_ratio,
                totensor=True,
            )()
            self.model3d, self.cam_matrix = model_3d["model3d"], model_3d["cam_matrix"]

        def _data2device(self, data: Any) -> Any:  # SPIGA's sends everything to CUDA
            return data

    return CpuSpigaFramework()


class SpigaDetector:
    """RGB array -> [(68 x 2 points in its pixels, face score)], one per face, best first.

    `face_detectors` are MediaPipe FaceDetection graphs (its short- and full-range models each
    miss faces the other finds); their boxes are merged, overlapping ones counted once.
    """

    def __init__(self, face_detectors: list[Any], weights: str | None, box_padding: float, max_faces: int):
        self.face_detectors = face_detectors
        self.box_padding = box_padding
        self.max_faces = max_faces
        self.framework = load_spiga(resolve_weights(SPIGA_WEIGHTS, weights))

    def face_boxes(self, rgb: np.ndarray) -> list[tuple[list[float], float]]:
        """Face boxes as SPIGA's [x, y, w, h] in pixels, padded and clamped, best first."""
        height, width = rgb.shape[:2]
        found = []
        for detector in self.face_detectors:
            with quiet_native_logs():
                detections = detector.process(rgb).detections or []
            for detection in detections:
                box = detection.location_data.relative_bounding_box
                corners = (box.xmin, box.ymin, box.xmin + box.width, box.ymin + box.height)
                found.append((corners, float(detection.score[0])))
        boxes: list[tuple[list[float], float]] = []
        kept: list[tuple[float, float, float, float]] = []
        for corners, score in sorted(found, key=lambda item: -item[1]):
            if any(_iou(corners, other) > 0.5 for other in kept) or len(kept) == self.max_faces:
                continue
            kept.append(corners)
            x0, y0, x1, y1 = _pad(corners, self.box_padding)
            if x1 > x0 and y1 > y0:
                boxes.append(([x0 * width, y0 * height, (x1 - x0) * width, (y1 - y0) * height], score))
        return boxes

    def __call__(self, rgb: np.ndarray) -> list[tuple[np.ndarray, float]]:
        import torch

        boxes = self.face_boxes(rgb)
        if not boxes:
            return []
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])  # SPIGA reads OpenCV (BGR) images
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Default grid_sample and affine_grid behavior", UserWarning)
            landmarks = self.framework.inference(bgr, [xywh for xywh, _ in boxes])["landmarks"]
        scores = [score for _, score in boxes]
        return [(np.asarray(p, np.float64), score) for p, score in zip(landmarks, scores, strict=True)]

    def close(self) -> None:
        for detector in self.face_detectors:
            detector.close()


Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in [0, 1]


def _pad(box: Box, padding: float) -> Box:
    x0, y0, x1, y1 = box
    pad_x, pad_y = (x1 - x0) * padding, (y1 - y0) * padding
    return max(x0 - pad_x, 0.0), max(y0 - pad_y, 0.0), min(x1 + pad_x, 1.0), min(y1 + pad_y, 1.0)


def _iou(a: Box, b: Box) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    overlap = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - overlap
    return overlap / union if union > 0 else 0.0
