"""Small hands: the hand search against the single whole-frame pass, on real photos pasted small.

    .venv/bin/python benchmarks/small_hands.py [--quick] [--out FILE] [--data ../shared/data] [--seed 0]
        [--no-build]

Prints JSON (and writes it to `--out`); a progress bar goes to stderr. `--quick` (3 sizes, 6 photos,
about a minute) is a smoke run; the default run (8 sizes, 20 photos, 267 frames) takes about 11
minutes on 2 shared cores with the search, most of it `auto` on the 3840x2160 frames. Where the
conditioners have no `hand_regions` option yet, all three modes run the single pass
(`search_available: false`).

Frames. Each shared photo with hands is pasted, whole, into a 1920x1080 and a 3840x2160 frame over
a real background (`images/negatives`, scaled to cover the frame), scaled so that one of its
reference hands (the "primary", picked with the seed) spans N px, N in `SIZES` (span = the larger
side of the hand's landmark box). Photos are "hand_only" (close-ups without a body, `HAND_ONLY`)
or "person" (the other photos of `images/hands` and those of `images/bodies` in which the reference
finds a hand). About a third of the frames put the primary hand against a frame edge (the photo is
then cut by the edge); the others place it at random with the photo inside the frame where it fits.
A size that needs more than `MAX_UPSCALE` x upscaling of the photo is not planted. Frames are JPEG
(quality 95) and every mode reads the same bytes, as a build would.

Reference hands. The photo's own detection at full size (`hand_encoded`, `hand_regions="none"`,
detect_long_side=None): the search should give at N px what the single pass gives on the hand
when it is big. Where the photo has ground truth with all 21 points (MANIFEST / annotations:
OneHand10K, FreiHAND, Panoptic, InterHand), the ground-truth hand that matches a detected hand gives
its side where the dataset has one (FreiHAND: right, Panoptic: `_l`/`_r`, InterHand: joints 0-20
right, 21-41 left, wrist last), and `pck_vs_ground_truth` scores found hands against its points
too. The ground truth's points are not the reference for matching and `pck`: MediaPipe's
landmark convention differs from FreiHAND's and Panoptic's (the full-size pass scores only 0.76
and 0.57 PCK@0.2 against them, `photos.used.*.full_size_pck_vs_ground_truth`), which would cap PCK
for reasons that have nothing to do with the search. Ground-truth hands the detector misses at
full size are not planted: the benchmark measures the search, not the detector. The reference is
mapped through the paste; a hand the paste cuts (its landmark box not wholly inside the frame) is
not counted.

Modes, on the same frames, interleaved frame by frame: `none` (the single whole-frame pass, today's
behaviour), `auto` (the complete search, without hints), `auto_hints` (`auto` with the reference
hands' landmark boxes, each side moved out by 15% of the box's larger side, clipped to the frame).

Matching. A found hand matches a reference hand when the mean distance between their 21 points is
under `MATCH` (0.3) x the reference's span; pairs are taken greedily, closest first, one to one.
Reported by the hand's own span in the frame (nearest of `SIZES` within 20%, else under_32 /
over_400), frame size and photo category:
- recall: reference hands matched;
- handedness: matched hands whose `kind` (anatomical) agrees with the reference's (hands whose
  reference side is unknown are not counted);
- pck: mean share of points within 0.2 x span of the reference (PCK@0.2), over matched hands;
  pck_vs_ground_truth: the same against the ground truth's points, over matched hands that have it;
- found_by: which pass found the matched hands (`Instance.extra["found_by"]`, "frame" when unset);
- `extra_hands_per_frame`: found hands matching no reference (a hand the full-size pass missed,
  other people's hands, cut hands, or false detections), by the frame's nominal size;
- `by_photo`: hands found and sides wrong per photo and mode, to tell a photo's trouble from a
  size's.
Few photos have hands big enough for 400 px within `MAX_UPSCALE`: that bucket holds 4 hands per
frame size.
Time per frame (`detect` on the JPEG bytes: decode included, as the search decodes more of the
frame): median ms per mode, and `x_none`, the median over frames of (mode ms / none ms) on the same
frame (paired, so a slow moment of the shared machine hits both). "person in view" frames come from
the person photos; "hand_only" frames without hints are the tile fallback's cost.

Targets (`targets`), per frame size over both categories and per size bucket (the worst bucket is
shown): recall without hints (`auto`) >= 0.9 in every bucket from 96 px and >= 0.8 at 64 px; recall
with hints >= 0.95 from 48 px; handedness >= 0.95 and pck >= 0.9 in every bucket, `auto` and
`auto_hints`; Full HD time: `auto_hints` <= 1.5 x none (worst category) and `auto` <= 3 x none on
person frames.

Also: `own_size`, `auto` against `none` on the shared hand photos at their own size (hands added,
lost, moved or switching side; the max landmark difference of matched hands), and `build`, the Full
HD frames as a HaGRID v2 folder (the hint boxes as normalised `bboxes`, the gesture as `labels`)
built with the `hagrid_hand_enc` recipe in one process: rows kept, reference hands found in the
stored landmarks (mapped into the stored picture through the row's `extra.framing` record or its
`original_size` / `crop_top_left`), `hint_not_found` (kept rows only: skipped rows are not stored),
and images/s including the model load.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
# This folder holds a conditioners.py: drop it from the path so `conditioners` is the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import conditioners  # noqa: E402
from conditioners import HintBox, Instance  # noqa: E402
from conditioners.images import load_image  # noqa: E402
from conditioners.registry import accepted_options  # noqa: E402

SIZES = (32, 48, 64, 96, 128, 192, 256, 400)
QUICK_SIZES = (48, 96, 192)
FRAMES = ((1920, 1080), (3840, 2160))
FULL_HD = "1920x1080"
MODES = ("none", "auto", "auto_hints")
HAND_ONLY = {  # close-ups of hands, no body in view
    "mmpose_onehand10k_1402",
    "mmpose_freihand_00000355",
    "mmpose_interhand_image44669",
    "mmpose_interhand_image69148",
    "meshgraphormer_internet_fig1",
    "meshgraphormer_internet_fig2",
}
GESTURES = ("call", "four", "like", "ok", "palm", "peace", "rock", "stop")  # HaGRID folder names
MATCH = 0.3  # mean point distance / reference span under which a found hand matches
PCK = 0.2
HINT_PAD = 0.15  # each side of a hint box, in units of the landmark box's larger side
EDGE_SHARE = 1 / 3  # frames whose primary hand touches a frame edge
EDGE_MARGIN = 2  # px between the hand's landmark box and the frame edge
MAX_UPSCALE = 4.0
BUCKET_TOLERANCE = 1.2
TARGETS = {
    "recall_no_hints_from_96px": ("auto", "recall", 0.9, 96),
    "recall_no_hints_at_64px": ("auto", "recall", 0.8, 64),
    "recall_hints_from_48px": ("auto_hints", "recall", 0.95, 48),
}


# -- hands and photos ----------------------------------------------------------------------------
@dataclass
class Hand:
    points: np.ndarray  # (21, 2) x, y in the image's pixels; NaN where unknown
    kind: str | None  # "left_hand" / "right_hand" (anatomical), None when unknown
    source: str  # where `kind` comes from: "ground_truth" or "detection"
    truth: np.ndarray | None = None  # the ground truth's points, where the photo has them

    @property
    def box(self) -> tuple[float, float, float, float]:
        xy = self.points[~np.isnan(self.points).any(axis=1)]
        return float(xy[:, 0].min()), float(xy[:, 1].min()), float(xy[:, 0].max()), float(xy[:, 1].max())

    @property
    def span(self) -> float:
        x0, y0, x1, y1 = self.box
        return max(x1 - x0, y1 - y0, 1e-6)

    def moved(self, scale: float, offset: tuple[float, float]) -> Hand:
        shift = np.asarray(offset, dtype=np.float64)
        truth = None if self.truth is None else self.truth * scale + shift
        return Hand(self.points * scale + shift, self.kind, self.source, truth)

    def hint(self, size: tuple[int, int], label: str) -> HintBox:
        x0, y0, x1, y1 = self.box
        pad = HINT_PAD * self.span
        return HintBox(
            max(0.0, x0 - pad), max(0.0, y0 - pad), min(size[0], x1 + pad), min(size[1], y1 + pad), label
        )


@dataclass
class Photo:
    path: Path
    category: str  # "hand_only" or "person"
    image: Image.Image  # upright RGB, full size
    hands: list[Hand]
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.stem


def interhand_to_mediapipe(points: list) -> np.ndarray:
    """InterHand's 21 joints (per finger tip to base, thumb first, wrist last) in MediaPipe's order
    (wrist first, then per finger base to tip)."""
    order = [20] + [4 * finger + 3 - k for finger in range(5) for k in range(4)]
    return np.array([points[i][:2] for i in order], dtype=np.float64)


def ground_truth(data: Path, rel: str) -> list[Hand]:
    """The photo's complete 21-point ground-truth hands (wrist first), with their side where known."""
    path = data / "annotations" / "per_image" / Path(rel).relative_to("images").with_suffix(".json")
    if not path.exists():
        return []
    hands = []
    for source in json.loads(path.read_text())["sources"]:
        if "keypoints_xyv" in source:  # InterHand, derived 2D projection: 0-20 right, 21-41 left
            joints = source["keypoints_xyv"]
            for kind, part in (("right_hand", joints[:21]), ("left_hand", joints[21:42])):
                if len(part) == 21 and all(v[2] > 0 for v in part):
                    hands.append(Hand(interhand_to_mediapipe(part), kind, "ground_truth"))
            continue
        file_name = (source.get("images") or [{}])[0].get("file_name", "")
        for annotation in source.get("annotations", []):
            values = annotation.get("keypoints")
            if not values or len(values) != 63:
                continue
            xyv = np.asarray(values, dtype=np.float64).reshape(21, 3)
            if (xyv[:, 2] <= 0).any():
                continue  # partial: the detection is the reference there
            kind = None
            if "freihand" in rel:
                kind = "right_hand"  # FreiHAND holds right hands only
            elif "panoptic" in rel:
                stem = Path(file_name).stem
                kind = {"l": "left_hand", "r": "right_hand"}.get(stem.rsplit("_", 1)[-1])
            hands.append(Hand(xyv[:, :2].copy(), kind, "ground_truth"))
    return hands


