"""Sliding-window inference: the window grid and batched window logits summed into place."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Box = tuple[int, int, int, int]  # y1, y2, x1, x2


def window_boxes(height: int, width: int, crop: int, stride: int) -> list[Box]:
    """Crops of `crop` x `crop` every `stride` pixels covering the image.

    The last row and column are shifted back to end at the border; a side shorter than `crop`
    is used whole. `stride` must not exceed `crop`, or pixels between windows stay uncovered.
    """
    if crop <= 0 or stride <= 0:
        raise ValueError(f"sliding window needs crop > 0 and stride > 0, got crop={crop}, stride={stride}")
    if stride > crop:
        raise ValueError(
            f"sliding-window stride {stride} is larger than the crop {crop}: pixels between windows would have "
            "no prediction; expected stride <= crop"
        )
    rows = max(height - crop + stride - 1, 0) // stride + 1
    cols = max(width - crop + stride - 1, 0) // stride + 1
    boxes = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * stride + crop, height), min(c * stride + crop, width)
            boxes.append((max(y2 - crop, 0), y2, max(x2 - crop, 0), x2))
    return boxes


def crop_windows(image: Tensor, boxes: list[Box]) -> Tensor:
    """(N, C, h, w) stack of the windows of a (C, H, W) image (all windows share one size)."""
    return torch.stack([image[:, y1:y2, x1:x2] for y1, y2, x1, x2 in boxes])


def stitch(window_logits: Callable[[slice], Tensor], boxes: list[Box], size: tuple[int, int], batch: int) -> Tensor:
    """Average of window logits over the image: (Q, H, W) from `window_logits(batch_slice)`.

    `window_logits(s)` returns (n, Q, h, w) logits for windows `boxes[s]`; at most `batch`
    windows are in memory at once. Window logits upsampled from a (n, h*w, Q) product are
    channels-last; summing them into a channels-first image would be ~10x slower.
    """
    total = count = None
    for start in range(0, len(boxes), batch):
        part = slice(start, start + batch)
        logits = window_logits(part)
        if total is None:  # stored (H, W, Q) like the windows (see below), so that each sum streams
            total = logits.new_zeros((*size, logits.shape[1])).permute(2, 0, 1)  # (Q, H, W)
            count = logits.new_zeros((1, *size))
        for (y1, y2, x1, x2), window in zip(boxes[part], logits):
            total[:, y1:y2, x1:x2] += window
            count[:, y1:y2, x1:x2] += 1
    return channels_first(total.div_(count))


def channels_first(planes: Tensor) -> Tensor:
    """A contiguous copy of (Q, H, W) planes stored (H, W, Q); on a CPU a few rows at a time, in cache."""
    if planes.device.type != "cpu":
        return planes.contiguous()
    out = torch.empty(planes.shape, dtype=planes.dtype, device=planes.device)
    num, _, width = planes.shape
    rows = max(1, (1 << 18) // (num * width))  # about 1 MB of float32 per copy: twice as fast as one copy
    for start in range(0, planes.shape[1], rows):
        out[:, start : start + rows] = planes[:, start : start + rows]
    return out
