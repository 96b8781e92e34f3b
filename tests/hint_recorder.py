"""`hint_recorder`: a test conditioner that records the hint boxes it is given.

It "finds" one fixed hand in every picture and writes into `detection.extra` the hints it received
(`hints_seen`, as `HintBox.to_dict`, in the pixels of the picture it saw), so a built row's
`landmarks` JSON shows what reached the conditioner, in whichever process ran it. Like the hand
search, it reports `hints` (the usable ones) and `hint_not_found`: here the usable hints labelled
`background`.

The test registers it for its own process (`registered`, undone afterwards, so that other tests'
lists of conditioners never see it). Build processes other than the test's own (the spawned pool,
Ray's actors) learn of it through `install_plugin`: an entry point in the conditioners' group, on
their PYTHONPATH.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np

import conditioners
from conditioners import registry
from conditioners.registry import ENTRY_POINT_GROUP

NAME = "hint_recorder"
NOT_THERE = "background"  # the label of hints where no hand is


class HintRecorder(conditioners.Conditioner):
    """Records its hints (test conditioner)."""

    detector_name = "hint recorder"
    detector_version = "1"

    def _create_detector(self):
        return object()

    def _detect(self, pixels):
        return [conditioners.Instance("left_hand", np.array([[0.4, 0.4], [0.5, 0.5], [0.6, 0.4]]))]

    def _find(self, loaded, detection, hints):
        found = super()._find(loaded, detection, hints)
        usable = [hint for hint in hints if hint.problem(loaded.size) is None]
        extra = {
            "hints_seen": [hint.to_dict() for hint in hints],
            "hints": len(usable),
            "hint_not_found": sum(hint.label == NOT_THERE for hint in usable),
        }
        return replace(found, extra={**found.extra, **extra})

    @classmethod
    def paint(cls, canvas, detection):
        for instance in detection.instances:
            for x, y in instance.xy:
                canvas.circle((int(x), int(y)), 3, (255, 0, 0), -1)


def install_plugin(folder: Path, monkeypatch) -> None:
    """Make `hint_recorder` known to every process started from now on (a spawned build pool, a Ray
    cluster started by `ray.init`): a distribution in `folder` whose entry point names it, with
    `folder` and this module's folder on PYTHONPATH (and on this process's sys.path)."""
    dist = folder / "hint_recorder_plugin-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: hint-recorder-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{NAME} = hint_recorder:HintRecorder\n")
    paths = [str(folder), str(Path(__file__).resolve().parent)]
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    )
    monkeypatch.syspath_prepend(str(folder))


@contextlib.contextmanager
def registered() -> Iterator[None]:
    """`hint_recorder` registered in this process for the duration."""
    conditioners.register(NAME)(HintRecorder)
    try:
        yield
    finally:
        registry._registered.pop(NAME, None)