def mean_distance(reference: Hand, xy: np.ndarray) -> float:
    valid = ~np.isnan(reference.points).any(axis=1)
    return float(np.linalg.norm(reference.points[valid] - xy[valid], axis=1).mean())


def match(references: list[Hand], found: list[np.ndarray]) -> list[tuple[int, int]]:
    """(reference, found) index pairs: mean distance < MATCH x span, closest first, one to one."""
    pairs = sorted(
        (mean_distance(ref, xy) / ref.span, i, j)
        for i, ref in enumerate(references)
        for j, xy in enumerate(found)
    )
    used_ref, used_found, matched = set(), set(), []
    for distance, i, j in pairs:
        if distance < MATCH and i not in used_ref and j not in used_found:
            used_ref.add(i)
            used_found.add(j)
            matched.append((i, j))
    return matched


def pck(reference: Hand, xy: np.ndarray) -> float:
    valid = ~np.isnan(reference.points).any(axis=1)
    distances = np.linalg.norm(reference.points[valid] - xy[valid], axis=1)
    return float(np.mean(distances < PCK * reference.span))


def hands_of(instances: list[Instance]) -> list[Instance]:
    return [i for i in instances if i.kind in ("left_hand", "right_hand")]


def reference_photo(data: Path, path: Path, category: str, conditioner: Any) -> Photo | None:
    """The photo with its reference hands, or None when the full-size pass finds none."""
    rel = path.relative_to(data).as_posix()
    detected = hands_of(conditioner.detect(path).instances)
    truth = ground_truth(data, rel)
    found = [Hand(i.points[:, :2].copy(), i.kind, "detection") for i in detected]
    pairs = match(truth, [h.points for h in found])
    references = list(found)
    for t, f in pairs:
        side, source = (truth[t].kind, "ground_truth") if truth[t].kind else (found[f].kind, "detection")
        references[f] = Hand(found[f].points, side, source, truth[t].points)
    if not references:
        return None
    notes: dict[str, Any] = {"hands": len(references), "span_px": [round(h.span) for h in references]}
    if truth:
        notes["ground_truth_hands"] = len(truth)
        notes["ground_truth_used"] = len(pairs)
        notes["ground_truth_missed_at_full_size"] = len(truth) - len(pairs)
        notes["full_size_pck_vs_ground_truth"] = [round(pck(truth[t], found[f].points), 3) for t, f in pairs]
        sides = [(truth[t].kind, found[f].kind) for t, f in pairs if truth[t].kind]
        if sides:
            notes["full_size_side_agrees_with_ground_truth"] = sum(a == b for a, b in sides) / len(sides)
    image = Image.fromarray(load_image(path).pixels)
    return Photo(path, category, image, references, notes)


