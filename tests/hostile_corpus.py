"""A hostile corpus: about 50 bad, odd and tiny image files made from one real photo.

`write_hostile_corpus(folder, photo)` writes them and returns {file name: what it is}. Each
description starts with what any reader must make of the file:
- "unreadable: ..." nothing can decode it (empty, truncated, not an image, a decompression bomb);
- "readable: ..."   a valid image, however odd (modes, formats, EXIF orientations, 1x1, slivers);
- "damaged: ..."    flipped bits, which a decoder may get through (garbage pixels) or not.
Every stem is unique, so `landmark-controlnet condition` gives each file its own `<stem>.json`.
The files depend only on the photo and the seed (and on PIL's encoders).
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

UNREADABLE, READABLE, DAMAGED = "unreadable", "readable", "damaged"
PHOTO_LONG_SIDE = 512  # the photo is shrunk to this first: every variant stays quick to detect
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BOMB_SIDE = 40_000  # 1.6 gigapixels declared, far above PIL's ~179 MP refusal limit
EXIF_ORIENTATION = 0x0112
# The transpose that turns the upright photo into what a camera storing this orientation saved.
STORED_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}
# (width, height): a single pixel, small squares, and slivers whose short side is 1-3 px.
TINY_SIZES = ((1, 1), (2, 2), (8, 8), (16, 16))
SLIVER_SIZES = ((1, 300), (300, 1), (2, 500), (500, 2), (1, 2000), (2000, 3))

Entry = tuple[str, str, bytes]  # file name, description, contents


def kind_of(description: str) -> str:
    """UNREADABLE, READABLE or DAMAGED: the first word of a corpus description."""
    return description.split(":", 1)[0]


def write_hostile_corpus(folder: Path, photo: Path, seed: int = 0) -> dict[str, str]:
    """Write the corpus into `folder` (created if needed); return {file name: description}."""
    image = ImageOps.exif_transpose(Image.open(photo)).convert("RGB")
    image.thumbnail((PHOTO_LONG_SIDE, PHOTO_LONG_SIDE), Image.Resampling.LANCZOS)
    rng = np.random.default_rng(seed)
    jpeg, png = encode(image, "JPEG", quality=90), encode(image, "PNG")
    entries = [
        *truncations(jpeg, png),
        *bit_flips(jpeg, png, rng),
        *tiny_images(image),
        *not_images(),
        *modes_and_formats(image),
        *orientations(image),
    ]
    folder.mkdir(parents=True, exist_ok=True)
    corpus: dict[str, str] = {}
    for name, description, data in entries:
        if Path(name).stem in {Path(n).stem for n in corpus}:
            raise ValueError(f"duplicate stem in the hostile corpus: {name}")
        (folder / name).write_bytes(data)
        corpus[name] = description
    return corpus


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def raw_png(width: int, height: int, bit_depth: int, color_type: int, scanlines: bytes) -> bytes:
    """A PNG written chunk by chunk: for what PIL will not write (48-bit RGB, lying headers)."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(scanlines))
        + png_chunk(b"IEND", b"")
    )


def jpeg_headers_end(jpeg: bytes) -> int:
    """The offset just past the start-of-scan header: every marker is there, no pixel data."""
    start_of_scan = jpeg.index(b"\xff\xda")
    (length,) = struct.unpack(">H", jpeg[start_of_scan + 2 : start_of_scan + 4])
    return start_of_scan + 2 + length


