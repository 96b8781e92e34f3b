"""One framing from photo to model input: training, validation and refine-hands agree on the geometry."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conditioners.images import center_crop_framing, resize_and_crop, uncrop
from landmark_controlnet.refine_hands import framed_drawing, working_size
from landmark_controlnet.training import data as input_data
from landmark_controlnet.training.validation import ValidationSet

GREEN, RED, BLUE, WHITE = (0, 255, 0), (255, 0, 0), (0, 0, 255), (255, 255, 255)


def striped(width: int = 96, height: int = 64) -> Image.Image:
    """Outer strips that a centre crop removes and a squash keeps; a red | blue split in the middle."""
    pixels = np.zeros((height, width, 3), np.uint8)
    quarter = width // 6
    for (start, stop), colour in zip(
        [(0, quarter), (quarter, width // 2), (width // 2, width - quarter), (width - quarter, width)],
        [GREEN, RED, BLUE, WHITE],
        strict=True,
    ):
        pixels[:, start:stop] = colour
    pixels[: height // 4] //= 2  # a darker top band: rows matter too
    return Image.fromarray(pixels)


def left_mask(width: int = 96, height: int = 64) -> Image.Image:
    mask = np.zeros((height, width), np.uint8)
    mask[height // 4 : 3 * height // 4, width // 8 : width // 3] = 255
    return Image.fromarray(mask)


@pytest.fixture
def files(tmp_path):
    paths = {
        "conditioning": tmp_path / "cond.png",
        "photo": tmp_path / "photo.png",
        "mask": tmp_path / "mask.png",
    }
    striped().save(paths["conditioning"])
    striped().transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(paths["photo"])
    left_mask().save(paths["mask"])
    return paths


def training_example(files, resolution: int) -> dict[str, np.ndarray]:
    cells = {key: {"bytes": None, "path": str(path)} for key, path in files.items()}
    row = {
        "image": cells["photo"],
        "conditioning_image": cells["conditioning"],
        "mask": cells["mask"],
        "caption": "p",
    }
    options = input_data.ExampleOptions(resolution)
    return input_data.prepare_example(row, input_data.Columns(mask="mask"), options, np.random.default_rng(0))


@pytest.mark.parametrize("resolution", [64, 48])
def test_validation_conditioning_is_framed_exactly_as_training_frames_it(files, resolution):
    validation = ValidationSet.from_flags(["p"], [str(files["conditioning"])])
    framed = validation.framed(resolution).images[0]
    seen = input_data.conditioning_values(framed)
    trained = training_example(files, resolution)["conditioning_pixel_values"]
    assert seen.shape == trained.shape == (resolution, resolution, 3)
    np.testing.assert_array_equal(seen, trained)
    squashed = striped().resize((resolution, resolution), Image.Resampling.BILINEAR)
    assert not np.array_equal(seen, input_data.conditioning_values(squashed)), (
        "a squash keeps the outer strips"
    )
    assert not (np.asarray(framed) == GREEN).all(axis=2).any(), "the crop removed the green strip"


@pytest.mark.parametrize("resolution", [64, 48])
def test_inpainting_validation_frames_photo_mask_and_depth_as_training(files, resolution):
    photo, mask = (input_data.decode(str(files[k]), k) for k in ("photo", "mask"))
    validation = ValidationSet(["p"], [striped()], [photo], [mask.convert("L")]).framed(resolution)
    trained = training_example(files, resolution)
    np.testing.assert_array_equal(np.asarray(validation.photos[0]), trained["pixel_values"])
    np.testing.assert_array_equal(np.asarray(validation.masks[0])[..., None], trained["mask"])
    np.testing.assert_array_equal(
        input_data.conditioning_values(validation.images[0]), trained["conditioning_pixel_values"]
    )
    assert set(np.unique(np.asarray(validation.masks[0]))) == {0, 255}


def gradient(width: int, height: int) -> Image.Image:
    x, y = np.meshgrid(np.linspace(0, 255, width), np.linspace(0, 255, height))
    return Image.fromarray(np.stack([x, y, 255 - x], axis=2).astype(np.uint8))


@pytest.mark.parametrize("size", [(1000, 600), (333, 517), (512, 512)])
def test_uncrop_puts_the_work_image_back_and_keeps_the_cropped_border(size):
    photo = gradient(*size)
    framing = center_crop_framing(size, working_size(size, 256))
    work = resize_and_crop(photo, framing, Image.Resampling.LANCZOS)
    back = np.asarray(uncrop(work, framing, photo, Image.Resampling.LANCZOS), np.int16)
    assert back.shape == np.asarray(photo).shape
    assert np.abs(back - np.asarray(photo)).max() <= 3, "a round trip is the photo again"
    grey = np.asarray(uncrop(Image.new("RGB", framing.size, (128, 128, 128)), framing, photo))
    changed = (grey != np.asarray(photo)).any(axis=2)
    rows, cols = np.nonzero(changed)
    (left, top), scale = framing.offset, framing.scale
    expected = (left / scale[0], top / scale[1], (left + framing.size[0]) / scale[0])
    assert abs(cols.min() - expected[0]) <= 1 and abs(rows.min() - expected[1]) <= 1
    assert abs(cols.max() + 1 - expected[2]) <= 1
    centre = grey[size[1] // 2, size[0] // 2]
    np.testing.assert_array_equal(centre, (128, 128, 128))


def test_framed_drawings_line_up_with_the_framed_photo():
    size = (1000, 600)
    framing = center_crop_framing(size, working_size(size, 512))
    assert framing.offset[0] > 0, "a framing that crops"

    def draw(canvas: tuple[int, int]) -> np.ndarray:  # a box at fixed fractions of the picture
        mask = np.zeros((canvas[1], canvas[0]), np.uint8)
        mask[
            round(0.3 * canvas[1]) : round(0.6 * canvas[1]), round(0.01 * canvas[0]) : round(0.2 * canvas[0])
        ] = 255
        return mask

    drawn = framed_drawing(draw, framing) > 0
    photo_framed = np.asarray(resize_and_crop(draw(size), framing, Image.Resampling.NEAREST)) > 0
    assert drawn.shape == (framing.size[1], framing.size[0])
    assert (drawn != photo_framed).sum() <= drawn.shape[0] + drawn.shape[1], (
        "at most a pixel off at the edges"
    )
