"""What a run leaves on disk besides its tables: prediction PNGs."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from naclip.io import atomic_write
from naclip.viz import label_image


def save_prediction(labels: np.ndarray, path: Path, num_classes: int) -> None:
    """A label map as a PNG of class indices: palette PNG up to 255 classes, 16-bit greyscale beyond."""
    if num_classes <= 255:
        image = label_image(labels, num_classes)
    else:
        image = Image.fromarray(labels.astype(np.uint16))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write(path, buffer.getvalue())
