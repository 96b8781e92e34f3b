"""Reading any image a user may pass into an RGB array, or failing with the file's name.

Policy:
- EXIF orientation is applied; sizes and landmarks refer to the upright image.
- Alpha (LA, PA, RGBA, palette transparency) is composited over a background, white by default,
  because a transparent area is "nothing there", not black pixels.
- 16-bit data (I;16 PNG/TIFF, 32-bit I holding 16-bit values) is scaled by 1/257, not clipped.
- CMYK is converted through its embedded ICC profile when there is one.
- Truncated, corrupt and over-large images raise `ImageLoadError`, which names the source.
- JPEGs that only need a small detection copy are decoded at reduced scale (draft mode).
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageCms, UnidentifiedImageError

from .detection import HintBox
from .errors import UserError

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | Image.Image | np.ndarray

# Files that folders are searched for, by the condition command and by folder sources alike.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})

# PIL raises DecompressionBombError itself above twice its MAX_IMAGE_PIXELS; match that by default.
DEFAULT_MAX_PIXELS = 2 * (Image.MAX_IMAGE_PIXELS or 89_478_485)
WHITE = (255, 255, 255)

_EXIF_ORIENTATION_TAG = 0x0112
_TRANSPOSE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
_ALPHA_MODES = {"LA", "La", "PA", "RGBA", "RGBa"}


class ImageLoadError(UserError, ValueError):
    """An input could not be read as an image; `source` names it and `reason` says why."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


@dataclass
class LoadedImage:
    """An upright RGB image, possibly reduced for detection, and the size of the full image."""

    pixels: np.ndarray  # (h, w, 3) uint8, C-contiguous
    size: tuple[int, int]  # (width, height) of the full, upright input
    name: str
    # The same picture at more detail than `pixels` (up to `size`), for detectors that look closer
    # at regions of it (the hand search); None when only `pixels` were decoded.
    detail: np.ndarray | None = None
    # How the picture was cut from its source photo, when it was (a build's `resize_short_side`).
    framing: Framing | None = None
    # Decodes `detail` when it is first asked for (`sharpest()`): most pictures never need it.
    decode_detail: Callable[[], np.ndarray] | None = field(default=None, repr=False, compare=False)

    def sharpest(self) -> np.ndarray:
        """`detail`, decoded now if it is not yet, else `pixels`."""
        if self.detail is None and self.decode_detail is not None:
            self.detail, self.decode_detail = self.decode_detail(), None
        return self.pixels if self.detail is None else self.detail

    def hints_here(self, hints: Sequence[HintBox]) -> list[HintBox]:
        """`hints` given in the source photo's pixels, mapped into this picture's (through `framing`)."""
        if self.framing is None:
            return list(hints)
        (sx, sy), (left, top) = self.framing.scale, self.framing.offset
        return [
            HintBox(h.x0 * sx - left, h.y0 * sy - top, h.x1 * sx - left, h.y1 * sy - top, h.label)
            for h in hints
        ]


def describe_source(source: ImageSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    if isinstance(source, Image.Image):
        return getattr(source, "filename", "") or "<PIL image>"
    return f"<array {getattr(source, 'shape', '?')}>"


def load_image(
    source: ImageSource,
    *,
    long_side: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = WHITE,
    name: str | None = None,
) -> LoadedImage:
    """Read `source` as upright RGB, downscaled so its long side is at most `long_side`."""
    name = name or describe_source(source)
    if isinstance(source, np.ndarray):
        image = array_to_image(source, name)
    elif isinstance(source, Image.Image):
        image = source
    else:
        image = _open(source, name)
    _check_pixels(image, max_pixels, name)
    orientation = _orientation(image)
    size = _upright_size(image.size, orientation)
    try:
        image = _reduce(image, long_side)
        image = to_rgb(image, background)
    except (OSError, SyntaxError, ValueError) as exc:  # PIL reports truncation as OSError
        raise ImageLoadError(name, f"cannot decode image: {exc}") from exc
    if orientation in _TRANSPOSE_FOR_ORIENTATION:
        image = image.transpose(_TRANSPOSE_FOR_ORIENTATION[orientation])
    return LoadedImage(pixels=np.ascontiguousarray(np.asarray(image)), size=size, name=name)


def read_image_size(source: ImageSource, name: str | None = None) -> tuple[int, int]:
    """Upright (width, height) without decoding the pixels."""
    name = name or describe_source(source)
    image = source if isinstance(source, Image.Image) else _open(source, name)
    return _upright_size(image.size, _orientation(image))


def _open(source: ImageSource, name: str) -> Image.Image:
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            fp: io.BytesIO | str | os.PathLike = io.BytesIO(bytes(source))
        else:
            fp = source  # type: ignore[assignment]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(fp)
    except FileNotFoundError as exc:
        raise ImageLoadError(name, "file not found") from exc
    except IsADirectoryError as exc:
        raise ImageLoadError(name, "is a directory") from exc
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(name, f"image too large (decompression bomb guard): {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageLoadError(name, "not a recognised image format (corrupt or not an image)") from exc
    except OSError as exc:
        raise ImageLoadError(name, f"cannot open: {exc}") from exc


def _check_pixels(image: Image.Image, max_pixels: int, name: str) -> None:
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageLoadError(name, f"empty image ({width}x{height})")
    if width * height > max_pixels:
        raise ImageLoadError(
            name, f"image too large: {width}x{height} = {width * height} pixels > max_pixels={max_pixels}"
        )


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION_TAG, 1))
    except Exception:  # a broken EXIF block must not lose the photo
        return 1


