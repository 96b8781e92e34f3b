"""Name -> conditioner class. Built-ins are imported lazily; third parties plug in with one line.

In-process:   `@conditioners.register("my_pose")` on a `Conditioner` subclass.
As a package: an entry point in the group `landmark_controlnet.conditioners`, e.g.
              `my_pose = "my_package.pose:MyPoseConditioner"` in its pyproject.toml.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from .base import Conditioner
from .detection import Detection
from .errors import OptionError, UnknownNameError

ENTRY_POINT_GROUP = "landmark_controlnet.conditioners"

# "module:Class", imported on first use so that listing names does not load any detector.
_BUILTINS: dict[str, str] = {
    "hand_standard": "conditioners.mediapipe_hands:StandardHandConditioner",
    "hand_encoded": "conditioners.mediapipe_hands:EncodedHandConditioner",
    "holistic": "conditioners.mediapipe_holistic:HolisticConditioner",
    "face_pupils": "conditioners.mediapipe_face:FacePupilsConditioner",
    "spiga68": "conditioners.spiga_faces:Spiga68Conditioner",
    "animal_pose": "conditioners.animal_pose:AnimalPoseConditioner",
    "hand_depth_mask": "conditioners.hand_depth:HandDepthMaskConditioner",
}
_registered: dict[str, type[Conditioner] | str] = {}


def register(name: str) -> Callable[[type[Conditioner]], type[Conditioner]]:
    """Class decorator that makes a conditioner available under `name`."""

    def decorator(cls: type[Conditioner]) -> type[Conditioner]:
        cls.name = name
        _registered[name] = cls
        return cls

    return decorator


def _table() -> dict[str, type[Conditioner] | str]:
    table: dict[str, type[Conditioner] | str] = dict(_BUILTINS)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        table.setdefault(entry.name, entry.value)
    table.update(_registered)
    return table


def available() -> list[str]:
    """Every registered conditioner name, sorted."""
    return sorted(_table())


def conditioner_class(name: str) -> type[Conditioner]:
    table = _table()
    if name not in table:
        raise UnknownNameError(
            f"unknown conditioner {name!r}; available: {', '.join(sorted(table))} "
            "(landmark-controlnet conditioners lists them)"
        )
    target = table[name]
    if isinstance(target, str):
        module_name, _, attr = target.partition(":")
        target = getattr(importlib.import_module(module_name), attr)
        target.name = name
        _registered[name] = target
    return target


def get(name: str, **options: Any) -> Conditioner:
    """A ready conditioner; `options` are its constructor's keyword arguments."""
    cls = conditioner_class(name)
    accepted = accepted_options(cls)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise OptionError(
            f"conditioner {name!r} takes no option {', '.join(unknown)}; its options: {', '.join(accepted)}"
        )
    check_option_types(cls, options)
    return cls(**options)


def accepted_options(cls: type[Conditioner]) -> list[str]:
    """The keyword options of `cls`, gathered along its constructors' `**options` chain."""
    return sorted(_option_parameters(cls))


def _option_parameters(cls: type[Conditioner]) -> dict[str, inspect.Parameter]:
    found: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        parameters = list(inspect.signature(init).parameters.values())[1:]
        for p in parameters:
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                found.setdefault(p.name, p)
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
    return found


# Annotation words -> the values they accept (an int is a fine float; a bool is no number).
_OPTION_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "str": (str,),
    "None": (type(None),),
}


def check_option_types(cls: type[Conditioner], options: dict[str, Any]) -> None:
    """Each option's value against its annotation (`int`, `float | None`, ...), before anything
    is built: a mistyped value is a one-line `OptionError`, not a failure deep in a detector."""
    parameters = _option_parameters(cls)
    for key, value in options.items():
        annotation = parameters[key].annotation
        words = [w.strip() for w in str(annotation).split("|")] if isinstance(annotation, str) else []
        if not words or any(w not in _OPTION_TYPES for w in words):
            continue  # an annotation this check does not read: the constructor checks it
        allowed = tuple(t for w in words for t in _OPTION_TYPES[w])
        bool_for_number = isinstance(value, bool) and bool not in allowed  # True is an int to Python
        if isinstance(value, allowed) and not bool_for_number:
            continue
        raise OptionError(f"option {key}={value!r}: {cls.name} expects {' or '.join(words)}")


def draw(detection: Detection, size: tuple[int, int] | None = None, style: str | None = None) -> Any:
    """Re-draw stored landmarks as an RGB array, in the style of `style` (default: its own)."""
    return conditioner_class(style or detection.conditioner).draw(detection, size)
