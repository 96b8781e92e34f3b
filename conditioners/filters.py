"""Filters that decide which instances (and so which images) a conditioner keeps."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .detection import Detection, Instance, SkipReason


@dataclass(frozen=True)
class Filters:
    """Every threshold that can turn a detection into a skip, each with its own reason.

    - min_image_side: shorter image side, in pixels.
    - min_instance_size: min(width, height) of an instance's landmark box, in input pixels.
    - min_keypoint_fraction: share of an instance's points that are visible and inside the image.
    - max_instances: more instances than this skips the image (crowds make poor training rows).
    """

    min_image_side: int = 0
    min_instance_size: float = 0.0
    min_keypoint_fraction: float = 0.0
    max_instances: int | None = None

    def apply(self, detection: Detection) -> Detection:
        if min(detection.size) < self.min_image_side:
            return detection.with_instances(detection.instances, SkipReason.IMAGE_TOO_SMALL)
        if not detection.instances:
            return detection.with_instances([], SkipReason.NO_DETECTION)
        kept, reason = [], None
        for instance in detection.instances:
            reason_for_instance = self._reject(instance, detection.size)
            if reason_for_instance is None:
                kept.append(instance)
            else:
                reason = reason_for_instance
        if not kept:
            return detection.with_instances([], reason)
        if self.max_instances is not None and len(kept) > self.max_instances:
            return detection.with_instances(kept, SkipReason.TOO_MANY_INSTANCES)
        return detection.with_instances(kept, None)

    def _reject(self, instance: Instance, size: tuple[int, int]) -> SkipReason | None:
        if instance.size() < self.min_instance_size:
            return SkipReason.INSTANCE_TOO_SMALL
        if self.min_keypoint_fraction > 0 and keypoint_fraction(instance, size) < self.min_keypoint_fraction:
            return SkipReason.TOO_FEW_KEYPOINTS
        return None


def keypoint_fraction(instance: Instance, size: tuple[int, int]) -> float:
    """Share of points that are visible and inside the image."""
    xy = instance.xy
    inside = (xy[:, 0] >= 0) & (xy[:, 0] < size[0]) & (xy[:, 1] >= 0) & (xy[:, 1] < size[1])
    return float(np.mean(inside & instance.visible_mask())) if len(xy) else 0.0
