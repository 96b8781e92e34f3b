"""Contact sheets: rows of thumbnails with a caption under each, for people to look at."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (32, 32, 32)
TEXT = (235, 235, 235)
CAPTION_HEIGHT = 18
GAP = 4


def thumbnail(image: Image.Image, tile: int) -> Image.Image:
    """`image` as RGB, fitted inside a tile x tile square and centred on the background."""
    image = image.convert("RGB")
    image.thumbnail((tile, tile), Image.Resampling.LANCZOS)
    square = Image.new("RGB", (tile, tile), BACKGROUND)
    square.paste(image, ((tile - image.width) // 2, (tile - image.height) // 2))
    return square


def contact_sheet(
    rows: Sequence[Sequence[tuple[Image.Image | None, str]]],
    tile: int = 256,
    title: str | None = None,
) -> Image.Image:
    """A grid with one row per entry of `rows`; each cell is (image or None, caption)."""
    columns = max((len(row) for row in rows), default=1)
    font = ImageFont.load_default()
    top = CAPTION_HEIGHT + GAP if title else 0
    cell_h = tile + CAPTION_HEIGHT
    sheet = Image.new(
        "RGB", (GAP + columns * (tile + GAP), top + GAP + len(rows) * (cell_h + GAP)), BACKGROUND
    )
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((GAP, GAP), title, fill=TEXT, font=font)
    for r, row in enumerate(rows):
        y = top + GAP + r * (cell_h + GAP)
        for c, (image, caption) in enumerate(row):
            x = GAP + c * (tile + GAP)
            if image is not None:
                sheet.paste(thumbnail(image, tile), (x, y))
            draw.text((x + 2, y + tile + 3), _fit(draw, caption, font, tile - 4), fill=TEXT, font=font)
    return sheet


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int) -> str:
    while text and draw.textlength(text, font=font) > width:
        text = text[:-2] + "…" if len(text) > 2 else ""
    return text


def overlay(photo: Image.Image, drawing: Image.Image) -> Image.Image:
    """The drawing's lit pixels over the photo (RGB, the photo's size): landmarks shown on the picture
    they were found in. The drawing is resized to the photo when their sizes differ."""
    photo = photo.convert("RGB")
    drawing = drawing.convert("RGB")
    if drawing.size != photo.size:
        drawing = drawing.resize(photo.size, Image.Resampling.NEAREST)
    lit = drawing.convert("L").point(lambda value: 255 if value else 0)
    return Image.composite(drawing, photo, lit)
