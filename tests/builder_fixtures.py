"""Small source datasets in every supported layout, made in a temp folder from ../shared/data photos."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

HAND_PHOTOS = [
    "hands/mediapipe_gesture_four_15a73593.jpg",
    "hands/mmpose_freihand_00000355.jpg",
    "hands/hagrid_tile10_heart_two_hands.jpg",
    "hands/mediapipe_gesture_call_1f5fb137.jpg",
    "hands/mediapipe_gesture_rock_15cb4e8b.jpg",
    "negatives/fan_grass.jpg",
    "hands/hagrid_tile05_three_fingers.jpg",
]
ANIMAL_PHOTOS = [
    "animals/mmpose_animalpose_ca110.jpg",
    "animals/sam_dog.jpg",
    "animals/mmpretrain_cat_dog.jpg",
]
FACE_PHOTOS = [
    "faces/skimage_astronaut.jpg",
    "faces/matplotlib_grace_hopper.jpg",
    "faces/3ddfa_JianzhuGuo.jpg",
]


def link(target: Path, link_path: Path) -> Path:
    link_path.parent.mkdir(parents=True, exist_ok=True)
    link_path.symlink_to(target)
    return link_path


def photo_folder(data: Path, root: Path) -> Path:
    """Hand photos (symlinked), a broken file, captions in metadata.jsonl and one side-car .txt."""
    folder = root / "photos"
    metadata = []
    for i, rel in enumerate(HAND_PHOTOS):
        name = f"{i:02d}_{Path(rel).name}"
        link(data / "images" / rel, folder / name)
        if i % 2 == 0:
            metadata.append({"file_name": name, "text": f"caption {i}"})
    (folder / "01_mmpose_freihand_00000355.txt").write_text("a right hand holding a spoon\n")
    (folder / "99_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(m) for m in metadata) + "\n")
    return folder


def animal_folder(data: Path, root: Path) -> Path:
    """Animal photos (symlinked) with one caption, and a file that is not an image."""
    folder = root / "animals"
    for rel in ANIMAL_PHOTOS:
        link(data / "images" / rel, folder / Path(rel).name)
    (folder / "metadata.jsonl").write_text(
        json.dumps({"file_name": "sam_dog.jpg", "text": "a bulldog"}) + "\n"
    )
    (folder / "notes.jpg").write_bytes(b"not an image")
    return folder


def generated_folder(data: Path, root: Path) -> Path:
    """HandRefiner's five generated images (symlinked) with their prompts, a negative and a broken file."""
    folder = root / "generated"
    generated = data / "images" / "generated"
    metadata = []
    for line in (generated / "handrefiner_prompts.jsonl").read_text().splitlines():
        record = json.loads(line)
        name = f"handrefiner_test_{record['img']}"
        link(generated / name, folder / name)
        metadata.append({"file_name": name, "text": record["txt"]})
    link(data / "images" / "negatives" / "fan_grass.jpg", folder / "fan_grass.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(m) for m in metadata) + "\n")
    return folder


def folder_recipe(root: Path, conditioner: str = "hand_encoded", extra: str = "") -> Path:
    builder = root / "builder"
    builder.mkdir(parents=True, exist_ok=True)
    (builder / "recipe.toml").write_text(
        f'[source]\ntype = "folder"\n[conditioner]\nname = "{conditioner}"\n'
        f'[captioner]\ntype = "column"\ndefault = "a hand"\n{extra}'
    )
    return builder


@dataclass(frozen=True)
class HandBuild:
    """`photo_folder` built with `folder_recipe` (hand_encoded, 3 items a shard) under `root`."""

    root: Path
    rows: int
    items: int
    skipped: dict[str, int]

    def copy_to(self, root: Path) -> tuple[Path, Path]:
        """A test's own (photos, builder) under `root`: the built files and their bookkeeping copied
        (mtimes kept), the photos still symlinks to the shared data. Nothing a test does to its copy
        reaches another test."""
        for name in ("photos", "builder"):
            shutil.copytree(self.root / name, root / name, symlinks=True)
        return root / "photos", root / "builder"


def build_hand_photos(data: Path, root: Path) -> HandBuild:
    from builders import BuildSettings
    from builders.run import run_build

    photos, builder = photo_folder(data, root), folder_recipe(root)
    report = run_build(str(builder), str(photos), BuildSettings(shard_size=3), progress=False)
    return HandBuild(root, report.rows, report.items, dict(report.skipped))


HAGRID_GESTURES = {
    "peace": "hands/hagrid_tile04_one_finger.jpg",
    "two_up": "hands/hagrid_tile05_three_fingers.jpg",
    "heart": "hands/hagrid_tile10_heart_two_hands.jpg",
}


def _hagrid_record(index: int, v2: bool) -> dict:
    record = {
        "bboxes": [[0.3, 0.2, 0.2, 0.3]],
        "labels": ["peace"],
        "user_id": f"user{index}",
    }
    if v2:
        record.update(
            {
                "united_bbox": [[0.3, 0.2, 0.2, 0.3]],
                "united_label": ["peace"],
                "hand_landmarks": [[[0.35, 0.4]] * 21],
                "meta": {"age": [30], "gender": ["male"], "race": ["White"]},
            }
        )
    else:
        record["leading_hand"] = "right"
        record["leading_conf"] = 1.0
    return record


def hagrid(data: Path, root: Path, v2: bool) -> Path:
    folder = root / ("hagrid_v2" if v2 else "hagrid_v1")
    for index, (gesture, rel) in enumerate(HAGRID_GESTURES.items()):
        image_id = f"{index:08x}-0000-4000-8000-000000000000"
        images = folder / ("hagrid_dataset" if v2 else f"train_val_{gesture}")
        if v2:
            images = images / gesture
        link(data / "images" / rel, images / f"{image_id}.jpg")
        annotations = folder / ("hagrid_annotations/train" if v2 else "ann_train_val")
        annotations.mkdir(parents=True, exist_ok=True)
        records = {image_id: _hagrid_record(index, v2), "ffffffff-missing-image": _hagrid_record(9, v2)}
        (annotations / f"{gesture}.json").write_text(json.dumps(records))
    return folder


def img2dataset_tar(data: Path, root: Path, photos: list[str] = FACE_PHOTOS) -> Path:
    folder = root / "laion_face_tar"
    folder.mkdir(parents=True)
    with tarfile.open(folder / "00000.tar", "w") as tar:
        for i, rel in enumerate(photos):
            key = f"00000{i:04d}"
            files = {
                f"{key}.jpg": (data / "images" / rel).read_bytes(),
                f"{key}.txt": f"a portrait photo {i}".encode(),
                f"{key}.json": json.dumps({"url": f"https://example.org/{i}.jpg", "key": key}).encode(),
            }
            for name, payload in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return folder


def img2dataset_parquet(data: Path, root: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = root / "laion_face_parquet"
    folder.mkdir(parents=True)
    rows = {
        "key": [f"1{i:08d}" for i in range(len(FACE_PHOTOS))],
        "jpg": [(data / "images" / rel).read_bytes() for rel in FACE_PHOTOS],
        "caption": [f"face {i}" for i in range(len(FACE_PHOTOS))],
        "url": [f"https://example.org/{i}" for i in range(len(FACE_PHOTOS))],
        "status": ["success"] * len(FACE_PHOTOS),
    }
    pq.write_table(pa.table(rows), folder / "00000.parquet")
    return folder


def face_synthetics(data: Path, root: Path) -> Path:
    folder = root / "face_synthetics"
    folder.mkdir(parents=True)
    for i, rel in enumerate(FACE_PHOTOS[:2]):
        image = Image.open(data / "images" / rel).convert("RGB")
        image.save(folder / f"{i:06d}.png")
        Image.new("L", image.size).save(folder / f"{i:06d}_seg.png")
        (folder / f"{i:06d}_ldmks.txt").write_text("\n".join(f"{10 + k} {20 + k}" for k in range(70)))
    return folder


def hf_dataset(data: Path, root: Path) -> Path:
    """A local `datasets` dataset in Parquet (what load_dataset(path) and streaming read)."""
    import datasets

    folder = root / "hf_dataset"
    photos = [str(data / "images" / rel) for rel in HAND_PHOTOS[:3]]
    dataset = datasets.Dataset.from_dict(
        {"photo": photos, "text": [f"text {i}" for i in range(3)], "uid": ["a", "b", "c"]}
    ).cast_column("photo", datasets.Image())
    (folder / "data").mkdir(parents=True)
    dataset.to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    return folder


def comparable_rows(dataset) -> list[list[str]]:
    """source_id, caption, sha256 of both images, landmarks and the size columns of every row, sorted."""
    import hashlib

    import datasets

    dataset = dataset.cast_column("image", datasets.Image(decode=False))
    dataset = dataset.cast_column("conditioning_image", datasets.Image(decode=False))
    return sorted(
        [
            r["source_id"],
            r["caption"],
            hashlib.sha256(r["image"]["bytes"]).hexdigest(),
            hashlib.sha256(r["conditioning_image"]["bytes"]).hexdigest(),
            r["landmarks"],
            json.dumps([r.get("original_size"), r.get("crop_top_left")]),
        ]
        for r in dataset
    )


# Small hands in Full HD frames, as HaGRID's photos have them (hands 60-250 px in 1920 x 1080): shared
# hand photos pasted small over a real background, each scaled so that its largest hand is
# `hand_side` px, with HaGRID boxes made from the hands' own landmarks (found in the shared photo at
# its full size, mapped through the paste, padded 15%). Some boxes are planted on the background,
# where there is no hand: the hand search must count them as `hint_not_found`. At most two hands a
# frame (the hand conditioners' `max_num_hands`).
@dataclass(frozen=True)
class PastedPhoto:
    photo: str  # under images/
    hand_side: int  # the longer side of its largest hand once pasted, in frame pixels
    at: tuple[int, int]  # where its top-left corner goes in the frame
    label: str | None = None  # its hands' HaGRID label; None: the frame's gesture


@dataclass(frozen=True)
class SmallHandFrame:
    background: str  # under images/negatives/
    pasted: tuple[PastedPhoto, ...]
    empty_boxes: tuple[tuple[int, int, int, int], ...] = ()  # x0, y0, x1, y1 on the background only


SMALL_HAND_FRAMES = {
    "four": SmallHandFrame(
        "mediapipe_dino.jpg",
        (
            PastedPhoto("hands/mediapipe_gesture_four_15a73593.jpg", 90, (200, 300)),
            PastedPhoto("hands/mmpose_freihand_00000355.jpg", 70, (1400, 250), label="no_gesture"),
        ),
        empty_boxes=((900, 620, 990, 710),),
    ),
    "heart": SmallHandFrame(
        "sklearn_china.jpg", (PastedPhoto("hands/hagrid_tile10_heart_two_hands.jpg", 70, (700, 150)),)
    ),
    "rock": SmallHandFrame(
        "sam_groceries.jpg",
        (
            PastedPhoto("hands/mediapipe_gesture_rock_15cb4e8b.jpg", 110, (150, 250)),
            PastedPhoto("hands/hagrid_tile04_one_finger.jpg", 65, (1300, 500)),
        ),
        empty_boxes=((1000, 150, 1080, 230),),
    ),
}
BOX_PADDING = 0.15
SMALL_HANDS_FRAME = (1920, 1080)  # HaGRID's photo size


@dataclass(frozen=True)
class SmallHands:
    """`hagrid_small_hands`: its folder, and by source id the pixel boxes of the pasted hands."""

    root: Path
    hands: dict[str, list[tuple[float, float, float, float]]]
    empty_boxes: int


def _hand_boxes_of(path: Path) -> list[tuple[float, float, float, float]]:
    """The landmark boxes (x0, y0, x1, y1, pixels) of the hands MediaPipe finds in `path`, at full size."""
    import conditioners

    with conditioners.get("hand_encoded", detect_long_side=None) as hands:
        detection = hands.detect(str(path))
    return [instance.bbox() for instance in detection.instances]


def small_hand_frame(data: Path, frame: SmallHandFrame, gesture: str) -> tuple[Image.Image, list, list, list]:
    """The 1920 x 1080 picture of `frame`, its HaGRID boxes (normalised x, y, w, h) and their labels, and
    the pixel boxes of its hands."""
    from PIL import ImageOps

    background = Image.open(data / "images" / "negatives" / frame.background).convert("RGB")
    picture = ImageOps.fit(background, SMALL_HANDS_FRAME, Image.Resampling.LANCZOS)
    boxes, labels, hands = [], [], []

    def add(box: tuple[float, float, float, float], label: str) -> None:
        x0, y0, x1, y1 = box
        width, height = SMALL_HANDS_FRAME
        boxes.append([x0 / width, y0 / height, (x1 - x0) / width, (y1 - y0) / height])
        labels.append(label)

    for pasted in frame.pasted:
        path = data / "images" / pasted.photo
        found = _hand_boxes_of(path)
        assert found, f"MediaPipe finds no hand in {pasted.photo} at full size"
        scale = pasted.hand_side / max(max(x1 - x0, y1 - y0) for x0, y0, x1, y1 in found)
        photo = Image.open(path).convert("RGB")
        size = (round(photo.width * scale), round(photo.height * scale))
        picture.paste(photo.resize(size, Image.Resampling.LANCZOS), pasted.at)
        for x0, y0, x1, y1 in found:
            (left, top), pad_x, pad_y = pasted.at, BOX_PADDING * (x1 - x0), BOX_PADDING * (y1 - y0)
            box = (
                left + (x0 - pad_x) * scale,
                top + (y0 - pad_y) * scale,
                left + (x1 + pad_x) * scale,
                top + (y1 + pad_y) * scale,
            )
            hands.append(box)
            add(box, pasted.label or gesture)
    for box in frame.empty_boxes:
        add(box, gesture)
    return picture, boxes, labels, hands


def hagrid_small_hands(
    data: Path, root: Path, frames: dict[str, SmallHandFrame] = SMALL_HAND_FRAMES
) -> SmallHands:
    """A HaGRID v2 folder of `frames` (by gesture), one JPEG per gesture, written under `root`."""
    folder = root / "hagrid_small_hands"
    annotations = folder / "hagrid_annotations" / "train"
    annotations.mkdir(parents=True)
    hands = {}
    for index, (gesture, frame) in enumerate(frames.items()):
        image_id = f"{index:08x}-0000-4000-8000-0000000054a1"
        picture, boxes, labels, pasted = small_hand_frame(data, frame, gesture)
        images = folder / "hagrid_dataset" / gesture
        images.mkdir(parents=True)
        picture.save(images / f"{image_id}.jpg", quality=92)
        record = {
            "bboxes": boxes,
            "labels": labels,
            "united_bbox": [None],
            "united_label": [None],
            "user_id": f"user{index}",
            "hand_landmarks": [[] for _ in boxes],
            "meta": {"age": [30], "gender": ["female"], "race": ["White"]},
        }
        (annotations / f"{gesture}.json").write_text(json.dumps({image_id: record}))
        hands[f"{gesture}/{image_id}"] = pasted
    empty = sum(len(frame.empty_boxes) for frame in frames.values())
    return SmallHands(folder, hands, empty)
