"""The hand search: finding hands too small for MediaPipe's whole-frame pass.

MediaPipe Hands finds a hand through a palm detector that sees the whole picture at 192x192, so
a hand spanning less than about a sixth of the frame is missed (a 100 px hand in a Full HD photo).
The palm detector finds the same hand in a crop two to six times the hand's size, whatever the
hand's size in pixels. So after (or instead of) the whole-frame pass, the search runs the hand
landmarker again on square crops of the full-resolution picture, taken from:

- **hints**: boxes where the caller knows a hand to be (HaGRID's `bboxes`);
- **pose**: the wrist, index and pinky landmarks of MediaPipe Pose, a region per wrist, as
  Holistic finds its hands; one person after another (`PeopleFinder`);
- **tiles**: overlapping tiles at one or more scales, for hands with no body in view.

Landmarks map back to input pixels; a hand found by several passes is kept once, from the pass
that saw it largest. `hand_regions="auto"` runs only the passes that can still add a hand (see
`HandSearch.run`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from .detection import HintBox, Instance
from .errors import OptionError

log = logging.getLogger(__name__)

HAND_REGION_MODES = ("auto", "hints", "pose", "tiles", "none")
Box = tuple[float, float, float, float]  # x0, y0, x1, y1

# MediaPipe Pose landmarks of each side: wrist, pinky knuckle, index knuckle.
POSE_HANDS = {"left_hand": (15, 17, 19), "right_hand": (16, 18, 20)}
MIN_WRIST_VISIBILITY = 0.3
# A hand spans about this many times the pose's wrist-to-knuckles distance.
HAND_SPAN_PER_WRIST_REACH = 2.2
HAND_SPAN_PER_SHOULDERS = 0.5
# A crop hand found closer than this to a crop edge (fraction of the crop) is cut by it.
EDGE_MARGIN = 0.02
# Two hands are one when their boxes overlap this much (IoU), or their points are this close
# (mean distance as a fraction of the larger span).
SAME_HAND_IOU = 0.3
SAME_HAND_DISTANCE = 0.25
# Hands the region passes find smaller than this (input pixels) are dropped: too small to draw or
# train on, and where false hands (paws, textures) gather.
MIN_REGION_HAND = 24.0
# Crop sides (x the hint's side) a hint not found is looked for again in, in order.
HINT_RETRY_CONTEXTS = (1.8, 5.0)
# A hand spanning this many detector pixels is seen well enough to keep its first detection.
WELL_SEEN_SPAN = 96.0


# The search's numeric options: [low, high).
OPTION_RANGES = {
    "crop_context": (1.0, math.inf),
    "tile_size": (64, math.inf),
    "tile_scales": (1, 8),
    "tile_overlap": (0.0, 0.9),
    "max_people": (1, 64),
}


@dataclass(frozen=True)
class SearchSettings:
    """What the hand search does; the hand conditioners' options of the same names.

    - hand_regions: "auto" (every pass that can still add a hand), "hints", "pose", "tiles", or
      "none" (the whole-frame pass only, as before the search existed).
    - crop_context: crop side over the hand's expected span (hints and pose).
    - tile_size: the smallest tile side, in input pixels; `tile_scales` sizes, each twice the last.
    - tile_overlap: the share of a tile its neighbour overlaps.
    - max_people: how many people the pose pass looks for.
    """

    hand_regions: str = "auto"
    crop_context: float = 3.0
    tile_size: int = 384
    tile_scales: int = 2
    tile_overlap: float = 0.3
    max_people: int = 4

    def __post_init__(self) -> None:
        if self.hand_regions not in HAND_REGION_MODES:
            raise OptionError(
                f"hand_regions={self.hand_regions!r}: choose one of {', '.join(HAND_REGION_MODES)}"
            )
        for name, (low, high) in OPTION_RANGES.items():
            value = getattr(self, name)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not (number and low <= value < high):
                raise OptionError(
                    f"{name}={value!r}: expected a number from {low} up to (not including) {high}"
                )

    def runs(self, name: str) -> bool:
        return self.hand_regions in ("auto", name)


@dataclass(frozen=True)
class Region:
    """A square crop to search (input pixels), the hand box it is expected to hold, and its pass."""

    crop: Box
    expected: Box
    found_by: str


@dataclass
class Found:
    """A hand found by one pass, in input pixels, and how many input pixels its detector pixel held."""

    instance: Instance
    pixel_size: float

    @property
    def detail(self) -> float:
        """The hand's span in the detector's own pixels: more is a sharper view."""
        return span(self.instance.bbox()) / self.pixel_size


# The detector's one pass: normalised instances for an RGB array.
DetectFn = Callable[[np.ndarray], list[Instance]]
# People in an RGB array, one at a time: (33, 4) normalised pose landmarks each.
PeopleFn = Callable[[np.ndarray], Iterator[np.ndarray]]


@dataclass
class HandSearch:
    """One picture's search. `pixels` is the detector's copy of the picture (people are looked for
    there), `detail` the picture at the most resolution decoded (hands are looked for there),
    `size` the input's (width, height)."""

    settings: SearchSettings
    detect: DetectFn  # for crops no one vouches for (pose, tiles)
    detect_hinted: DetectFn  # for crops around hints, which the caller vouches for
    find_people: PeopleFn
    pixels: np.ndarray
    detail_of: Callable[[], np.ndarray]  # `detail`, decoded on first use
    size: tuple[int, int]
    max_hands: int
    found: list[Found] = field(default_factory=list)
    people: int = 0

    @property
    def detail(self) -> np.ndarray:
        return self.detail_of()

    @property
    def pixel_size(self) -> float:
        """Input pixels per pixel of `detail`."""
        return self.size[0] / self.detail.shape[1]

    def run(self, frame_pass: Callable[[], list[Instance]], hints: Sequence[HintBox]) -> dict:
        """Every pass the settings and the picture call for; returns what the search did.

        With hints, only the hinted regions are searched, at full resolution: hints account for
        every hand (HaGRID boxes every hand, `no_gesture` ones included), so the whole-frame,
        pose and tile passes could only add false hands and time. Without hints, the whole-frame
        pass runs; "auto" then searches around people's wrists while it found fewer than
        `max_hands` hands, and tiles the picture only when no person is in view."""
        usable = usable_hints(hints, self.size) if self.settings.runs("hints") else []
        if usable:
            missed = self.search([hint_region(h, self.settings, self.size) for h in usable])
            return {"hints": len(usable), "hint_not_found": missed}
        self.found = [Found(tag(hand, "frame"), self.frame_pixel_size) for hand in frame_pass()]
        report: dict = {}
        if self.settings.runs("pose") and self._may_add_hands():
            report["people"] = self.search_people()
        if self.settings.runs("tiles") and self._tiles_needed():
            report["tiles"] = self.search_tiles()
        return report

    @property
    def frame_pixel_size(self) -> float:
        """Input pixels per pixel of the whole-frame pass's picture."""
        return self.size[0] / self.pixels.shape[1]

    def search_people(self) -> int:
        """Search each person's wrists, one person at a time; "auto" stops looking for people once
        it has `max_hands` hands, as every further person costs another pose pass."""
        for person in self.find_people(self.pixels):
            self.people += 1
            self.search(wrist_regions(person, self.settings, self.size))
            if self.settings.hand_regions == "auto" and len(self.found) >= self.max_hands:
                break
        return self.people

    def _may_add_hands(self) -> bool:
        return self.settings.hand_regions != "auto" or len(self.found) < self.max_hands

    def _tiles_needed(self) -> bool:
        if self.settings.hand_regions != "auto":
            return True
        larger = max(self.size) > self.settings.tile_size * 1.5
        close_up = any(span(f.instance.bbox()) >= self.settings.tile_size for f in self.found)
        return larger and not close_up and self.people == 0 and len(self.found) < self.max_hands

    def hands(self) -> list[Instance]:
        return [f.instance for f in self.found]

    def search(self, regions: list[Region]) -> int:
        """Search every region no hand found so far accounts for, nearby regions in one crop;
        returns how many stayed empty."""
        open_regions = [r for r in regions if not self._accounted(r.expected)]
        for group in group_regions(open_regions, self.settings.crop_context, self.max_hands):
            self.add(self.detect_crop(group.crop, group.found_by))
        for region in open_regions:
            if region.found_by == "hints":
                self.retry_hint(region)
        return sum(not self._accounted(r.expected) for r in open_regions)

    def retry_hint(self, region: Region) -> None:
        """A hinted hand not found: the caller vouches for it, so look again, alone, closer and
        then wider (a second hand or a face in the crop can draw the palm detector away)."""
        for context in HINT_RETRY_CONTEXTS:
            if self._accounted(region.expected):
                return
            self.add(self.detect_crop(around(region.expected, span(region.expected) * context), "hints"))

    def search_tiles(self) -> int:
        tiles = tile_boxes(self.size, self.settings)
        for tile in tiles:
            self.add(self.detect_crop(tile, "tiles"))
        return len(tiles)

    def _accounted(self, expected: Box) -> bool:
        return any(covers(f.instance.bbox(), expected) for f in self.found)

    def detect_crop(self, crop: Box, found_by: str, retry: bool = True) -> list[Found]:
        """The hands in `crop` (input pixels), cut from `detail`, mapped back to input pixels.

        A hand the crop's edge cuts is looked for again, once, in a crop around it: the region
        was guessed too small (a foreshortened wrist, a loose hint)."""
        scale = self.pixel_size
        x0, y0, x1, y1 = (round(v / scale) for v in crop)
        height, width = self.detail.shape[:2]
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
        if x1 - x0 < 8 or y1 - y0 < 8:
            return []
        pixels = np.ascontiguousarray(self.detail[y0:y1, x0:x1])
        found = []
        for hand in (self.detect_hinted if found_by == "hints" else self.detect)(pixels):
            points = hand.points.copy()
            points[:, 0] = (points[:, 0] * (x1 - x0) + x0) * scale
            points[:, 1] = (points[:, 1] * (y1 - y0) + y0) * scale
            moved = tag(replace(hand, points=points), found_by)
            box = moved.bbox()
            if span(box) < MIN_REGION_HAND:
                continue
            if not cut_by_crop(box, (x0 * scale, y0 * scale, x1 * scale, y1 * scale), self.size):
                found.append(Found(moved, scale))
            elif retry:
                wider = around(box, span(box) * self.settings.crop_context)
                found += self.detect_crop(wider, found_by, retry=False)
        return found

    def add(self, hands: list[Found]) -> None:
        """Merge `hands` in: a duplicate keeps the view that saw the hand largest."""
        for hand in hands:
            same = next((i for i, f in enumerate(self.found) if same_hand(f.instance, hand.instance)), None)
            if same is None:
                self.found.append(hand)
            elif sharper(hand, self.found[same]):
                self.found[same] = hand


