"""Image loading and the protocol's resize + CLIP normalisation."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def load_image(source: str | os.PathLike | Image.Image | np.ndarray) -> np.ndarray:
    """An (H, W, 3) uint8 RGB array from a path, a PIL image or an array (greyscale is expanded)."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"image {str(path)!r} does not exist")
        try:
            with Image.open(path) as image:
                return np.asarray(image.convert("RGB"))
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"image {str(path)!r} cannot be read ({error}); expected a JPEG/PNG/... file") from error
    if isinstance(source, Image.Image):
        return np.asarray(source.convert("RGB"))
    if isinstance(source, np.ndarray):
        array = source[..., None].repeat(3, -1) if source.ndim == 2 else source
        if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
            raise ValueError(
                f"image array of shape {source.shape} and dtype {source.dtype}; expected (H, W, 3) uint8 RGB"
            )
        return array
    raise TypeError(f"cannot read an image from {type(source).__name__}; expected a path, PIL image or array")


def resized_size(height: int, width: int, short_side: int, long_side: int) -> tuple[int, int]:
    """Keep the aspect ratio: short side to `short_side`, long side at most `long_side` (rounded)."""
    scale = min(long_side / max(height, width), short_side / min(height, width))
    return int(height * scale + 0.5), int(width * scale + 0.5)


def prepare(image: np.ndarray, short_side: int = 336, long_side: int = 2048) -> torch.Tensor:
    """(3, h, w) float32 CLIP-normalised tensor of an (H, W, 3) uint8 image, resized per the protocol.

    Bilinear without antialiasing and rounded back to 8 bits, as the reference pipeline's resize does.
    """
    x = torch.tensor(image).permute(2, 0, 1).float()
    size = resized_size(*image.shape[:2], short_side, long_side)
    if size != tuple(image.shape[:2]):
        x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0].round().clamp(0, 255)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return (x / 255.0 - mean) / std
