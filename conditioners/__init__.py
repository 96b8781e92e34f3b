"""Landmark conditioners: photos in, landmarks and ControlNet conditioning images out.

import conditioners
with conditioners.get("hand_encoded") as hands:
    result = hands("photo.jpg")
    result.image.save("photo_hand.png")
    print(result.detection.to_json())
"""

from ._torch_compat import install_import_guard

install_import_guard()  # before any library imports torchvision (see _torch_compat)

from .base import Conditioned, Conditioner  # noqa: E402
from .detection import Detection, Instance, SkipReason  # noqa: E402
from .drawing import Canvas, DrawingSpec  # noqa: E402
from .filters import Filters  # noqa: E402
from .images import ImageLoadError, LoadedImage, load_image  # noqa: E402
from .registry import available, conditioner_class, draw, get, register  # noqa: E402

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
