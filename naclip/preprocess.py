"""Image loading and the protocol's resize + CLIP normalisation, as mmcv / mmseg do them."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps

# CLIP's mean and std on the 0..255 scale, as the authors configure mmseg's SegDataPreProcessor.
PIXEL_MEAN = (122.771, 116.746, 104.094)
PIXEL_STD = (68.501, 66.632, 70.323)
MIN_SIDE = 2  # smallest usable image side in pixels
# Largest image the protocol's resize may make: 4096x4096, eight times what the default sides (336, 2048) allow;
# past it the resized image and its class scores (a float per query and pixel) outgrow a machine's memory.
MAX_RESIZED_PIXELS = 4096 * 4096


_STDERR = threading.Lock()


@contextmanager
def _c_stderr() -> Iterator[list[str]]:
    """What C code (libjpeg's warnings) writes to stderr during the block, appended to the yielded list.

    One block at a time in a process (file descriptor 2 is shared by its threads).
    """
    captured: list[str] = []
    with _STDERR, tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.append(sink.read().decode(errors="replace").strip())


def decode_image(data: bytes, name: str = "image") -> np.ndarray:
    """(H, W, 3) uint8 RGB from encoded bytes, decoded as mmcv does (OpenCV, EXIF orientation applied).

    Greyscale, palette and alpha images become 3-channel RGB; 16-bit images keep their high byte.
    A JPEG whose decoder warns (corrupt or truncated data, decoded into garbage pixels) is refused.
    """
    jpeg = data[:2] == b"\xff\xd8"
    with _c_stderr() if jpeg else contextlib.nullcontext([]) as warnings:
        try:
            bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        except cv2.error:
            bgr = None
    if bgr is None:
        raise ValueError(f"image {name!r} cannot be read (OpenCV cannot decode it); expected a JPEG/PNG/... file")
    warned = " ".join(line for line in warnings if line)
    if warned:
        raise ValueError(f"image {name!r} is corrupt (the JPEG decoder warns: {warned}); expected an intact file")
    return _checked(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), name)


def _from_pil(image: Image.Image) -> np.ndarray:
    """RGB uint8 of a PIL image: EXIF orientation applied, 16-bit greyscale reduced to its high byte."""
    image = ImageOps.exif_transpose(image)
    if image.mode == "I" or image.mode.startswith("I;16"):
        grey = (np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    return np.asarray(image.convert("RGB"))


def _checked(array: np.ndarray, name: str) -> np.ndarray:
    if min(array.shape[:2]) < MIN_SIDE:
        raise ValueError(
            f"image {name!r} is {array.shape[1]}x{array.shape[0]} pixels; "
            f"expected at least {MIN_SIDE}x{MIN_SIDE} (width and height >= {MIN_SIDE})"
        )
    return array


def load_image(source: str | os.PathLike | Image.Image | np.ndarray) -> np.ndarray:
    """An (H, W, 3) uint8 RGB array from a path, a PIL image or an array (greyscale is expanded)."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"image {str(path)!r} does not exist")
        return decode_image(path.read_bytes(), str(path))
    if isinstance(source, Image.Image):
        return _checked(_from_pil(source), "PIL image")
    if isinstance(source, np.ndarray):
        array = source[..., None].repeat(3, -1) if source.ndim == 2 else source
        if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
            raise ValueError(
                f"image array of shape {source.shape} and dtype {source.dtype}; expected (H, W, 3) uint8 RGB"
            )
        return _checked(array, "image array")
    raise TypeError(f"cannot read an image from {type(source).__name__}; expected a path, PIL image or array")


def resized_size(height: int, width: int, short_side: int, long_side: int) -> tuple[int, int]:
    """Keep the aspect ratio: short side to `short_side`, long side at most `long_side` (mmcv's rescale_size)."""
    scale = min(long_side / max(height, width), short_side / min(height, width))
    return int(height * scale + 0.5), int(width * scale + 0.5)


def resize_image(image: np.ndarray, short_side: int = 336, long_side: int = 2048) -> np.ndarray:
    """An (H, W, 3) uint8 image resized per the protocol: OpenCV INTER_LINEAR on uint8, as mmcv's imrescale."""
    height, width = resized_size(*image.shape[:2], short_side, long_side)
    if (height, width) == tuple(image.shape[:2]):
        return image
    return cv2.resize(np.ascontiguousarray(image), (width, height), interpolation=cv2.INTER_LINEAR)


def check_size(path: str | os.PathLike, size: tuple[int, int], short_side: int, long_side: int, min_side: int) -> None:
    """ValueError unless an (H, W) image resizes per the protocol to at least `min_side` on each side, and to at
    most MAX_RESIZED_PIXELS pixels.

    `min_side` is the model's patch size (1 when windows are padded): a thinner image has no patch
    to encode. The message names the file, both sizes, and the smallest usable short side.
    """
    height, width = size
    if min(height, width) < MIN_SIDE:
        raise ValueError(f"{path}: image is {width}x{height} pixels; expected at least {MIN_SIDE}x{MIN_SIDE}")
    resized = resized_size(height, width, short_side, long_side)
    if resized[0] * resized[1] > MAX_RESIZED_PIXELS:
        raise ValueError(
            f"{path}: image is {width}x{height} pixels, resized to {resized[1]}x{resized[0]} by --short-side "
            f"{short_side} (--long-side {long_side}); expected at most {MAX_RESIZED_PIXELS} pixels (4096x4096) "
            "after resizing: a smaller --short-side or --long-side"
        )
    if min(resized) >= min_side:
        return
    short, long = min(height, width), max(height, width)
    need = next(s for s in range(short, long + 1) if min(resized_size(s, long, short_side, long_side)) >= min_side)
    raise ValueError(
        f"{path}: image is {width}x{height} pixels, resized to {resized[1]}x{resized[0]} (short side {short_side}, "
        f"long side at most {long_side}), thinner than one {min_side}-pixel patch of the model; expected a short "
        f"side of at least {need} pixels for a long side of {long} (or a larger --long-side)"
    )


def prepare(image: np.ndarray, short_side: int = 336, long_side: int = 2048) -> torch.Tensor:
    """(3, h, w) float32 CLIP-normalised tensor of an (H, W, 3) uint8 RGB image, resized per the protocol.

    Normalised as mmseg's SegDataPreProcessor does: float32 (x - mean) / std on the 0..255 scale.
    """
    x = torch.tensor(resize_image(image, short_side, long_side)).permute(2, 0, 1).float()
    mean = torch.tensor(PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(PIXEL_STD).view(3, 1, 1)
    return (x - mean) / std