def _upright_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    width, height = size
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def scaled_size(size: tuple[int, int], long_side: int | None) -> tuple[int, int]:
    """`size` shrunk (never enlarged) so that its long side is `long_side`."""
    width, height = size
    if not long_side or max(width, height) <= long_side:
        return size
    scale = long_side / max(width, height)
    return (max(1, round(width * scale)), max(1, round(height * scale)))


def shrunk(pixels: np.ndarray, long_side: int | None) -> np.ndarray:
    """`pixels` resized (never enlarged) so that the long side is at most `long_side`."""
    height, width = pixels.shape[:2]
    target = scaled_size((width, height), long_side)
    if target == (width, height):
        return pixels
    image = Image.fromarray(pixels).resize(target, Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(image)


@dataclass(frozen=True)
class Framing:
    """How a picture of `source_size` becomes one of `size`: resize to `resized_size`, which covers
    `size`, then crop the `size` box at `offset` (left, top). One geometry for photos, drawings,
    masks and landmarks alike, so that all of them stay aligned."""

    source_size: tuple[int, int]
    resized_size: tuple[int, int]
    offset: tuple[int, int]
    size: tuple[int, int]

    @property
    def scale(self) -> tuple[float, float]:
        return (self.resized_size[0] / self.source_size[0], self.resized_size[1] / self.source_size[1])

    @property
    def box(self) -> tuple[int, int, int, int]:
        """The crop box in the resized image."""
        left, top = self.offset
        return (left, top, left + self.size[0], top + self.size[1])


def center_crop_framing(source_size: tuple[int, int], target: int | tuple[int, int]) -> Framing:
    """Scale (keeping the aspect ratio) until the picture covers `target`, then centre-crop.

    `target` is (width, height), or one int for a square (short side resized to it)."""
    width, height = (target, target) if isinstance(target, int) else target
    scale = max(width / source_size[0], height / source_size[1])
    resized = (max(width, round(source_size[0] * scale)), max(height, round(source_size[1] * scale)))
    offset = ((resized[0] - width) // 2, (resized[1] - height) // 2)
    return Framing(tuple(source_size), resized, offset, (width, height))


def box_framing(
    source_size: tuple[int, int], box: tuple[float, float, float, float], short_side: int
) -> Framing:
    """The framing that cuts `box` (left, top, right, bottom in the pixels of a picture of
    `source_size`) and scales it so that its short side is `short_side`: the whole picture resized
    by short_side / the box's short side, then cropped at the box (rounded to whole pixels of the
    resized picture, and kept inside it)."""
    left, top, right, bottom = box
    width, height = right - left, bottom - top
    if min(width, height) <= 0:
        raise ValueError(f"empty box {box}")
    scale = short_side / min(width, height)
    resized = (max(1, round(source_size[0] * scale)), max(1, round(source_size[1] * scale)))
    size = tuple(
        min(limit, short_side if side == min(width, height) else round(side * scale))
        for side, limit in ((width, resized[0]), (height, resized[1]))
    )
    offset = (
        min(max(0, round(left * scale)), resized[0] - size[0]),
        min(max(0, round(top * scale)), resized[1] - size[1]),
    )
    return Framing(tuple(source_size), resized, offset, size)


def resize_and_crop(
    image: Image.Image | np.ndarray,
    target: int | tuple[int, int] | Framing,
    resample: Image.Resampling = Image.Resampling.BILINEAR,
) -> Image.Image:
    """The project's one resize + crop (builds, training, validation, refine-hands).

    `target` is a `Framing` or what `center_crop_framing` takes. A centred crop resizes the whole
    picture and cuts it, as it always has; any other crop (a build's crop around the hands, often a
    small part of a big photo) resizes only the source pixels under its box (PIL's `box`, whose
    filter still reads the pixels around the box), so a 512 px crop of a Full HD frame never builds
    the enlarged frame. The two differ only by the resampling's rounding."""
    if isinstance(image, np.ndarray):
        image = array_to_image(image)
    framing = target if isinstance(target, Framing) else center_crop_framing(image.size, target)
    if framing.source_size != image.size:
        raise ValueError(f"framing is for a {framing.source_size} image, got {image.size}")
    if framing.resized_size == framing.size:
        return image if framing.size == image.size else image.resize(framing.size, resample)
    if not _centred(framing):
        (sx, sy), (left, top, right, bottom) = framing.scale, framing.box
        return image.resize(framing.size, resample, box=(left / sx, top / sy, right / sx, bottom / sy))
    if framing.resized_size != image.size:
        image = image.resize(framing.resized_size, resample)
    return image.crop(framing.box)


def _centred(framing: Framing) -> bool:
    """Whether `framing` cuts the middle of the resized picture (as `center_crop_framing` does)."""
    (rw, rh), (w, h) = framing.resized_size, framing.size
    return framing.offset == ((rw - w) // 2, (rh - h) // 2)


def uncrop(
    image: Image.Image | np.ndarray,
    framing: Framing,
    background: Image.Image | np.ndarray,
    resample: Image.Resampling = Image.Resampling.BILINEAR,
) -> Image.Image:
    """The inverse of `resize_and_crop(background, framing)`: `image` (of `framing.size`) put back
    into the crop box of the resized frame, and that frame resized to `framing.source_size`.

    What the crop cut off keeps `background`'s own pixels exactly; the rest of the frame is the
    resized `background`, so that resampling near the box's edges blends with the right picture."""
    image, background = (array_to_image(a) if isinstance(a, np.ndarray) else a for a in (image, background))
    if image.size != framing.size or background.size != framing.source_size:
        raise ValueError(
            f"framing is {framing.source_size} -> {framing.size}, got {background.size} -> {image.size}"
        )
    frame = background.resize(framing.resized_size, resample)
    frame.paste(image, framing.offset)
    box = _source_box(framing)
    result = background.copy()
    result.paste(frame.resize(framing.source_size, resample).crop(box), box[:2])
    return result


def _source_box(framing: Framing) -> tuple[int, int, int, int]:
    """The input pixels wholly inside the crop box; integer arithmetic, so no rounding drift."""
    (left, top, right, bottom), (sw, sh), (rw, rh) = framing.box, framing.source_size, framing.resized_size
    return (-(-left * sw // rw), -(-top * sh // rh), right * sw // rw, bottom * sh // rh)


def encode_png(image: Image.Image, compress_level: int = 1) -> bytes:
    """The project's PNG encoder: fast compression, because conditioning images are mostly flat."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def encode_jpeg(image: Image.Image, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _reduce(image: Image.Image, long_side: int | None) -> Image.Image:
    target = scaled_size(image.size, long_side)
    if target == image.size:
        image.load()
        return image
    box = None
    if image.format == "JPEG" and image.mode in ("RGB", "L"):
        # DCT-domain downscale: decodes 2-8x fewer pixels. `box` keeps the mapping exact.
        result = image.draft(image.mode, target)
        box = result[1] if result else None
    image.load()
    if image.mode not in ("RGB", "L"):
        image = to_rgb(image, WHITE)
    return image.resize(target, Image.Resampling.BILINEAR, box=box, reducing_gap=None if box else 2.0)


def to_rgb(image: Image.Image, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB following the module's policy."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if np.nanmax(values, initial=0.0) <= 1.0:
            values = values * 255.0
        return Image.fromarray(np.clip(np.nan_to_num(values), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "CMYK":
        return _cmyk_to_rgb(image)
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def _cmyk_to_rgb(image: Image.Image) -> Image.Image:
    icc = image.info.get("icc_profile")
    if icc:
        try:
            source_profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(
                image, source_profile, ImageCms.createProfile("sRGB"), outputMode="RGB"
            )
        except (ImageCms.PyCMSError, OSError):
            pass  # an unusable profile falls back to the naive conversion
    return image.convert("RGB")


def array_to_image(array: np.ndarray, name: str = "<array>") -> Image.Image:
    """A numpy image (RGB channel order; uint8, uint16, bool or float in [0, 1]) as a PIL image."""
    values = np.asarray(array)
    if values.ndim == 3 and values.shape[2] == 1:
        values = values[:, :, 0]
    if values.ndim not in (2, 3) or (values.ndim == 3 and values.shape[2] not in (3, 4)):
        raise ImageLoadError(name, f"array of shape {values.shape} is not an image (H, W[, 1|3|4])")
    if values.dtype == np.bool_:
        values = values.astype(np.uint8) * 255
    elif values.dtype == np.uint16:
        values = np.rint(values / 257.0).astype(np.uint8)
    elif np.issubdtype(values.dtype, np.floating):
        values = np.clip(np.rint(np.nan_to_num(values) * 255.0), 0, 255).astype(np.uint8)
    elif values.dtype != np.uint8:
        values = np.clip(values, 0, 255).astype(np.uint8)
    mode = "L" if values.ndim == 2 else ("RGB" if values.shape[2] == 3 else "RGBA")
    return Image.fromarray(np.ascontiguousarray(values), mode)