def sharper(new: Found, old: Found) -> bool:
    """Whether `new` should replace `old`, the same hand found by an earlier pass: only when the
    earlier view was small for the landmark model and the new one is much larger, so that hands
    the whole-frame pass saw well keep exactly the landmarks it gave them."""
    return old.detail < WELL_SEEN_SPAN and new.detail > old.detail * 1.5


def group_regions(regions: list[Region], context: float, most: int) -> list[Region]:
    """`regions` merged into fewer crops: one detector call finds every hand in a crop, so two
    hands side by side cost one palm detection, not two. Regions join while the smallest hand
    expected in the crop still spans at least 1 / (1.5 x context) of it, and at most `most` do."""
    groups: list[tuple[Region, int, float]] = []  # the crop, its regions, its smallest hand
    for region in regions:
        for i, (group, count, smallest) in enumerate(groups):
            merged = merge(group, region, context)
            smallest = min(smallest, span(region.expected))
            if count < most and smallest * 1.5 * context >= span(merged.crop):
                groups[i] = (merged, count + 1, smallest)
                break
        else:
            groups.append((region, 1, span(region.expected)))
    return [group for group, _, _ in groups]


def merge(a: Region, b: Region, context: float) -> Region:
    """One square crop around both regions' expected boxes, with the context of the larger hand."""
    expected = (
        min(a.expected[0], b.expected[0]),
        min(a.expected[1], b.expected[1]),
        max(a.expected[2], b.expected[2]),
        max(a.expected[3], b.expected[3]),
    )
    largest = max(span(a.expected), span(b.expected))
    side = max(largest * context, span(expected) + largest)
    return Region(around(expected, side), expected, a.found_by)


