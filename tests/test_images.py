"""Every kind of input a user may pass: it works, or fails with an ImageLoadError naming it."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

import conditioners
from conditioners.images import ImageLoadError, load_image, read_image_size

PHOTO = "hands/mediapipe_gesture_four_15a73593.jpg"


@pytest.fixture(scope="module")
def photo(data_dir) -> Image.Image:
    return Image.open(data_dir / "images" / PHOTO).convert("RGB")


def png_bytes(image: Image.Image, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **params)
    return buffer.getvalue()


def jpeg_with_orientation(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95, exif=exif)
    return buffer.getvalue()


def test_path_bytes_pil_and_array_agree(data_dir, photo):
    path = data_dir / "images" / PHOTO
    expected = np.asarray(photo)
    for source in (path, str(path), path.read_bytes(), photo, expected):
        loaded = load_image(source)
        assert loaded.size == photo.size
        np.testing.assert_array_equal(loaded.pixels, expected)


def test_modes_convert_to_rgb(photo):
    gray = photo.convert("L")
    palette = photo.convert("P", palette=Image.Palette.ADAPTIVE)
    cases = {  # mode: (stored image, what it should read back as)
        "L": (gray, gray.convert("RGB")),
        "LA": (gray.convert("LA"), gray.convert("RGB")),
        "P": (palette, palette.convert("RGB")),
        "RGBA": (photo.convert("RGBA"), photo),
        "CMYK": (photo.convert("CMYK"), photo),
        "I;16": (Image.fromarray(np.asarray(gray).astype(np.uint16) * 257), gray.convert("RGB")),
    }
    for mode, (image, expected) in cases.items():
        assert image.mode == mode
        rgb = load_image(_jpeg(image) if mode == "CMYK" else png_bytes(image)).pixels
        assert rgb.shape == (photo.height, photo.width, 3) and rgb.dtype == np.uint8, mode
        assert np.abs(rgb.astype(np.int16) - np.asarray(expected, dtype=np.int16)).mean() < 3, mode


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_sixteen_bit_is_scaled_not_clipped():
    ramp = np.linspace(0, 65535, 256 * 4, dtype=np.uint16).reshape(4, 256)
    loaded = load_image(png_bytes(Image.fromarray(ramp))).pixels[:, :, 0]
    np.testing.assert_allclose(loaded.astype(float), ramp / 257.0, atol=0.51)
    assert load_image(ramp).pixels.max() == 255


def test_sixteen_bit_rgb_png(tmp_path):
    """A 48-bit RGB PNG written by hand (PIL cannot write one): its high bytes are the 8-bit image."""
    rng = np.random.default_rng(0)
    rgb16 = rng.integers(0, 65536, size=(8, 12, 3), dtype=np.uint16)
    path = tmp_path / "rgb16.png"
    path.write_bytes(_png_rgb16(rgb16))
    loaded = load_image(path).pixels
    assert np.abs(loaded.astype(int) - (rgb16 >> 8).astype(int)).max() <= 1


def _png_rgb16(pixels: np.ndarray) -> bytes:
    height, width, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def test_alpha_is_composited_over_white_by_default():
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[:2, :, :] = (255, 0, 0, 255)  # opaque red top, fully transparent bottom
    loaded = load_image(png_bytes(Image.fromarray(rgba, "RGBA"))).pixels
    assert (loaded[:2] == (255, 0, 0)).all() and (loaded[2:] == 255).all()
    black = load_image(Image.fromarray(rgba, "RGBA"), background=(0, 0, 0)).pixels
    assert (black[2:] == 0).all()


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_exif_orientation_is_applied(photo, orientation):
    small = photo.resize((80, 60))
    transposed = {
        1: None,
        3: Image.Transpose.ROTATE_180,
        6: Image.Transpose.ROTATE_90,
        8: Image.Transpose.ROTATE_270,
    }
    # A camera that stores orientation 6 saved the upright image rotated 90 degrees counter-clockwise.
    stored = small.transpose(transposed[orientation]) if transposed[orientation] else small
    data = jpeg_with_orientation(stored, orientation)
    loaded = load_image(data)
    assert loaded.size == (80, 60)
    assert read_image_size(data) == (80, 60)
    assert np.abs(loaded.pixels.astype(int) - np.asarray(small, dtype=int)).mean() < 6


def test_reduced_jpeg_decode_keeps_geometry(data_dir):
    """Draft-mode decoding for detection covers exactly the full image (landmarks map back exactly)."""
    path = data_dir / "images/hands/mmpose_panoptic_005880453_01.jpg"
    full = Image.open(path).convert("RGB")
    reduced = load_image(path, long_side=320)
    assert reduced.size == full.size and reduced.pixels.shape == (180, 320, 3)
    reference = np.asarray(full.resize((320, 180), Image.Resampling.BILINEAR, reducing_gap=None), dtype=int)
    assert np.abs(reduced.pixels.astype(int) - reference).mean() < 4


def test_truncated_corrupt_and_missing_files_name_the_file(tmp_path, data_dir):
    data = (data_dir / "images" / PHOTO).read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 3])
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    for path in (truncated, corrupt, text, tmp_path / "missing.jpg", tmp_path):
        with pytest.raises(ImageLoadError) as info:
            load_image(path, long_side=512)
        assert str(path) in str(info.value) and info.value.reason


def test_decompression_bomb_is_refused(tmp_path):
    """A 10 kB PNG that claims 40000 x 40000 pixels is refused before any pixel is decoded."""
    header = struct.pack(">IIBBBBB", 40_000, 40_000, 8, 0, 0, 0, 0)

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 10_000))
    )
    with pytest.raises(ImageLoadError, match="bomb.png.*too large"):
        load_image(bomb)
    small_limit = tmp_path / "big.png"
    small_limit.write_bytes(png_bytes(Image.new("RGB", (300, 300))))
    with pytest.raises(ImageLoadError, match="max_pixels"):
        load_image(small_limit, max_pixels=10_000)


def test_arrays_of_every_dtype():
    base = np.linspace(0, 1, 64 * 48).reshape(48, 64)
    for array in (
        base,
        base.astype(np.float32),
        (base * 255).astype(np.uint8),
        (base * 65535).astype(np.uint16),
        base > 0.5,
        np.dstack([base] * 3),
        np.dstack([base] * 4),
        base[:, :, None],
    ):
        loaded = load_image(array)
        assert loaded.pixels.shape == (48, 64, 3) and loaded.size == (64, 48)
    with pytest.raises(ImageLoadError, match="not an image"):
        load_image(np.zeros((4, 4, 2)))


def test_every_shared_photo_and_bad_file_through_every_conditioner(data_dir, tmp_path, conditioner_cache):
    """Nothing in ../shared/data/images may crash a conditioner; bad files raise ImageLoadError only."""
    photos = sorted(
        p for p in (data_dir / "images").rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"}
    )
    assert len(photos) > 90
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 50)
    for name in conditioners.available():
        conditioner = conditioner_cache(name)
        reasons = set()
        for path in photos:
            result = conditioner(path)
            assert result.to_array().shape == (result.detection.height, result.detection.width, 3)
            reasons.add(result.skipped)
        assert None in reasons, f"{name} kept nothing"
        with pytest.raises(ImageLoadError, match="bad.jpg"):
            conditioner(bad)
