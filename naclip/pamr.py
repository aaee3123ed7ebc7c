"""Pixel-adaptive mask refinement (PAMR, Araslanov & Roth, CVPR 2020).

Each pixel's mask becomes a weighted sum of its 8 neighbours at each dilation, weighted by
image similarity. The affinities depend only on the image, so they are computed once; the
propagation, linear in the logits, then runs per setting. Both run on one of two paths that
agree to float rounding (tests/test_core_pamr.py holds them to a pixel-wise reference):

- compiled kernels (numba, CPU, float32/float64): affinity scores row by row in parallel; the
  propagation runs every step of a group of planes in place, row by row, so a plane's rows
  stay in cache and the logits are copied once;
- torch operations everywhere else (CUDA, MPS, other dtypes, autograd, numba missing): one
  replicate padding per step and one multiply-add per neighbour.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from naclip.compiled import jit, kernel_threads, prange, serves
from naclip.workspace import Workspace

# The 8 neighbours of a pixel, row-major, the centre left out.
DIRECTIONS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
# Planes one part of the compiled kernel works on at most: rows of 8 planes stay in a core's cache.
PART_PLANES = 8


def _shifted(padded: Tensor, pad: int, dy: int, dx: int, height: int, width: int) -> Tensor:
    """The view of a padded map whose pixel (y, x) holds the original's (y + dy, x + dx)."""
    return padded[..., pad + dy : pad + dy + height, pad + dx : pad + dx + width]


def _offsets(dilations: Sequence[int]) -> list[tuple[int, int]]:
    """(dy, dx) of the 8 x D neighbours, in the order of the affinity channels."""
    return [(dy * d, dx * d) for d in dilations for dy, dx in DIRECTIONS]


def _pooled_offsets(dilations: Sequence[int]) -> list[tuple[int, int]]:
    """(dy, dx) of the 9 x D pixels pooled into a pixel's standard deviation, the centre once per dilation."""
    return [(dy * d, dx * d) for d in dilations for dy, dx in ((0, 0), *DIRECTIONS)]


def _scores_torch(image: Tensor, dilations: Sequence[int]) -> Tensor:
    """(B, 8 x D, H, W) affinity scores before the softmax, with torch operations built in place."""
    height, width = image.shape[-2:]
    pad = max(dilations)
    padded = F.pad(image, [pad] * 4, mode="replicate")  # replicate padding is clamping, whatever its width
    pooled = [_shifted(padded, pad, dy, dx, height, width) for dy, dx in _pooled_offsets(dilations)]
    mean = torch.zeros_like(image)
    for view in pooled:
        mean.add_(view)
    mean.div_(len(pooled))
    variance = torch.zeros_like(image)
    for view in pooled:
        variance.add_((view - mean).square_())
    denominator = variance.div_(len(pooled) - 1).sqrt_().mul_(0.1).add_(1e-8)
    offsets = _offsets(dilations)
    scores = image.new_empty((image.shape[0], len(offsets), height, width))
    for k, (dy, dx) in enumerate(offsets):
        difference = (image - _shifted(padded, pad, dy, dx, height, width)).abs_().div_(denominator).neg_()
        scores[:, k] = difference.mean(1)
    return scores


def _score_rows(image: np.ndarray, scores: np.ndarray, pooled: np.ndarray, offsets: np.ndarray) -> None:
    """`_scores_torch` for one image (K, H, W + 2 pad), column-padded by replication, into `scores` (8 x D, H, W).

    Rows are independent; each is built from rows of the image, in the same order of operations.
    """
    channels, height, padded = image.shape
    width = scores.shape[2]
    pad = (padded - width) // 2
    for y in prange(height):
        mean = np.empty(width, image.dtype)
        denominator = np.empty(width, image.dtype)
        scores[:, y] = 0
        for c in range(channels):
            centre = image[c, y, pad : pad + width]
            mean[:] = 0
            for j in range(len(pooled)):
                start = pad + pooled[j, 1]
                view = image[c, min(max(y + pooled[j, 0], 0), height - 1), start : start + width]
                for x in range(width):
                    mean[x] += view[x]
            mean /= len(pooled)
            denominator[:] = 0
            for j in range(len(pooled)):
                start = pad + pooled[j, 1]
                view = image[c, min(max(y + pooled[j, 0], 0), height - 1), start : start + width]
                for x in range(width):
                    denominator[x] += (view[x] - mean[x]) ** 2
            for x in range(width):
                denominator[x] = np.sqrt(denominator[x] / (len(pooled) - 1)) * 0.1 + 1e-8
            for k in range(len(offsets)):
                start = pad + offsets[k, 1]
                view = image[c, min(max(y + offsets[k, 0], 0), height - 1), start : start + width]
                row = scores[k, y]
                for x in range(width):
                    row[x] += abs(centre[x] - view[x]) / denominator[x]
        for k in range(len(offsets)):
            row = scores[k, y]
            for x in range(width):
                row[x] = -row[x] / channels


