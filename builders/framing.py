"""Where a build cuts its stored picture out of a photo when the recipe frames around the hands.

`[image] frame = "hands"` (see `recipe.py`): the conditioner detects on the whole photo, then the
row stores a crop around all the hands it found, resized so that its short side is
`resize_short_side`. The crop, in the photo's own pixels:

- the hands' union box (their landmarks' boxes), widened by `hand_context` about its centre; a
  square, its side the longer side of the widened box;
- at least `min_side` pixels (so that small hands are not enlarged past
  resize_short_side / min_side), at most the photo's short side;
- shifted, not shrunk, to stay inside the photo.

When the hands themselves do not fit in a square of the photo's short side (two hands further
apart than a landscape photo is tall), no square holds them. The crop then keeps the photo's whole
short side and, along its long side, the span of every hand's own context square (each hand's box
widened by `hand_context` about its own centre), clipped to the photo: every hand is kept, with its
context, and the stored picture is wider than square but never more elongated than the photo (a
thin strip around the hands alone would store a picture that is mostly not the photo, and that a
square training crop cuts anyway). Its short side is `resize_short_side`, and the row's framing
record says `"fallback": true`.

A photo whose detection has no hand (a conditioner that finds other kinds) is framed around all
the instances found instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from conditioners.detection import Detection
from conditioners.images import Framing, box_framing
from conditioners.mediapipe_hands import HAND_KINDS

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class HandFraming:
    """`frame = "hands"`: a crop around the detected hands, its short side resized to `short_side`."""

    short_side: int
    context: float
    min_side: int

    def source_box(self, detection: Detection) -> tuple[Box, bool]:
        """The crop (left, top, right, bottom, in the photo's pixels) for `detection` of the whole
        photo, and whether it is the rectangle fallback."""
        width, height = detection.size
        boxes = _boxes(detection)
        x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
        x1, y1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
        short = min(width, height)
        min_side = min(self.min_side, short)
        if max(x1 - x0, y1 - y0) <= short:
            side = min(max(max(x1 - x0, y1 - y0) * self.context, min_side), short)
            left = _inside((x0 + x1 - side) / 2, side, width)
            top = _inside((y0 + y1 - side) / 2, side, height)
            return (left, top, left + side, top + side), False
        # No square of the photo holds the hands: the photo's whole short side, and along its long
        # side the span of every hand's own context square.
        squares = [_widened(box, self.context) for box in boxes]
        if width >= height:
            left, right = max(0.0, min(s[0] for s in squares)), min(float(width), max(s[2] for s in squares))
            return (left, 0.0, right, float(height)), True
        top, bottom = max(0.0, min(s[1] for s in squares)), min(float(height), max(s[3] for s in squares))
        return (0.0, top, float(width), bottom), True

    def framing(self, detection: Detection) -> tuple[Framing, dict[str, Any]]:
        """The `Framing` of the stored picture (source: the whole upright photo) and the record the
        row's landmarks keep of it (`extra.framing`)."""
        box, fallback = self.source_box(detection)
        framing = box_framing(detection.size, box, self.short_side)
        record = {
            "frame": "hands",
            "source_size": list(framing.source_size),
            "resized_size": list(framing.resized_size),
            "offset": list(framing.offset),
            "size": list(framing.size),
            **({"fallback": True} if fallback else {}),
        }
        return framing, record


def _boxes(detection: Detection) -> list[Box]:
    """The hands' landmark boxes (else every instance's), clipped to the photo."""
    hands = [inst for inst in detection.instances if inst.kind in HAND_KINDS]
    width, height = detection.size
    boxes = []
    for instance in hands or detection.instances:
        x0, y0, x1, y1 = instance.bbox()
        x0, x1 = min(max(x0, 0.0), width), min(max(x1, 0.0), width)
        y0, y1 = min(max(y0, 0.0), height), min(max(y1, 0.0), height)
        boxes.append((x0, y0, max(x1, x0 + 1.0), max(y1, y0 + 1.0)))
    if not boxes:
        raise ValueError("nothing to frame: the detection has no instance")
    return boxes


def _widened(box: Box, context: float) -> Box:
    """The square of `box`'s longer side times `context`, about its centre."""
    side = max(box[2] - box[0], box[3] - box[1]) * context
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


def _inside(start: float, length: float, limit: float) -> float:
    """`start` moved so that [start, start + length] lies in [0, limit] (length <= limit)."""
    return min(max(start, 0.0), limit - length)
