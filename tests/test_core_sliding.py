"""The sliding-window grid and its equivalence with whole-image inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from naclip.sliding import window_boxes


@pytest.mark.parametrize("size", [(336, 500), (336, 336), (224, 224), (200, 300), (500, 336), (100, 90), (337, 449)])
def test_windows_cover_every_pixel_inside_the_image(size):
    height, width = size
    covered = np.zeros(size, dtype=int)
    boxes = window_boxes(height, width, 224, 112)
    for y1, y2, x1, x2 in boxes:
        assert 0 <= y1 < y2 <= height and 0 <= x1 < x2 <= width
        assert (y2 - y1, x2 - x1) == (min(224, height), min(224, width))
        covered[y1:y2, x1:x2] += 1
    assert covered.min() >= 1
    rows = max(height - 224 + 111, 0) // 112 + 1
    cols = max(width - 224 + 111, 0) // 112 + 1
    assert len(boxes) == rows * cols


def test_last_windows_end_at_the_border():
    boxes = window_boxes(336, 500, 224, 112)
    assert max(b[1] for b in boxes) == 336 and max(b[3] for b in boxes) == 500
    assert (112, 336, 276, 500) in boxes


def test_bad_window_settings():
    with pytest.raises(ValueError, match="crop > 0 and stride > 0"):
        window_boxes(10, 10, 224, 0)
    with pytest.raises(ValueError, match="stride 300 is larger than the crop 224.*expected stride <= crop"):
        window_boxes(1000, 1000, 224, 300)
    assert len(window_boxes(448, 448, 224, 224)) == 4  # no overlap, still every pixel covered


def test_one_window_covering_the_image_equals_whole_image(tiny):
    image = torch.randn(3, 224, 224)
    results = []
    for crop in (224, 0):
        segmenter = tiny(slide_crop=crop, pamr_steps=0)
        segmenter.set_classes(["cat", "dog", "sky"])
        results.append(segmenter.predict_prepared(image, (224, 224)))
    np.testing.assert_array_equal(results[0].labels, results[1].labels)
    np.testing.assert_allclose(results[0].probs, results[1].probs, atol=1e-6)


def test_batched_windows_equal_one_at_a_time(tiny):
    image = torch.randn(3, 336, 448)
    outputs = []
    for batch in (1, 16):
        segmenter = tiny(window_batch=batch, pamr_steps=0)
        segmenter.set_classes(["cat", "dog", "sky"])
        outputs.append(segmenter.predict_prepared(image, (300, 400)).probs)
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-5)
