"""Landmark conditioners: photos in, landmarks and ControlNet conditioning images out.

import conditioners
with conditioners.get("hand_encoded") as hands:
    result = hands("photo.jpg")
    result.image.save("photo_hand.png")
    print(result.detection.to_json())

for result in conditioners.condition_many(hands, paths):  # overlapped I/O; one result per input
    ...
"""

from .torchvision_guard import install_import_guard

install_import_guard()  # before any library imports torchvision (see torchvision_guard)

from .base import Conditioned, Conditioner  # noqa: E402
from .detection import Detection, HintBox, Instance, SkipReason  # noqa: E402
from .drawing import Canvas, DrawingSpec  # noqa: E402
from .errors import OptionError, UnknownNameError, UserError  # noqa: E402
from .filters import Filters  # noqa: E402
from .images import IMAGE_SUFFIXES, ImageLoadError, LoadedImage, load_image, resize_and_crop  # noqa: E402
from .preview import contact_sheet, overlay  # noqa: E402
from .registry import accepted_options, available, conditioner_class, draw, get, register  # noqa: E402
from .runner import condition_many  # noqa: E402

__all__ = [
    "accepted_options",
    "IMAGE_SUFFIXES",
    "Canvas",
    "Conditioned",
    "Conditioner",
    "Detection",
    "DrawingSpec",
    "Filters",
    "HintBox",
    "ImageLoadError",
    "Instance",
    "LoadedImage",
    "OptionError",
    "SkipReason",
    "UnknownNameError",
    "UserError",
    "available",
    "condition_many",
    "conditioner_class",
    "contact_sheet",
    "overlay",
    "draw",
    "get",
    "load_image",
    "register",
    "resize_and_crop",
]