# -- frames --------------------------------------------------------------------------------------
@dataclass
class Plan:
    photo: Photo
    photo_index: int
    primary: Hand  # the hand scaled to `nominal` px
    nominal: int
    frame: tuple[int, int]
    seed: int

    @property
    def gesture(self) -> str:
        return GESTURES[self.photo_index % len(GESTURES)]


@dataclass
class Frame:
    plan: Plan
    jpeg: bytes
    hands: list[Hand]
    hints: list[HintBox]
    placement: str


def cover(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`image` scaled to cover `size` and centre-cropped to it."""
    scale = max(size[0] / image.width, size[1] / image.height)
    width, height = math.ceil(image.width * scale), math.ceil(image.height * scale)
    left, top = (width - size[0]) // 2, (height - size[1]) // 2
    resized = image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    return resized.crop((left, top, left + size[0], top + size[1]))


def axis_offset(rng: random.Random, frame: int, photo: float, lo: float, hi: float, to_edge: int) -> int:
    """Where the photo starts along one axis: the hand's [lo, hi] (scaled photo pixels) inside the
    frame; `to_edge` -1/+1 puts the hand against the low/high frame edge, 0 anywhere (the photo
    inside the frame where it fits)."""
    hand_min, hand_max = EDGE_MARGIN - lo, frame - EDGE_MARGIN - hi
    if to_edge:
        return round(hand_min if to_edge < 0 else hand_max)
    photo_min, photo_max = (0.0, frame - photo) if photo <= frame else (frame - photo, 0.0)
    low, high = max(hand_min, photo_min), min(hand_max, photo_max)
    if low > high:
        low, high = hand_min, hand_max
    return round(rng.uniform(low, high))


def make_frame(plan: Plan, backgrounds: list[Path]) -> Frame | None:
    rng = random.Random(plan.seed)
    photo, (width, height) = plan.photo, plan.frame
    scale = plan.nominal / plan.primary.span
    x0, y0, x1, y1 = (v * scale for v in plan.primary.box)
    scaled_w, scaled_h = photo.image.width * scale, photo.image.height * scale
    edge = rng.random() < EDGE_SHARE
    side = rng.choice(("left", "right", "top", "bottom")) if edge else ""
    ox = axis_offset(rng, width, scaled_w, x0, x1, {"left": -1, "right": 1}.get(side, 0))
    oy = axis_offset(rng, height, scaled_h, y0, y1, {"top": -1, "bottom": 1}.get(side, 0))
    canvas = cover(Image.open(rng.choice(backgrounds)), (width, height))
    dx0, dy0 = max(0, ox), max(0, oy)
    dx1, dy1 = min(width, ox + math.floor(scaled_w)), min(height, oy + math.floor(scaled_h))
    if dx1 <= dx0 or dy1 <= dy0:
        return None
    box = ((dx0 - ox) / scale, (dy0 - oy) / scale, (dx1 - ox) / scale, (dy1 - oy) / scale)
    patch = photo.image.resize((dx1 - dx0, dy1 - dy0), Image.Resampling.LANCZOS, box=box)
    canvas.paste(patch, (dx0, dy0))
    hands = []
    for hand in photo.hands:
        moved = hand.moved(scale, (ox, oy))
        hx0, hy0, hx1, hy1 = moved.box
        if hx0 >= dx0 and hy0 >= dy0 and hx1 <= dx1 and hy1 <= dy1:
            hands.append(moved)
    buffer = io.BytesIO()
    canvas.save(buffer, "JPEG", quality=95)
    hints = [h.hint((width, height), plan.gesture) for h in hands]
    return Frame(plan, buffer.getvalue(), hands, hints, f"edge_{side}" if edge else "inside")


def plan_frames(photos: list[Photo], sizes: tuple[int, ...], seed: int) -> list[Plan]:
    rng = random.Random(seed)
    plans = []
    for index, photo in enumerate(photos):
        for frame in FRAMES:
            for nominal in sizes:
                primary, plan_seed = rng.choice(photo.hands), rng.randrange(2**32)
                if nominal / primary.span <= MAX_UPSCALE:
                    plans.append(Plan(photo, index, primary, nominal, frame, plan_seed))
    return plans


def size_bucket(span: float) -> str:
    nearest = min(SIZES, key=lambda n: abs(math.log(span / n)))
    if abs(math.log(span / nearest)) <= math.log(BUCKET_TOLERANCE):
        return str(nearest)
    return "under_32" if span < SIZES[0] else "over_400" if span > SIZES[-1] else "between"


# -- the run -------------------------------------------------------------------------------------
def search_available() -> bool:
    return "hand_regions" in accepted_options(conditioners.conditioner_class("hand_encoded"))


def hand_conditioner(regions: str, **options: Any) -> Any:
    if search_available():
        options["hand_regions"] = regions
    return conditioners.get("hand_encoded", **options)


@dataclass
class Tally:
    hands: int = 0
    matched: int = 0
    sided: int = 0
    side_agrees: int = 0
    pck_sum: float = 0.0
    with_truth: int = 0
    truth_pck_sum: float = 0.0
    found_by: Counter = field(default_factory=Counter)

    def add(self, other: Tally) -> None:
        self.hands += other.hands
        self.matched += other.matched
        self.sided += other.sided
        self.side_agrees += other.side_agrees
        self.pck_sum += other.pck_sum
        self.with_truth += other.with_truth
        self.truth_pck_sum += other.truth_pck_sum
        self.found_by.update(other.found_by)

    def report(self) -> dict[str, Any]:
        return {
            "recall": share(self.matched, self.hands),
            "handedness": share(self.side_agrees, self.sided),
            "pck": share(self.pck_sum, self.matched),
            "pck_vs_ground_truth": share(self.truth_pck_sum, self.with_truth),
            "found_by": dict(sorted(self.found_by.items())),
        }


def share(part: float, whole: int) -> float | None:
    return round(part / whole, 3) if whole else None


def score(hands: list[Hand], found: list[Instance]) -> tuple[dict[str, Tally], int]:
    """Tallies by size bucket of the frame's reference hands, and the unmatched found hands."""
    tallies: dict[str, Tally] = defaultdict(Tally)
    pairs = dict(match(hands, [f.points[:, :2] for f in found]))
    for i, hand in enumerate(hands):
        tally = tallies[size_bucket(hand.span)]
        tally.hands += 1
        if i not in pairs:
            continue
        instance = found[pairs[i]]
        tally.matched += 1
        tally.pck_sum += pck(hand, instance.points[:, :2])
        if hand.truth is not None:
            tally.with_truth += 1
            tally.truth_pck_sum += pck(Hand(hand.truth, None, ""), instance.points[:, :2])
        tally.found_by[str(instance.extra.get("found_by", "frame"))] += 1
        if hand.kind:
            tally.sided += 1
            tally.side_agrees += instance.kind == hand.kind
    return tallies, len(found) - len(pairs)


def count_hints_not_found(extra: dict[str, Any]) -> int:
    value = extra.get("hint_not_found")
    if isinstance(value, (list, tuple)):
        return len(value)
    return int(value) if isinstance(value, (int, float)) else int(bool(value))


def run_frames(plans: list[Plan], backgrounds: list[Path], hagrid_root: Path) -> dict[str, Any]:
    single, search = hand_conditioner("none"), hand_conditioner("auto")
    runs = {
        "none": lambda f: single.detect(f.jpeg),
        "auto": lambda f: search.detect(f.jpeg),
        "auto_hints": lambda f: search.detect(f.jpeg, hints=f.hints),
    }
    tallies: dict[tuple, Tally] = defaultdict(Tally)
    extra: dict[tuple, list[int]] = defaultdict(list)
    times: dict[tuple, list[dict[str, float]]] = defaultdict(list)
    hints_missed = Counter()
    by_photo: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    frames_made, planted, annotations, truth = Counter(), Counter(), defaultdict(dict), {}
    warm = False
    for index, plan in enumerate(tqdm(plans, desc="small hands", unit="frame", file=sys.stderr)):
        frame = make_frame(plan, backgrounds)
        if frame is None or not frame.hands:
            continue
        if not warm:  # model loads, first inferences
            for run in runs.values():
                run(frame)
            warm = True
        size = f"{plan.frame[0]}x{plan.frame[1]}"
        category = plan.photo.category
        frames_made[(size, category)] += 1
        planted[(size, category)] += len(frame.hands)
        order = MODES[index % 3 :] + MODES[: index % 3]
        elapsed = {}
        for mode in order:
            start = time.perf_counter()
            detection = runs[mode](frame)
            elapsed[mode] = (time.perf_counter() - start) * 1000
            by_bucket, unmatched = score(frame.hands, hands_of(detection.instances))
            for bucket, tally in by_bucket.items():
                tallies[(size, category, bucket, mode)].add(tally)
                by_photo[plan.photo.name][mode].update(
                    planted=tally.hands, matched=tally.matched, side_wrong=tally.sided - tally.side_agrees
                )
            extra[(size, category, str(plan.nominal), mode)].append(unmatched)
            if mode == "auto_hints":
                hints_missed[size] += count_hints_not_found(detection.extra)
        times[(size, category)].append(elapsed)
        if size == FULL_HD:
            truth[f"{plan.gesture}/{image_id(index)}"] = (frame.hands, category)
            write_hagrid_item(hagrid_root, frame, index, annotations)
    for gesture, records in annotations.items():
        folder = hagrid_root / "hagrid_annotations" / "train"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{gesture}.json").write_text(json.dumps(records))
    single.close()
    search.close()
    return {
        "tallies": tallies,
        "extra": extra,
        "times": times,
        "frames": frames_made,
        "planted": planted,
        "hints_not_found": hints_missed,
        "hagrid_truth": truth,
        "by_photo": {
            name: {
                mode: "{matched}/{planted} found, {side_wrong} wrong side".format(**c)
                for mode, c in modes.items()
            }
            for name, modes in sorted(by_photo.items())
        },
    }


# -- HaGRID build --------------------------------------------------------------------------------
def image_id(index: int) -> str:
    return f"{index:08x}-0000-4000-8000-{index:012x}"


def write_hagrid_item(root: Path, frame: Frame, index: int, annotations: dict) -> None:
    gesture, (width, height) = frame.plan.gesture, frame.plan.frame
    folder = root / "hagrid_dataset" / gesture
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{image_id(index)}.jpg").write_bytes(frame.jpeg)
    boxes = [
        [h.x0 / width, h.y0 / height, (h.x1 - h.x0) / width, (h.y1 - h.y0) / height] for h in frame.hints
    ]
    annotations[gesture][image_id(index)] = {
        "bboxes": boxes,
        "labels": [gesture] * len(boxes),
        "user_id": f"user{frame.plan.photo_index:03d}",
        "hand_landmarks": [(h.points / [width, height]).tolist() for h in frame.hands],
    }


def run_build_on(hagrid_root: Path, work: Path, truth: dict[str, tuple[list[Hand], str]]) -> dict[str, Any]:
    """Build the HaGRID folder with `hagrid_hand_enc`; `truth`: source id -> (reference hands, category)."""
    import pyarrow.parquet as pq

    from builders import BuildSettings
    from builders.run import run_build
    from builders.sources.hagrid import HagridSource

    planted = {source_id: hands for source_id, (hands, _) in truth.items()}
    categories = {source_id: category for source_id, (_, category) in truth.items()}
    source_hints = sum(len(getattr(item, "hints", None) or ()) for item in HagridSource(hagrid_root))
    start = time.perf_counter()
    report = run_build(
        "hagrid_hand_enc", str(hagrid_root), BuildSettings(num_proc=1), output=work / "built", progress=False
    )
    seconds = time.perf_counter() - start
    kept, found, hint_rows, hint_boxes, found_by = Counter(), Counter(), 0, 0, Counter()
    for shard in sorted((work / "built" / "data").glob("*.parquet")):
        columns = ["source_id", "landmarks", "original_size", "crop_top_left"]
        for row in pq.read_table(shard, columns=columns).to_pylist():
            detection = conditioners.Detection.from_json(row["landmarks"])
            hands = hands_of(detection.instances)
            category = categories[row["source_id"]]
            found[category] += len(hands)
            references = [stored(h, detection, row) for h in planted[row["source_id"]]]
            pairs = match(references, [h.points[:, :2] for h in hands])
            kept[category] += len(pairs)
            found_by.update(str(hands[j].extra.get("found_by", "frame")) for _, j in pairs)
            missed = count_hints_not_found(detection.extra)
            hint_rows += missed > 0
            hint_boxes += missed
    planted_by = Counter()
    for source_id, hands in planted.items():
        planted_by[categories[source_id]] += len(hands)
    return {
        "items": report.items,
        "rows_kept": report.rows,
        "skipped": dict(report.skipped),
        "hands_planted": dict(planted_by),
        "hands_kept": dict(kept),
        "hands_kept_fraction": round(sum(kept.values()) / max(1, sum(planted_by.values())), 3),
        "hands_in_rows": dict(found),
        "kept_found_by": dict(sorted(found_by.items())),
        "rows_with_hint_not_found": hint_rows,
        "hint_boxes_not_found": hint_boxes,
        "hint_boxes_in_source_items": source_hints,
        "images_per_s": round(report.items / seconds, 3),
        "seconds": round(seconds, 1),
        "note": "one process; the time includes the model load",
    }


def stored(hand: Hand, detection: Any, row: dict[str, Any]) -> Hand:
    """`hand` (whole-frame pixels) in the pixels of the row's stored picture: through the row's
    `extra.framing` record (`frame = "hands"`), else the cover-and-crop of `resize_short_side`
    (`original_size`, `crop_top_left`), else unchanged."""
    record = detection.extra.get("framing")
    if record:
        (sw, sh), (rw, rh) = record["source_size"], record["resized_size"]
        (left, top) = record["offset"]
        scale = (rw / sw, rh / sh)
    else:
        height, width = row.get("original_size") or (detection.height, detection.width)
        top, left = row.get("crop_top_left") or (0, 0)
        cover_scale = max(detection.width / width, detection.height / height)
        scale = (cover_scale, cover_scale)
    points = hand.points * np.asarray(scale) - np.asarray([left, top], dtype=np.float64)
    return Hand(points, hand.kind, hand.source)


# -- own size ------------------------------------------------------------------------------------
def own_size(paths: list[Path]) -> dict[str, Any]:
    """`auto` against `none` on photos at their own size: what the search changes there."""
    per_photo, changed, max_diff = {}, 0, 0.0
    with hand_conditioner("none") as single, hand_conditioner("auto") as search:
        for path in tqdm(paths, desc="own size", unit="photo", file=sys.stderr):
            before = hands_of(single.detect(path).instances)
            after = hands_of(search.detect(path).instances)
            references = [Hand(i.points[:, :2], i.kind, "detection") for i in before]
            pairs = match(references, [a.points[:, :2] for a in after])
            diffs = [float(np.nanmax(np.abs(before[i].points - after[j].points))) for i, j in pairs]
            moved = sum(d > 1e-6 for d in diffs) + sum(before[i].kind != after[j].kind for i, j in pairs)
            photo_changed = (len(before) - len(pairs)) + (len(after) - len(pairs)) + moved
            changed += photo_changed
            max_diff = max([max_diff, *diffs])
            per_photo[path.stem] = {
                "none": len(before),
                "auto": len(after),
                "changed": photo_changed,
                "max_diff_px": round(max(diffs), 3) if diffs else None,
                "auto_found_by": dict(Counter(str(a.extra.get("found_by", "frame")) for a in after)),
            }
    return {
        "photos": len(paths),
        "hands_none": sum(p["none"] for p in per_photo.values()),
        "hands_auto": sum(p["auto"] for p in per_photo.values()),
        "hands_changed": changed,
        "max_landmark_diff_px": round(max_diff, 3),
        "per_photo": per_photo,
    }


# -- report --------------------------------------------------------------------------------------
def bucket_order(bucket: str) -> float:
    return float(bucket) if bucket.isdigit() else (0 if bucket == "under_32" else 1e9)


def accuracy(run: dict[str, Any]) -> dict[str, Any]:
    """frame size -> category (and "all") -> size bucket -> mode -> figures."""
    tallies: dict[tuple, Tally] = run["tallies"]
    out: dict[str, Any] = {}
    for size in sorted({k[0] for k in tallies}):
        by_size = {}
        for category in ("hand_only", "person", "all"):
            rows = {}
            for bucket in sorted({k[2] for k in tallies if k[0] == size}, key=bucket_order):
                totals = {mode: Tally() for mode in MODES}
                for (s, c, b, mode), tally in tallies.items():
                    if s == size and b == bucket and category in ("all", c):
                        totals[mode].add(tally)
                if totals["none"].hands:
                    rows[bucket] = {
                        "hands": totals["none"].hands,
                        **{mode: total.report() for mode, total in totals.items()},
                    }
            by_size[category] = rows
        out[size] = by_size
    return out


def extras(run: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = defaultdict(dict)
    for (size, category, nominal, mode), counts in sorted(run["extra"].items()):
        row = out[size].setdefault(f"{category}_{nominal}", {})
        row[mode] = round(sum(counts) / len(counts), 3)
    return dict(out)


def timing(run: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = defaultdict(dict)
    for (size, category), records in sorted(run["times"].items()):
        row: dict[str, Any] = {"frames": len(records)}
        for mode in MODES:
            row[f"{mode}_median_ms"] = round(statistics.median(r[mode] for r in records), 1)
            if mode != "none":
                row[f"{mode}_x_none"] = round(statistics.median(r[mode] / r["none"] for r in records), 3)
        label = "hand_only (auto = tile fallback)" if category == "hand_only" else "person in view"
        out[size][label] = row
    return dict(out)


def targets(acc: dict[str, Any], times: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def check(name: str, threshold: float, values: list[tuple[str, float]]) -> None:
        values = [(where, v) for where, v in values if v is not None]
        if not values:
            out[name] = {"pass": None, "why": "nothing measured"}
            return
        where, worst = min(values, key=lambda wv: wv[1])
        out[name] = {"pass": worst >= threshold, "target": threshold, "worst": worst, "at": where}

    for name, (mode, metric, threshold, from_size) in TARGETS.items():
        for size, by_size in acc.items():
            rows = by_size["all"]
            exact = name.endswith("at_64px")
            values = [
                (f"{size} {bucket}px", rows[bucket][mode][metric])
                for bucket in rows
                if bucket.isdigit()
                and (int(bucket) == from_size if exact else int(bucket) >= from_size)
                and mode in rows[bucket]
            ]
            check(f"{name} ({size})", threshold, values)
    for metric, threshold in (("handedness", 0.95), ("pck", 0.9)):
        for size, by_size in acc.items():
            rows = by_size["all"]
            values = [
                (f"{size} {bucket} {mode}", rows[bucket][mode][metric])
                for bucket in rows
                for mode in ("auto", "auto_hints")
                if mode in rows[bucket]
            ]
            check(f"{metric}_everywhere ({size})", threshold, values)
    hd = times.get(FULL_HD, {})
    inverted = [
        ("time_full_hd_hints_x_none <= 1.5", "auto_hints_x_none", 1.5, list(hd)),
        ("time_full_hd_no_hints_person_x_none <= 3", "auto_x_none", 3.0, ["person in view"]),
    ]
    for name, key, limit, labels in inverted:
        values = [(label, hd[label][key]) for label in labels if label in hd]
        if not values:
            out[name] = {"pass": None, "why": "nothing measured"}
            continue
        where, worst = max(values, key=lambda wv: wv[1])
        out[name] = {"pass": worst <= limit, "target": limit, "worst": worst, "at": where}
    return out


def code_state() -> dict[str, Any]:
    """Which code ran: where `conditioners` came from, the checkout's commit and its uncommitted
    changes under conditioners/ and builders/ (the search may be measured before it is committed)."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return ""

    package = Path(conditioners.__file__).resolve().parent
    status = git("status", "--porcelain", "--", "conditioners", "builders").splitlines()
    return {
        "conditioners_from": relative_to_repo(package),
        "checkout_commit": git("rev-parse", "--short", "HEAD").strip() or None,
        "checkout_uncommitted": [line[3:] for line in status],
        "ran_checkout_code": package == REPO / "conditioners",
    }


def relative_to_repo(path: Path) -> str:
    """`path` relative to the checkout where it lies inside or beside it: results name no machine."""
    return os.path.relpath(path, REPO) if path.is_relative_to(REPO.parent) else str(path)


def photo_list(data: Path, quick: bool) -> list[tuple[Path, str]]:
    def images(folder: str) -> list[Path]:
        return sorted(p for p in (data / "images" / folder).iterdir() if p.suffix.lower() in {".jpg", ".png"})

    hands = images("hands")
    hand_only = [(p, "hand_only") for p in hands if p.stem in HAND_ONLY]
    person = [(p, "person") for p in hands if p.stem not in HAND_ONLY] + [
        (p, "person") for p in images("bodies")
    ]
    if quick:  # a spread of both kinds
        hand_only, person = hand_only[::3], person[::4]
    return hand_only + person


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--quick", action="store_true", help="fewer photos and sizes: a smoke run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--no-build", action="store_true", help="skip the HaGRID build")
    args = parser.parse_args()
    started = time.perf_counter()
    data = args.data.resolve()
    sizes = QUICK_SIZES if args.quick else SIZES
    candidates = photo_list(data, args.quick)
    photos, dropped = [], []
    with hand_conditioner("none", detect_long_side=None) as reference:
        for path, category in tqdm(candidates, desc="references", unit="photo", file=sys.stderr):
            photo = reference_photo(data, path, category, reference)
            (photos.append(photo) if photo else dropped.append(path.stem))
    backgrounds = sorted((data / "images" / "negatives").iterdir())
    plans = plan_frames(photos, sizes, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run = run_frames(plans, backgrounds, work / "hagrid")
        build = {} if args.no_build else run_build_on(work / "hagrid", work, run["hagrid_truth"])
    own = own_size(sorted(p for p in (data / "images" / "hands").iterdir() if p.suffix.lower() == ".jpg"))
    acc, times = accuracy(run), timing(run)
    report = {
        "benchmark": "small_hands",
        "command": " ".join(["benchmarks/small_hands.py", *sys.argv[1:]]),
        "search_available": search_available(),
        "note": None
        if search_available()
        else "hand_regions does not exist yet: all three modes ran today's single whole-frame pass",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "code": code_state(),
        "settings": {
            "sizes": list(sizes),
            "frames": [f"{w}x{h}" for w, h in FRAMES],
            "seed": args.seed,
            "match": f"mean point distance < {MATCH} x reference span, greedy one to one",
            "pck": f"point within {PCK} x reference span",
            "hint_pad": f"{HINT_PAD} x landmark box's larger side, each side",
            "max_upscale": MAX_UPSCALE,
            "jpeg_quality": 95,
        },
        "photos": {
            "used": {p.name: {"category": p.category, **p.notes} for p in photos},
            "no_hand_at_full_size": dropped,
        },
        "frames": {f"{s} {c}": n for (s, c), n in sorted(run["frames"].items())},
        "hands_planted": {f"{s} {c}": n for (s, c), n in sorted(run["planted"].items())},
        "targets": targets(acc, times),
        "time_per_frame": times,
        "accuracy": acc,
        "extra_hands_per_frame": extras(run),
        "hint_not_found_in_auto_hints": dict(run["hints_not_found"]),
        "by_photo": run["by_photo"],
        "own_size": own,
        "build": build,
        "seconds": round(time.perf_counter() - started, 1),
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
