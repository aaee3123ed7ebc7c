"""Image decoding and the protocol's resize + normalisation, against OpenCV as mmcv / mmseg use it."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from naclip.datasets.base import image_size
from naclip.preprocess import PIXEL_MEAN, PIXEL_STD, load_image, prepare, resized_size
from tests.conftest import SAMPLES

SAMPLE_IMAGES = sorted(SAMPLES.glob("*/*/**/*.jpg"))
ORIENTATION = 0x0112


def _mmcv_resize(bgr: np.ndarray, short_side: int) -> np.ndarray:
    """What mmcv's imrescale gives: cv2.resize of the uint8 image to rescale_size."""
    height, width = resized_size(*bgr.shape[:2], short_side, 2048)
    return cv2.resize(bgr, (width, height), interpolation=cv2.INTER_LINEAR)


def _pixels(tensor: torch.Tensor) -> np.ndarray:
    """The uint8 image behind a `prepare`d tensor (normalisation undone, exact to rounding)."""
    mean, std = torch.tensor(PIXEL_MEAN).view(3, 1, 1), torch.tensor(PIXEL_STD).view(3, 1, 1)
    return (tensor * std + mean).round().permute(1, 2, 0).numpy().astype(np.uint8)


@pytest.mark.parametrize("short_side", [336, 448, 560])
def test_resize_equals_opencv_on_the_samples(short_side):
    assert len(SAMPLE_IMAGES) == 17
    for path in SAMPLE_IMAGES:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        expected = _mmcv_resize(bgr, short_side)[..., ::-1]
        ours = _pixels(prepare(load_image(path), short_side))
        assert ours.shape == expected.shape
        assert np.count_nonzero(ours != expected) == 0, path.name


@pytest.mark.parametrize("size", [(1024, 2048), (2048, 1024), (100, 150), (7, 3000)])
def test_resize_equals_opencv_on_random_images(size):
    """Down- and upscaling, and a long side capped at 2048."""
    image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    expected = _mmcv_resize(image, 336)
    ours = _pixels(prepare(image))
    assert ours.shape == expected.shape and np.count_nonzero(ours != expected) == 0


def test_normalisation_is_mmseg_data_preprocessor():
    """float32 (x - mean) / std with the authors' 0..255 mean and std, no resize at the target size."""
    image = np.random.default_rng(1).integers(0, 256, (336, 400, 3), dtype=np.uint8)
    x = torch.tensor(image).permute(2, 0, 1).float()
    mean = torch.tensor([122.771, 116.746, 104.094]).view(3, 1, 1)
    std = torch.tensor([68.501, 66.632, 70.323]).view(3, 1, 1)
    assert torch.equal(prepare(image), (x - mean) / std)


def _encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((40, 64, 3), np.uint8)
    pixels[:8, :16] = 255  # a white block in the top-left corner
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # stored image must be turned 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    path.write_bytes(_encode(Image.fromarray(pixels), "JPEG", quality=95, exif=exif.tobytes()))
    image = load_image(path)
    assert image.shape == (64, 40, 3)
    assert image[:16, -8:].mean() > 200 and image[:16, :8].mean() < 50  # now in the top-right corner
    np.testing.assert_array_equal(load_image(Image.open(path)), image)


def test_16_bit_png_keeps_its_contrast(tmp_path):
    ramp = np.linspace(0, 65535, 48 * 32).astype(np.uint16).reshape(32, 48)
    path = tmp_path / "depth.png"
    path.write_bytes(_encode(Image.fromarray(ramp)))
    assert Image.open(path).mode.startswith("I")
    image = load_image(path)
    assert image.dtype == np.uint8 and image.shape == (32, 48, 3)
    np.testing.assert_array_equal(image[..., 0], ramp >> 8)
    np.testing.assert_array_equal(load_image(Image.open(path)), image)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "1"])
def test_greyscale_palette_and_alpha_images(tmp_path, mode):
    rgb = Image.fromarray(np.random.default_rng(2).integers(0, 256, (12, 10, 3), dtype=np.uint8))
    path = tmp_path / f"image_{mode}.png"
    path.write_bytes(_encode(rgb.convert(mode)))
    image = load_image(path)
    assert image.shape == (12, 10, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, np.asarray(Image.open(path).convert("RGB")))


def test_unreadable_and_too_small_images(tmp_path):
    for name, data in [("empty.png", b""), ("text.jpg", b"not an image")]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=rf"{name}.*cannot be read"):
            load_image(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        load_image(tmp_path / "missing.jpg")
    thin = tmp_path / "thin.png"
    thin.write_bytes(_encode(Image.new("RGB", (50, 1))))
    with pytest.raises(ValueError, match=r"thin\.png.* 50x1 pixels; expected at least 2x2"):
        load_image(thin)
    with pytest.raises(ValueError, match="image array.*expected at least 2x2"):
        load_image(np.zeros((3, 1, 3), np.uint8))
    assert load_image(np.zeros((2, 2), np.uint8)).shape == (2, 2, 3)


def test_header_size_follows_exif_orientation(tmp_path):
    """`naclip data check` compares masks with the size the image decodes to."""
    exif = Image.Exif()
    for orientation, expected in [(1, (20, 30)), (3, (20, 30)), (6, (30, 20)), (8, (30, 20))]:
        exif[ORIENTATION] = orientation
        path = tmp_path / f"o{orientation}.jpg"
        path.write_bytes(_encode(Image.new("RGB", (30, 20)), "JPEG", exif=exif.tobytes()))
        assert image_size(path) == expected == load_image(path).shape[:2]
