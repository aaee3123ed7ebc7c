"""Palettes, colourised label maps and overlays with a legend."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

IGNORE_COLOUR = (255, 255, 255)
MARK_COLOUR = (200, 0, 0)
RANDOM_MARK = "RANDOM WEIGHTS - not a result"


def palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 colours, distinct for up to 255 classes.

    PASCAL VOC's bit-interleaved palette without its black first entry, so that class 0 shows
    on an overlay too.
    """
    colours = np.zeros((max(num_classes, 1), 3), dtype=np.uint8)
    for index in range(len(colours)):
        value, shift = index + 1, 7
        while value:
            for channel in range(3):
                colours[index, channel] |= ((value >> channel) & 1) << shift
            value >>= 3
            shift -= 1
    return colours[:num_classes]


def label_image(labels: np.ndarray, num_classes: int) -> Image.Image:
    """A palette ('P' mode) PNG-ready image of a label map; 255 stays the void index (white)."""
    if labels.size and (labels.min() < 0 or (labels.max() >= num_classes and labels.max() != 255)):
        raise ValueError(f"labels must lie in [0, {num_classes}) or be 255, got [{labels.min()}, {labels.max()}]")
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    colours = np.zeros((256, 3), dtype=np.uint8)
    colours[:num_classes] = palette(num_classes)[:256]
    colours[255] = IGNORE_COLOUR
    image.putpalette(colours.flatten().tolist())
    return image


def label_png(labels: np.ndarray, num_classes: int) -> bytes:
    """A label map as PNG bytes of class indices: a palette PNG up to 255 classes (255 being the void
    index), 16-bit greyscale beyond, so that no class index is cut to 8 bits."""
    if num_classes <= 255:
        image = label_image(labels, num_classes)
    else:
        if labels.size and (labels.min() < 0 or labels.max() > np.iinfo(np.uint16).max):
            raise ValueError(f"labels must lie in [0, 65535] for a 16-bit PNG, got [{labels.min()}, {labels.max()}]")
        image = Image.fromarray(labels.astype(np.uint16))
    return png_bytes(image)


def png_bytes(image: Image.Image) -> bytes:
    """`image` encoded as PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def colorize(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(H, W, 3) uint8 colours of a label map; values that are no class (255 = void) are white."""
    colours = np.vstack([palette(num_classes), IGNORE_COLOUR]).astype(np.uint8)
    return colours[np.where((labels >= 0) & (labels < num_classes), labels, num_classes)]


def overlay(
    image: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    alpha: float = 0.5,
    legend: bool = True,
    mark: str | None = None,
) -> Image.Image:
    """The image blended with its colourised labels, with a legend of the classes present (by area); `mark`
    (e.g. `RANDOM_MARK`) is written in white on a red band across the top."""
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image {image.shape[:2]} and labels {labels.shape} differ in size")
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colorize(labels, len(class_names))
    canvas = Image.fromarray(blended.round().astype(np.uint8))
    if mark:
        _mark(canvas, mark)
    if not legend:
        return canvas
    present, counts = np.unique(labels[labels < len(class_names)], return_counts=True)
    order = present[np.argsort(-counts)]
    size = max(11, round(canvas.height / 40))  # legend text scales with the image: about 1/40 of its height
    font = ImageFont.load_default(size=size)
    row, swatch = round(size * 1.4), size
    text = max((int(ImageDraw.Draw(canvas).textlength(class_names[i], font=font)) for i in order), default=0)
    width = 2 * swatch + text
    panel = Image.new("RGB", (width + swatch, max(canvas.height, row * len(order) + row // 2)), "white")
    draw = ImageDraw.Draw(panel)
    colours = palette(len(class_names))
    for slot, index in enumerate(order):
        top = row // 4 + slot * row
        box = [swatch // 2, top + 1, swatch // 2 + swatch, top + 1 + swatch]
        draw.rectangle(box, fill=tuple(int(c) for c in colours[index]), outline="black")
        draw.text((2 * swatch, top), class_names[index], fill="black", font=font)
    out = Image.new("RGB", (canvas.width + panel.width, panel.height), "white")
    out.paste(canvas, (0, 0))
    out.paste(panel, (canvas.width, 0))
    return out


def _mark(canvas: Image.Image, text: str) -> None:
    """`text` in white on a red band across the top of `canvas` (in place), scaled to fit its width."""
    draw = ImageDraw.Draw(canvas)
    size = max(8, round(canvas.height / 20))
    font = ImageFont.load_default(size=size)
    while size > 8 and draw.textlength(text, font=font) > canvas.width - size:
        size -= 1
        font = ImageFont.load_default(size=size)
    draw.rectangle([0, 0, canvas.width, round(size * 1.6)], fill=MARK_COLOUR)
    draw.text((size // 2, round(size * 0.3)), text, fill="white", font=font)