def truncations(jpeg: bytes, png: bytes) -> Iterator[Entry]:
    yield "jpeg_cut_0.jpg", "unreadable: JPEG truncated to 0 bytes", b""
    yield (
        "jpeg_cut_headers.jpg",
        "unreadable: JPEG cut after its headers (no scan data)",
        jpeg[: jpeg_headers_end(jpeg)],
    )
    yield "jpeg_cut_quarter.jpg", "unreadable: JPEG cut at a quarter", jpeg[: len(jpeg) // 4]
    yield "jpeg_cut_half.jpg", "unreadable: JPEG cut at half", jpeg[: len(jpeg) // 2]
    yield "jpeg_cut_eoi.jpg", "damaged: JPEG missing only its end-of-image marker", jpeg[:-2]
    yield "png_cut_signature.png", "unreadable: PNG cut after its 8-byte signature", png[:8]
    yield "png_cut_ihdr.png", "unreadable: PNG cut after its header chunk", png[:33]
    yield "png_cut_half.png", "unreadable: PNG cut at half", png[: len(png) // 2]
    yield "png_cut_iend.png", "damaged: PNG missing only its IEND chunk", png[:-12]


def flip_bit(data: bytes, position: int, bit: int) -> bytes:
    flipped = bytearray(data)
    flipped[position] ^= 1 << bit
    return bytes(flipped)


def bit_flips(jpeg: bytes, png: bytes, rng: np.random.Generator) -> Iterator[Entry]:
    """One bit flipped in each region that decoders treat differently: headers, the data, its end."""
    headers, scan = jpeg_headers_end(jpeg), len(jpeg) - 2
    regions = {
        "jpeg_flip_headers.jpg": (jpeg, 2, headers),
        "jpeg_flip_scan_start.jpg": (jpeg, headers, headers + 64),
        "jpeg_flip_scan_middle.jpg": (jpeg, (headers + scan) // 2, (headers + scan) // 2 + 64),
        "png_flip_ihdr.png": (png, 16, 29),  # width, height, depth, colour type: the CRC breaks
        "png_flip_idat.png": (png, len(png) // 2, len(png) // 2 + 64),
    }
    for name, (data, low, high) in regions.items():
        position, bit = int(rng.integers(low, high)), int(rng.integers(0, 8))
        yield name, f"damaged: bit {bit} of byte {position} flipped", flip_bit(data, position, bit)


def tiny_images(image: Image.Image) -> Iterator[Entry]:
    for size in TINY_SIZES + SLIVER_SIZES:
        kind = "tiny" if size in TINY_SIZES else "sliver"
        fmt = "JPEG" if size in ((16, 16), (500, 2)) else "PNG"  # both decoders meet a tiny image
        name = f"{kind}_{size[0]}x{size[1]}.{'jpg' if fmt == 'JPEG' else 'png'}"
        resized = image.resize(size, Image.Resampling.BILINEAR)
        yield name, f"readable: the photo resized to {size[0]}x{size[1]} ({fmt})", encode(resized, fmt)


def not_images() -> Iterator[Entry]:
    yield "empty.png", "unreadable: an empty file", b""
    yield "text.jpg", "unreadable: a text file named .jpg", b"These are not the pixels you are looking for.\n"
    yield "zero_width.png", "unreadable: a PNG declaring 0 x 16 pixels", raw_png(0, 16, 8, 0, b"\0" * 16)
    bomb = raw_png(BOMB_SIDE, BOMB_SIDE, 8, 0, b"\0" * 10_000)  # a few rows of data, 10 kB on disk
    yield "bomb.png", f"unreadable: a decompression bomb ({BOMB_SIDE}x{BOMB_SIDE} declared)", bomb


def modes_and_formats(image: Image.Image) -> Iterator[Entry]:
    gray = image.convert("L")
    rgb16 = np.asarray(image, np.uint16) * 257  # the 8-bit photo in 16-bit range
    scanlines = b"".join(b"\0" + row.astype(">u2").tobytes() for row in rgb16)
    palette = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    yield "base.jpg", "readable: the photo as a baseline JPEG", encode(image, "JPEG", quality=90)
    yield "base_png.png", "readable: the photo as an RGB PNG", encode(image, "PNG")
    yield "progressive.jpg", "readable: progressive JPEG", encode(image, "JPEG", progressive=True)
    yield "cmyk.jpg", "readable: CMYK JPEG", encode(image.convert("CMYK"), "JPEG", quality=90)
    yield "gray16.png", "readable: 16-bit greyscale PNG (I;16)", encode(_sixteen_bit(gray), "PNG")
    yield (
        "rgb16.png",
        "readable: 48-bit RGB PNG (written by hand: PIL cannot)",
        raw_png(image.width, image.height, 16, 2, scanlines),
    )
    yield (
        "palette_trns.png",
        "readable: palette PNG with a transparent colour",
        encode(palette, "PNG", transparency=0),
    )
    yield "la.png", "readable: greyscale + alpha PNG (LA)", encode(_with_alpha(gray, "LA"), "PNG")
    yield "rgba.png", "readable: RGBA PNG, half transparent", encode(_with_alpha(image, "RGBA"), "PNG")
    yield "png_named.jpg", "readable: a PNG with a .jpg extension", encode(image, "PNG")
    yield "photo_gif.gif", "readable: GIF (palette)", encode(image, "GIF")
    yield "photo_webp.webp", "readable: lossy WebP", encode(image, "WEBP", quality=80)
    yield "photo_tiff.tiff", "readable: uncompressed TIFF", encode(image, "TIFF")


def _sixteen_bit(gray: Image.Image) -> Image.Image:
    sixteen = Image.fromarray(np.asarray(gray, np.uint16) * 257)
    if sixteen.mode != "I;16":  # PIL picks the mode from the dtype; the corpus promises I;16
        raise ValueError(f"expected an I;16 image, got {sixteen.mode}")
    return sixteen


def _with_alpha(image: Image.Image, mode: str) -> Image.Image:
    """`image` with its right half transparent."""
    with_alpha = image.convert(mode)
    alpha = np.full((image.height, image.width), 255, np.uint8)
    alpha[:, image.width // 2 :] = 0
    with_alpha.putalpha(Image.fromarray(alpha))
    return with_alpha


def orientations(image: Image.Image) -> Iterator[Entry]:
    """JPEGs stored as a camera would for EXIF orientations 2..8: upright, each is the photo."""
    for orientation, transpose in STORED_FOR_ORIENTATION.items():
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = orientation
        stored = image.transpose(transpose)
        data = encode(stored, "JPEG", quality=90, exif=exif)
        yield f"exif_{orientation}.jpg", f"readable: JPEG with EXIF orientation {orientation}", data