def tag(hand: Instance, found_by: str) -> Instance:
    return replace(hand, extra={**hand.extra, "found_by": found_by})


def span(box: Box) -> float:
    return max(box[2] - box[0], box[3] - box[1])


def iou(a: Box, b: Box) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def covers(hand: Box, expected: Box) -> bool:
    """A found hand accounts for an expected box when they overlap or its centre lies inside."""
    cx, cy = centre(hand)
    inside = expected[0] <= cx <= expected[2] and expected[1] <= cy <= expected[3]
    return inside or iou(hand, expected) >= SAME_HAND_IOU


def same_hand(a: Instance, b: Instance) -> bool:
    if iou(a.bbox(), b.bbox()) >= SAME_HAND_IOU:
        return True
    distance = np.nanmean(np.linalg.norm(a.xy - b.xy, axis=1))
    return bool(distance < SAME_HAND_DISTANCE * max(span(a.bbox()), span(b.bbox()), 1.0))


def cut_by_crop(hand: Box, crop: Box, size: tuple[int, int]) -> bool:
    """Whether `hand` touches an edge of `crop` that is not also the picture's edge."""
    margin = EDGE_MARGIN * span(crop)
    edges = (
        (hand[0] - crop[0] < margin, crop[0] > 0),
        (hand[1] - crop[1] < margin, crop[1] > 0),
        (crop[2] - hand[2] < margin, crop[2] < size[0]),
        (crop[3] - hand[3] < margin, crop[3] < size[1]),
    )
    return any(near and inner for near, inner in edges)


