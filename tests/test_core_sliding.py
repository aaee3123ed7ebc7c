"""The sliding-window grid and its equivalence with whole-image inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from naclip.sliding import window_boxes
from naclip.workspace import Workspace


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


def test_workspace_reuses_a_buffer_only_while_it_fits():
    workspace, like = Workspace(), torch.zeros(1)
    first = workspace.empty("sums", (2, 3), like)
    assert workspace.empty("sums", (2, 3), like).data_ptr() == first.data_ptr()
    assert workspace.empty("other", (2, 3), like).data_ptr() != first.data_ptr()
    assert workspace.empty("sums", (3, 2), like).shape == (3, 2)
    assert workspace.empty("sums", (3, 2), like.double()).dtype == torch.float64


def test_workspace_resize_is_interpolate_bit_for_bit_in_one_buffer():
    """Windows are upsampled into one reused buffer; the values are F.interpolate's in either storage."""
    workspace = Workspace()
    generator = torch.Generator().manual_seed(7)
    for shape, size in (((3, 60, 14, 14), (224, 224)), ((2, 21, 16, 16), (224, 224)), ((1, 7, 9, 13), (100, 77))):
        first = torch.randn(shape, generator=generator)
        last = first.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # the same values, channels-last
        for images in (first, last):
            expected = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
            resized = workspace.resized("windows", images, size, rows=4)
            assert torch.equal(resized, expected)
            assert resized.is_contiguous(memory_format=torch.channels_last) == (images is last)
            again = workspace.resized("windows", images[:1], size, rows=4)  # a shorter last chunk
            assert again.data_ptr() == resized.data_ptr() and torch.equal(again, expected[:1])


def test_stitch_sums_channels_last_windows_into_a_channels_last_average():
    """Bit for bit the authors' sums (each window added in turn to zeros), on grids of every shape."""
    from naclip.sliding import channels_first, stitch

    for height, width, crop, stride in ((6, 9, 4, 3), (10, 10, 4, 2), (5, 7, 5, 5), (3, 12, 4, 4), (4, 4, 4, 2)):
        boxes = window_boxes(height, width, crop, stride)
        h, w = boxes[0][1] - boxes[0][0], boxes[0][3] - boxes[0][2]
        windows = torch.randn(len(boxes), 4, 2, h, w).mean(1)  # (n, 2, h, w) contiguous
        stored = windows.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # the same values, channels-last
        expected_sum, expected_count = torch.zeros(2, height, width), torch.zeros(1, height, width)
        for (y1, y2, x1, x2), window in zip(boxes, windows):
            expected_sum[:, y1:y2, x1:x2] += window
            expected_count[:, y1:y2, x1:x2] += 1
        workspace = Workspace()
        workspace.empty("window sums", (height, width, 2), windows).fill_(float("nan"))  # no zeros to rely on
        result = stitch(lambda part, s=stored: s[part], boxes, (height, width), batch=2, workspace=workspace)
        assert result.permute(1, 2, 0).is_contiguous()  # stored (H, W, Q), as the windows are
        assert torch.equal(result, expected_sum / expected_count)
    copied = channels_first(result, torch.empty(result.shape))
    assert copied.is_contiguous() and torch.equal(copied, result)
