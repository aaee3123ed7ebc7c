"""Overlays: colours over the image, a legend of the classes present that stays readable on large images."""

from __future__ import annotations

import numpy as np

from naclip.viz import overlay, palette


def _case(scale: int) -> tuple[np.ndarray, np.ndarray]:
    image = np.full((100 * scale, 120 * scale, 3), 200, dtype=np.uint8)
    labels = np.zeros(image.shape[:2], dtype=np.int64)
    labels[: 30 * scale] = 2  # class 2 covers less than class 0; class 1 is absent
    return image, labels


def test_overlay_blends_colours_and_lists_present_classes_by_area():
    image, labels = _case(1)
    out = np.asarray(overlay(image, labels, ["sky", "cat", "dog"], alpha=0.5))
    assert out.shape[0] == 100 and out.shape[1] > 120
    expected = np.round(0.5 * 200 + 0.5 * palette(3)[2].astype(np.float32))
    np.testing.assert_array_equal(out[0, 0], expected)
    legend = out[:, 120:]
    colours = {tuple(c) for c in legend.reshape(-1, 3)}
    assert tuple(palette(3)[0]) in colours and tuple(palette(3)[2]) in colours
    assert tuple(palette(3)[1]) not in colours  # absent classes are not listed


def test_legend_text_scales_with_the_image():
    small = overlay(*_case(1), ["sky", "cat", "dog"])
    large = overlay(*_case(20), ["sky", "cat", "dog"])
    small_panel, large_panel = small.width - 120, large.width - 120 * 20
    assert large_panel >= 3 * small_panel  # the legend grows with a 2000-pixel-high image
