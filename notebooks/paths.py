"""Where the notebooks read photos and write their work: the one place to change.

- Photos: `$LANDMARK_CONTROLNET_DATA` (the tests set it to ../shared/data), else ../shared/data when
  it sits beside the repository, else the sample photos that ship in installed wheels (a fresh clone).
- Work: `$LANDMARK_CONTROLNET_WORK`, else outputs/notebooks/ in the repository (git-ignored).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_data = Path(os.environ.get("LANDMARK_CONTROLNET_DATA", REPO.parent / "shared" / "data"))
DATA: Path | None = _data.resolve() if (_data / "MANIFEST.csv").exists() else None
WORK = Path(os.environ.get("LANDMARK_CONTROLNET_WORK", REPO / "outputs" / "notebooks")).resolve()
WORK.mkdir(parents=True, exist_ok=True)

FACES_DATASET = WORK / "faces_dataset"  # built by 02, trained on by 03
TINY_SD = WORK / "tiny_sd"
TRAIN_RUN = WORK / "tiny_controlnet"

# A handful of photos per subject from ../shared/data (names from its MANIFEST.csv).
_SHARED = {
    "hands": ["hands/mmpose_freihand_00000355.jpg", "hands/mmpose_onehand10k_1402.jpg",
              "hands/hagrid_tile10_heart_two_hands.jpg"],
    "faces": ["faces/matplotlib_grace_hopper.jpg", "faces/3ddfa_trump_hillary.jpg",
              "faces/mmpose_300w_indoor_020.png", "faces/3ddfa_JianzhuGuo.jpg"],
    "bodies": ["bodies/mediapipe_coco_000000000431.jpg"],
    "animals": ["animals/mmpose_animalpose_ca110.jpg", "animals/sam_dog.jpg"],
}  # fmt: skip


def photos(subject: str) -> list[Path]:
    """Photos of `subject` (hands, faces, bodies, animals), from ../shared/data or the built-in samples."""
    if DATA is not None:
        return [DATA / "images" / name for name in _SHARED[subject] if (DATA / "images" / name).exists()]
    from landmark_controlnet.demo import hand_photos, sample_images

    if subject == "hands":
        return list(hand_photos().values())  # AI-generated people making hand gestures (HandRefiner's)
    samples = sample_images()  # astronaut (a face, a body), grace_hopper (a face), chelsea (a cat)
    chosen = {"animals": ["chelsea"], "faces": ["grace_hopper", "astronaut"]}.get(subject, ["astronaut"])
    return [samples[name] for name in chosen]
