"""`condition`'s output names and contact sheets, without a detector."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from landmark_controlnet.condition import output_names, save_contact_sheets


def test_output_names_never_share_a_file():
    paths = [Path(p) for p in ("/x/a/photo.jpg", "/x/b/photo.jpg", "/x/c/photo_1.jpg", "/y/photo.png")]
    assert output_names(paths, ["photo", "photo", "photo_1", "photo"]) == [
        "x/a/photo",
        "x/b/photo",
        "photo_1",
        "y/photo",
    ]
    # `hand_depth_mask` writes NAME_mask.png: an input called photo_mask would meet photo's mask.
    paths = [Path("/p/photo.jpg"), Path("/p/photo_mask.jpg")]
    assert output_names(paths, ["photo", "photo_mask"], extras=["mask"]) == ["photo", "photo_mask~2"]
    assert output_names(paths, ["photo", "photo_mask"]) == ["photo", "photo_mask"]


def test_contact_sheets_stay_bounded(tmp_path):
    tile = Image.new("RGB", (64, 48), "white")
    rows = [[(tile, f"photo {i}"), (tile, "kept")] for i in range(95)]
    written = save_contact_sheets(rows, tmp_path / "sheet.png", "hand_encoded")
    assert [p.name for p in written] == ["sheet.png", "sheet_2.png"]
    for path in written:
        width, height = Image.open(path).size
        assert max(width, height) < 3000 and 0.5 < width / height < 2.0, (width, height)