def _scores_compiled(image: Tensor, dilations: Sequence[int]) -> Tensor:
    """The compiled `_scores_torch`: rows in parallel, a few rows of buffers."""
    batch, _, height, width = image.shape
    pad = max(dilations)
    padded = F.pad(image, [pad, pad, 0, 0], mode="replicate").contiguous()
    pooled = np.array(_pooled_offsets(dilations), dtype=np.int64)
    offsets = np.array(_offsets(dilations), dtype=np.int64)
    scores = image.new_empty((batch, len(offsets), height, width))
    with kernel_threads():
        for b in range(batch):
            _compiled_scores(padded[b].numpy(), scores[b].numpy(), pooled, offsets)
    return scores


def affinity(image: Tensor, dilations: Sequence[int]) -> Tensor:
    """(B, 8 x D, H, W) neighbour weights of an image (B, K, H, W), summing to 1 over neighbours.

    score = -|I_p - I_n| / (1e-8 + 0.1 std_p) per channel, std_p the unbiased standard deviation
    of the 3x3 neighbourhoods at all dilations pooled (centre included); averaged over channels,
    soft-maxed over the neighbours. They carry no gradient to the image (as in PAMR's own use).
    """
    dilations, image = tuple(int(d) for d in dilations), image.detach()
    scores = _scores_compiled(image, dilations) if compiled_applies(image, image) else _scores_torch(image, dilations)
    return scores.softmax(1)


