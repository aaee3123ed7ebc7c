"""Sliding-window inference: the window grid and batched window logits summed into place."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from naclip.workspace import Workspace

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


def _first_cover(boxes: list[Box]) -> list[Box]:
    """Per box of a raster-ordered grid (as `window_boxes` makes), the rectangle that no earlier box covers."""

    def new_from(spans: Iterable[tuple[int, int]]) -> dict[int, int]:  # a span's start -> the end of the one before
        ordered = sorted(set(spans))
        return {start: max(start, before[1]) for (start, _), before in zip(ordered, [(0, 0), *ordered])}

    rows, cols = new_from(box[:2] for box in boxes), new_from(box[2:] for box in boxes)
    return [(rows[y1], y2, cols[x1], x2) for y1, y2, x1, x2 in boxes]


def stitch(
    window_logits: Callable[[slice], Iterable[Tensor]],
    boxes: list[Box],
    size: tuple[int, int],
    batch: int,
    workspace: Workspace | None = None,
) -> Tensor:
    """Average of window logits over the image: (Q, H, W) from `window_logits(batch_slice)`.

    `window_logits(s)` gives the (Q, h, w) logits of each window of `boxes[s]` (a raster-ordered
    grid, as `window_boxes` makes) in turn; at most `batch` windows are encoded at once. The sums
    are those of adding each window in turn to zeros, as the authors' code does: a window is copied
    where it is the first to cover the image and added elsewhere, so the sums need no zero-filling.
    Window logits upsampled from a (n, h*w, Q) product are channels-last; summing them into a
    channels-first image would be ~10x slower, so the result is stored (H, W, Q) too
    (`channels_first` copies it). It lives in `workspace` (a fresh one by default) until the next
    stitch asks for it.
    """
    workspace = workspace or Workspace()
    firsts = _first_cover(boxes)
    total = count = None
    for start in range(0, len(boxes), batch):
        part = slice(start, start + batch)
        for box, first, window in zip(boxes[part], firsts[part], window_logits(part), strict=True):
            (y1, y2, x1, x2), (fy1, _, fx1, _) = box, first  # first: the part no earlier window covers
            if total is None:  # stored (H, W, Q) like the windows (see above), so that each sum streams
                total = workspace.empty("window sums", (*size, len(window)), window).permute(2, 0, 1)
                count = window.new_zeros((1, *size))
            total[:, fy1:y2, fx1:x2] = window[:, fy1 - y1 :, fx1 - x1 :]
            total[:, y1:fy1, x1:x2] += window[:, : fy1 - y1]  # rows that earlier rows of the grid cover
            total[:, fy1:y2, x1:fx1] += window[:, fy1 - y1 :, : fx1 - x1]  # columns that earlier windows cover
            count[:, y1:y2, x1:x2] += 1
    return total.div_(count)  # (Q, H, W), stored (H, W, Q)


def channels_first(planes: Tensor, out: Tensor) -> Tensor:
    """`out`, a contiguous copy of (Q, H, W) planes stored (H, W, Q); on a CPU a few rows at a time, in cache."""
    if planes.device.type != "cpu":
        return out.copy_(planes)
    num, _, width = planes.shape
    rows = max(1, (1 << 18) // (num * width))  # about 1 MB of float32 per copy: twice as fast as one copy
    for start in range(0, planes.shape[1], rows):
        out[:, start : start + rows] = planes[:, start : start + rows]
    return out


def stitch_features(maps: Tensor, cells: list[Box], grid: tuple[int, int]) -> Tensor:
    """(D, H, W) average of window feature maps (n, D, h, w) placed at `cells` (y1, y2, x1, x2 in grid cells) on a
    `grid` (H, W): each cell the mean of the windows covering it. Features are stitched, not logits, for heads
    that process the whole image's features after the windows (Trident's guidance before the projection)."""
    total = maps.new_zeros((maps.shape[1], *grid))
    count = maps.new_zeros((1, *grid))
    for window, (y1, y2, x1, x2) in zip(maps, cells, strict=True):
        total[:, y1:y2, x1:x2] += window
        count[:, y1:y2, x1:x2] += 1
    return total / count