def centre(box: Box) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def around(box: Box, side: float) -> Box:
    """The square of `side` centred on `box`."""
    return square(*centre(box), side)


def square(cx: float, cy: float, side: float) -> Box:
    half = side / 2
    return (cx - half, cy - half, cx + half, cy + half)


def usable_hints(hints: Sequence[HintBox], size: tuple[int, int]) -> list[HintBox]:
    """The hints that can be searched; the others are logged and ignored."""
    usable = []
    for hint in hints:
        problem = hint.problem(size)
        if problem:
            log.warning("hand hint %s ignored: %s", hint.to_dict(), problem)
        else:
            usable.append(hint)
    return usable


def hint_region(hint: HintBox, settings: SearchSettings, size: tuple[int, int]) -> Region:
    box = (
        max(hint.x0, 0.0),
        max(hint.y0, 0.0),
        min(hint.x1, float(size[0])),
        min(hint.y1, float(size[1])),
    )
    return Region(around(box, span(box) * settings.crop_context), box, "hints")


def wrist_regions(person: np.ndarray, settings: SearchSettings, size: tuple[int, int]) -> list[Region]:
    """A region per visible wrist of one person's pose (normalised (33, 4) landmarks)."""
    regions = []
    scale = np.asarray(size, dtype=np.float64)
    shoulders = float(np.nan_to_num(np.linalg.norm((person[11, :2] - person[12, :2]) * scale)))
    for wrist, pinky, index in POSE_HANDS.values():
        if not person[wrist, 3] >= MIN_WRIST_VISIBILITY:
            continue
        wrist_xy = person[wrist, :2] * scale
        knuckles = (person[pinky, :2] + person[index, :2]) / 2 * scale
        reach = float(np.linalg.norm(knuckles - wrist_xy))
        if not math.isfinite(reach):
            continue
        # Seen end-on, a hand's reach foreshortens: a hand also spans half the shoulders or more.
        hand_span = max(HAND_SPAN_PER_WRIST_REACH * reach, HAND_SPAN_PER_SHOULDERS * shoulders, 16.0)
        cx, cy = wrist_xy + (knuckles - wrist_xy) * 0.9
        regions.append(
            Region(square(cx, cy, hand_span * settings.crop_context), square(cx, cy, hand_span), "pose")
        )
    return regions


def tile_boxes(size: tuple[int, int], settings: SearchSettings) -> list[Box]:
    """Overlapping square tiles covering the picture, smallest scale first."""
    boxes = []
    for k in range(settings.tile_scales):
        side = settings.tile_size * 2**k
        if side >= max(size):
            break
        stride = side * (1.0 - settings.tile_overlap)
        for y in _starts(size[1], side, stride):
            for x in _starts(size[0], side, stride):
                boxes.append((x, y, x + side, y + side))
    return boxes


def _starts(length: int, side: float, stride: float) -> list[float]:
    """Tile starts along one axis: evenly spread, the last tile flush with the far edge."""
    if side >= length:
        return [0.0]
    count = math.ceil((length - side) / stride) + 1
    return [float(v) for v in np.linspace(0.0, length - side, count)]