def _propagate_planes(
    mask: np.ndarray,
    channels_last: bool,
    out: np.ndarray,
    result: np.ndarray,
    weights: np.ndarray,
    dy: np.ndarray,
    dx: np.ndarray,
    steps: int,
    bounds: np.ndarray,
) -> None:
    """`steps` rounds on planes `mask` (C, H, W), or (H, W, C) if `channels_last`, left in `result` (C, H, W).

    The rounds work in `out` (C, H, W + 2 pad), whose pad columns replicate the edges. Planes are
    independent, so each part [bounds[i], bounds[i + 1]) runs every step on its own. A round
    overwrites row y - reach once row y is done, since no later row reads it; the rows not yet
    written back wait in a ring; the last round writes them to `result` instead. Neighbours go by
    dilation (8 at a time) and planes by pairs, so that one loaded weight serves two planes (an odd
    part computes its last plane twice).
    """
    height, width = result.shape[1:]
    pad = (out.shape[2] - width) // 2
    reach = max(0, -dy.min())  # rows above a row that it reads
    slots = reach + 1
    for part in prange(len(bounds) - 1):
        first, stop = bounds[part], bounds[part + 1]
        for y in range(height):
            for c in range(first, stop):
                row = out[c, y]
                if channels_last:
                    for x in range(width):
                        row[pad + x] = mask[y, x, c]
                else:
                    row[pad : pad + width] = mask[c, y]
                row[:pad] = row[pad]
                row[pad + width :] = row[pad + width - 1]
        ring = np.empty((slots, stop - first + 1, width), out.dtype)
        rows = np.empty(len(dy), np.int64)
        for step in range(steps):
            for y in range(height + reach):
                if y < height:
                    for k in range(len(dy)):
                        rows[k] = min(max(y + dy[k], 0), height - 1)
                    for c in range(first, stop, 2):
                        d = min(c + 1, stop - 1)
                        acc, acc2 = ring[y % slots, c - first], ring[y % slots, c - first + 1]
                        for k in range(0, len(dy), 8):
                            w0, w1, w2, w3 = weights[k, y], weights[k + 1, y], weights[k + 2, y], weights[k + 3, y]
                            w4, w5, w6, w7 = weights[k + 4, y], weights[k + 5, y], weights[k + 6, y], weights[k + 7, y]
                            a0, b0 = out[c, rows[k], pad + dx[k] :], out[d, rows[k], pad + dx[k] :]
                            a1, b1 = out[c, rows[k + 1], pad + dx[k + 1] :], out[d, rows[k + 1], pad + dx[k + 1] :]
                            a2, b2 = out[c, rows[k + 2], pad + dx[k + 2] :], out[d, rows[k + 2], pad + dx[k + 2] :]
                            a3, b3 = out[c, rows[k + 3], pad + dx[k + 3] :], out[d, rows[k + 3], pad + dx[k + 3] :]
                            a4, b4 = out[c, rows[k + 4], pad + dx[k + 4] :], out[d, rows[k + 4], pad + dx[k + 4] :]
                            a5, b5 = out[c, rows[k + 5], pad + dx[k + 5] :], out[d, rows[k + 5], pad + dx[k + 5] :]
                            a6, b6 = out[c, rows[k + 6], pad + dx[k + 6] :], out[d, rows[k + 6], pad + dx[k + 6] :]
                            a7, b7 = out[c, rows[k + 7], pad + dx[k + 7] :], out[d, rows[k + 7], pad + dx[k + 7] :]
                            if k == 0:  # the first dilation's group writes, the others add
                                for x in range(width):
                                    u0, u1, u2, u3 = w0[x], w1[x], w2[x], w3[x]
                                    u4, u5, u6, u7 = w4[x], w5[x], w6[x], w7[x]
                                    acc[x] = (u0 * a0[x] + u1 * a1[x] + u2 * a2[x] + u3 * a3[x]) + (
                                        u4 * a4[x] + u5 * a5[x] + u6 * a6[x] + u7 * a7[x]
                                    )
                                    acc2[x] = (u0 * b0[x] + u1 * b1[x] + u2 * b2[x] + u3 * b3[x]) + (
                                        u4 * b4[x] + u5 * b5[x] + u6 * b6[x] + u7 * b7[x]
                                    )
                            else:
                                for x in range(width):
                                    u0, u1, u2, u3 = w0[x], w1[x], w2[x], w3[x]
                                    u4, u5, u6, u7 = w4[x], w5[x], w6[x], w7[x]
                                    acc[x] += (u0 * a0[x] + u1 * a1[x] + u2 * a2[x] + u3 * a3[x]) + (
                                        u4 * a4[x] + u5 * a5[x] + u6 * a6[x] + u7 * a7[x]
                                    )
                                    acc2[x] += (u0 * b0[x] + u1 * b1[x] + u2 * b2[x] + u3 * b3[x]) + (
                                        u4 * b4[x] + u5 * b5[x] + u6 * b6[x] + u7 * b7[x]
                                    )
                done = y - reach
                if done >= 0 and step == steps - 1:
                    for c in range(first, stop):
                        result[c, done] = ring[done % slots, c - first]
                elif done >= 0:
                    for c in range(first, stop):
                        row = out[c, done]
                        row[pad : pad + width] = ring[done % slots, c - first]
                        row[:pad] = row[pad]
                        row[pad + width :] = row[pad + width - 1]


_compiled = jit(_propagate_planes)
_compiled_scores = jit(_score_rows)


def compiled_applies(mask: Tensor, weights: Tensor) -> bool:
    """Whether the compiled kernels serve these tensors (`affinity` asks with its image twice)."""
    return serves(_compiled, mask, weights)


