"""Pixel-adaptive mask refinement (PAMR, Araslanov & Roth, CVPR 2020).

Each pixel's mask becomes a weighted sum of its 8 neighbours at each dilation, weighted by
image similarity. The affinities depend only on the image, so they are computed once; each
iteration then accumulates shifted views of the padded mask, which never materialises the
(B, C, 8 x D, H, W) stack of all neighbours.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

# The 8 neighbours of a pixel, row-major, the centre left out.
DIRECTIONS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def _shifted(padded: Tensor, pad: int, dy: int, dx: int, height: int, width: int) -> Tensor:
    """The view of a padded map whose pixel (y, x) holds the original's (y + dy, x + dx)."""
    return padded[..., pad + dy : pad + dy + height, pad + dx : pad + dx + width]


def affinity(image: Tensor, dilations: Sequence[int]) -> Tensor:
    """(B, 8 x D, H, W) neighbour weights of an image (B, K, H, W), summing to 1 over neighbours.

    score = -|I_p - I_n| / (1e-8 + 0.1 std_p) per channel, std_p the unbiased standard deviation
    of the 3x3 neighbourhoods at all dilations pooled (centre included); averaged over channels,
    soft-maxed over the neighbours.
    """
    height, width = image.shape[-2:]
    padded = [F.pad(image, [d] * 4, mode="replicate") for d in dilations]
    pooled = [
        _shifted(p, d, dy * d, dx * d, height, width)
        for p, d in zip(padded, dilations)
        for dy, dx in ((0, 0), *DIRECTIONS)
    ]
    mean = sum(pooled) / len(pooled)
    std = (sum((view - mean) ** 2 for view in pooled) / (len(pooled) - 1)).sqrt()
    denominator = 1e-8 + 0.1 * std
    scores = [
        (-(image - _shifted(p, d, dy * d, dx * d, height, width)).abs() / denominator).mean(1)
        for p, d in zip(padded, dilations)
        for dy, dx in DIRECTIONS
    ]
    return torch.stack(scores, dim=1).softmax(dim=1)


def propagate(mask: Tensor, weights: Tensor, dilations: Sequence[int], steps: int) -> Tensor:
    """`steps` rounds of mask <- sum over neighbours n of weights_n * mask(n)."""
    height, width = mask.shape[-2:]
    for _ in range(steps):
        out = torch.zeros_like(mask)
        k = 0
        for d in dilations:
            padded = F.pad(mask, [d] * 4, mode="replicate")
            for dy, dx in DIRECTIONS:
                out.addcmul_(_shifted(padded, d, dy * d, dx * d, height, width), weights[:, k : k + 1])
                k += 1
        mask = out
    return mask


def pamr(image: Tensor, logits: Tensor, steps: int = 10, dilations: Sequence[int] = (8, 16)) -> Tensor:
    """Refine logits (B, C, H, W) guided by an image (B, K, H, W) of the same size."""
    if image.shape[-2:] != logits.shape[-2:] or image.shape[0] != logits.shape[0]:
        raise ValueError(f"PAMR needs image and logits of one size; got {tuple(image.shape)} and {tuple(logits.shape)}")
    if steps <= 0:
        return logits
    weights = affinity(image.to(logits.dtype), tuple(dilations))
    return propagate(logits, weights, tuple(dilations), steps)
