"""Landmark conditioners: photos in, landmarks and ControlNet conditioning images out.

import conditioners
with conditioners.get("hand_encoded") as hands:
    result = hands("photo.jpg")
    result.image.save("photo_hand.png")
    print(result.detection.to_json())
"""

from .base import Conditioned, Conditioner
from .detection import Detection, Instance, SkipReason
from .drawing import Canvas, DrawingSpec
from .filters import Filters
from .images import ImageLoadError, LoadedImage, load_image
from .registry import available, conditioner_class, draw, get, register

__all__ = [
    "Canvas",
    "Conditioned",
    "Conditioner",
    "Detection",
    "DrawingSpec",
    "Filters",
    "ImageLoadError",
    "Instance",
    "LoadedImage",
    "SkipReason",
    "available",
    "conditioner_class",
    "draw",
    "get",
    "load_image",
    "register",
]
