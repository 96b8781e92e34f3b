"""Control fidelity of one generated image: its re-detection matched to the reference detection.

Reference and generated instances are matched one to one within a kind family (any hand matches
any hand, so that handedness can disagree; faces match faces, animals animals), by an optimal
assignment on the mean keypoint distance normalised by the reference instance's landmark-box
size (the longer side of the box around its points). A pair further apart than `MATCH_GATE`
box sizes is no match. A reference instance left unmatched counts all its points as misses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from conditioners.detection import Detection, Instance

PCK_THRESHOLDS = (0.05, 0.1, 0.2)
# Mean normalised distance above which two instances are not the same one.
MATCH_GATE = 0.5
HAND_KINDS = frozenset({"left_hand", "right_hand"})


def kind_family(kind: str) -> str:
    return "hand" if kind in HAND_KINDS else kind


def box_size(instance: Instance) -> float:
    """The longer side of the landmark box; 1 px at least, so a degenerate box still normalises."""
    x0, y0, x1, y1 = instance.bbox()
    return max(x1 - x0, y1 - y0, 1.0)


def normalised_errors(reference: Instance, generated: Instance) -> np.ndarray:
    """Per reference point: distance to the generated point over the reference box size (NaN
    where either point is missing or the generated instance has fewer points)."""
    count = len(reference.xy)
    errors = np.full(count, np.nan)
    shared = min(count, len(generated.xy))
    distance = np.linalg.norm(reference.xy[:shared] - generated.xy[:shared], axis=1)
    errors[:shared] = distance / box_size(reference)
    return errors


def _pair_cost(reference: Instance, generated: Instance) -> float:
    if kind_family(reference.kind) != kind_family(generated.kind):
        return np.inf
    errors = normalised_errors(reference, generated)
    return float(np.nanmean(errors)) if np.isfinite(errors).any() else np.inf


def match_instances(reference: list[Instance], generated: list[Instance]) -> list[tuple[int, int]]:
    """(reference index, generated index) pairs: an optimal one-to-one assignment within kind
    families, keeping only pairs closer than `MATCH_GATE`."""
    if not reference or not generated:
        return []
    cost = np.array([[_pair_cost(r, g) for g in generated] for r in reference])
    blocked = ~np.isfinite(cost) | (cost > MATCH_GATE)
    # A finite stand-in keeps the assignment solvable; blocked pairs are dropped after.
    rows, cols = linear_sum_assignment(np.where(blocked, MATCH_GATE * 1e6, cost))
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if not blocked[r, c]]


@dataclass
class RowScore:
    """Counts for one generated image; `merge` sums them, so overall figures are micro-averages."""

    rows: int = 1
    missed_images: int = 0  # missing or unreadable: scored as a full miss
    reference_instances: int = 0
    matched_instances: int = 0
    extra_instances: int = 0
    reference_points: int = 0
    correct_points: dict[float, int] = field(default_factory=lambda: dict.fromkeys(PCK_THRESHOLDS, 0))
    matched_points: int = 0
    error_sum: float = 0.0
    matched_hands: int = 0
    agreeing_hands: int = 0
    focus_points: int = 0
    focus_error_sum: float = 0.0

    def merge(self, other: RowScore) -> RowScore:
        merged = RowScore(rows=0, correct_points={t: 0 for t in PCK_THRESHOLDS})
        for name, value in vars(self).items():
            if name == "correct_points":
                merged.correct_points = {t: value[t] + other.correct_points[t] for t in PCK_THRESHOLDS}
            else:
                setattr(merged, name, value + getattr(other, name))
        return merged

    def summary(self) -> dict[str, Any]:
        """The issue's headline figures; null where a figure has nothing to average."""
        return {
            "rows": self.rows,
            "missed_images": self.missed_images,
            "instance_recall": _ratio(self.matched_instances, self.reference_instances),
            **{f"pck_{t}": _ratio(self.correct_points[t], self.reference_points) for t in PCK_THRESHOLDS},
            "mean_error": _ratio(self.error_sum, self.matched_points),
            "extra_instances": self.extra_instances,
            "handedness_agreement": _ratio(self.agreeing_hands, self.matched_hands),
            "focus_error": _ratio(self.focus_error_sum, self.focus_points),
        }


def _ratio(numerator: float, denominator: float) -> float | None:
    return None if denominator == 0 else float(numerator) / float(denominator)


def score_row(
    reference: Detection, generated: Detection | None, focus_indices: tuple[int, ...] = ()
) -> RowScore:
    """Score one generated image's detection against the reference; None means the image is
    missing or unreadable, a full miss. `focus_indices` (e.g. the pupils) get their own error."""
    found = [] if generated is None else generated.instances
    pairs = match_instances(reference.instances, found)
    score = RowScore(
        missed_images=int(generated is None),
        reference_instances=len(reference.instances),
        matched_instances=len(pairs),
        extra_instances=len(found) - len(pairs),
        reference_points=sum(len(inst.xy) for inst in reference.instances),
    )
    for ref_index, gen_index in pairs:
        ref, gen = reference.instances[ref_index], found[gen_index]
        errors = normalised_errors(ref, gen)
        finite = errors[np.isfinite(errors)]
        for threshold in PCK_THRESHOLDS:
            score.correct_points[threshold] += int((finite <= threshold).sum())
        score.matched_points += len(finite)
        score.error_sum += float(finite.sum())
        if ref.kind in HAND_KINDS:
            score.matched_hands += 1
            score.agreeing_hands += int(ref.kind == gen.kind)
        focus = errors[[i for i in focus_indices if i < len(errors)]]
        focus = focus[np.isfinite(focus)]
        score.focus_points += len(focus)
        score.focus_error_sum += float(focus.sum())
    return score