def _part_bounds(channels: int, threads: int) -> np.ndarray:
    """Even part boundaries: a multiple of `threads` parts of at most about PART_PLANES planes."""
    parts = threads * -(-channels // (threads * PART_PLANES))
    inner = {min(channels, 2 * round(channels * i / (2 * parts))) for i in range(1, parts)}
    return np.array(sorted(inner | {0, channels}), dtype=np.int64)


def _plane_storage(planes: Tensor) -> tuple[np.ndarray, bool]:
    """Planes (C, H, W) as the kernel reads them: their (C, H, W) or (H, W, C) storage, or a contiguous copy."""
    if planes.is_contiguous():
        return planes.numpy(), False
    if planes.permute(1, 2, 0).is_contiguous():  # as `stitch` leaves window sums
        return planes.permute(1, 2, 0).numpy(), True
    return planes.contiguous().numpy(), False


def _propagate_compiled(
    mask: Tensor, weights: Tensor, dilations: Sequence[int], steps: int, workspace: Workspace | None
) -> Tensor:
    """The compiled path: the logits are copied once into a column-padded buffer.

    With a workspace the result is a contiguous buffer of it; without one, a view of the padded
    buffer (the least memory: the logits' size once, plus the padding).
    """
    batch, channels, height, width = mask.shape
    offsets = _offsets(dilations)
    dy = np.array([o[0] for o in offsets], dtype=np.int64)
    dx = np.array([o[1] for o in offsets], dtype=np.int64)
    pad = max(dilations)
    weights = weights.detach().to(mask.dtype).contiguous()
    if workspace is None:
        out = mask.new_empty((batch, channels, height, width + 2 * pad))
        result = out[..., pad : pad + width]  # the last round writes each row back in place
    else:
        out = workspace.empty("pamr", (batch, channels, height, width + 2 * pad), mask)
        result = workspace.empty("pamr result", tuple(mask.shape), mask)
    with kernel_threads() as threads:
        bounds = _part_bounds(channels, threads)
        for b in range(batch):
            guide = weights[min(b, len(weights) - 1)].numpy()  # one guide may serve the whole batch
            planes, channels_last = _plane_storage(mask[b].detach())
            _compiled(planes, channels_last, out[b].numpy(), result[b].numpy(), guide, dy, dx, steps, bounds)
    return result


def _propagate_torch(mask: Tensor, weights: Tensor, dilations: Sequence[int], steps: int) -> Tensor:
    """The torch path: per step one replicate padding and one multiply-add per neighbour."""
    height, width = mask.shape[-2:]
    pad = max(dilations)
    offsets = _offsets(dilations)
    weights = weights.to(mask.dtype)
    for _ in range(steps):
        padded = F.pad(mask, [pad] * 4, mode="replicate")
        views = [_shifted(padded, pad, dy, dx, height, width) for dy, dx in offsets]
        mask = views[0] * weights[:, :1]
        for k in range(1, len(views)):
            mask.addcmul_(views[k], weights[:, k : k + 1])
    return mask


def propagate(
    mask: Tensor, weights: Tensor, dilations: Sequence[int], steps: int, workspace: Workspace | None = None
) -> Tensor:
    """`steps` rounds of mask <- sum over neighbours n of weights_n * mask(n); weights from `affinity`.

    With a `workspace`, the compiled path works in its buffers and leaves a contiguous result there
    (until the next call with it); without one it returns a view of a buffer of its own.
    """
    if steps <= 0:
        return mask
    dilations = tuple(int(d) for d in dilations)
    if compiled_applies(mask, weights):
        return _propagate_compiled(mask, weights, dilations, steps, workspace)
    return _propagate_torch(mask, weights, dilations, steps)


def pamr(image: Tensor, logits: Tensor, steps: int = 10, dilations: Sequence[int] = (8, 16)) -> Tensor:
    """Refine logits (B, C, H, W) guided by an image (B, K, H, W) of the same size."""
    if image.shape[-2:] != logits.shape[-2:] or image.shape[0] != logits.shape[0]:
        raise ValueError(f"PAMR needs image and logits of one size; got {tuple(image.shape)} and {tuple(logits.shape)}")
    if steps <= 0:
        return logits
    weights = affinity(image.to(logits.dtype), tuple(dilations))
    return propagate(logits, weights, tuple(dilations), steps)
