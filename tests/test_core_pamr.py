"""PAMR against naive references written from its definition."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from naclip import pamr
from naclip.pamr import affinity

NEIGHBOURS = [(dy, dx) for dy, dx in itertools.product((-1, 0, 1), repeat=2) if (dy, dx) != (0, 0)]


def naive_affinity(image: np.ndarray, dilations) -> np.ndarray:
    """Pixel by pixel: (8 x D, H, W) softmax-normalised neighbour weights of a (K, H, W) image."""
    channels, height, width = image.shape

    def at(c, y, x):  # replicate padding
        return image[c, min(max(y, 0), height - 1), min(max(x, 0), width - 1)]

    out = np.zeros((8 * len(dilations), height, width))
    for y, x in itertools.product(range(height), range(width)):
        scores = np.zeros((channels, 8 * len(dilations)))
        for c in range(channels):
            pooled = [at(c, y + dy * d, x + dx * d) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
            std = np.std(pooled, ddof=1)
            neighbours = [at(c, y + dy * d, x + dx * d) for d in dilations for dy, dx in NEIGHBOURS]
            scores[c] = -np.abs(image[c, y, x] - np.array(neighbours)) / (1e-8 + 0.1 * std)
        mean = scores.mean(0)
        out[:, y, x] = np.exp(mean - mean.max()) / np.exp(mean - mean.max()).sum()
    return out


def gather_all_pamr(image: torch.Tensor, logits: torch.Tensor, steps: int, dilations) -> torch.Tensor:
    """The straightforward formula: gather all 8 x D neighbours of every class, every iteration."""
    weights = torch.from_numpy(naive_affinity(image[0].double().numpy(), dilations))
    mask = logits[0].double()
    height, width = mask.shape[-2:]
    for _ in range(steps):
        stack = []
        for d in dilations:
            padded = torch.nn.functional.pad(mask[None], [d] * 4, mode="replicate")[0]
            stack += [
                padded[:, d + dy * d : d + dy * d + height, d + dx * d : d + dx * d + width] for dy, dx in NEIGHBOURS
            ]
        mask = (torch.stack(stack, 1) * weights[None]).sum(1)
    return mask[None]


def test_affinity_matches_pixelwise_definition():
    image = torch.randn(1, 3, 9, 11, dtype=torch.float64)
    ours = affinity(image, (1, 2))[0].numpy()
    np.testing.assert_allclose(ours, naive_affinity(image[0].numpy(), (1, 2)), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ours.sum(0), 1.0)


def test_pamr_matches_naive_reference():
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(1, 3, 12, 10, generator=generator)
    logits = torch.randn(1, 5, 12, 10, generator=generator)
    ours = pamr(image, logits, steps=4, dilations=(1, 3))
    reference = gather_all_pamr(image, logits, 4, (1, 3))
    assert ours.shape == logits.shape
    assert (ours.double() - reference).abs().max() < 1e-5


def test_pamr_dilation_larger_than_image():
    image, logits = torch.randn(1, 3, 6, 5), torch.randn(1, 2, 6, 5)
    reference = gather_all_pamr(image, logits, 2, (8,))
    assert (pamr(image, logits, steps=2, dilations=(8,)).double() - reference).abs().max() < 1e-5


def test_pamr_keeps_constant_masks_and_zero_steps_is_identity():
    image = torch.randn(1, 3, 8, 8)
    constant = torch.full((1, 2, 8, 8), 0.25)
    torch.testing.assert_close(pamr(image, constant, steps=3, dilations=(1, 2)), constant)
    logits = torch.randn(1, 2, 8, 8)
    assert pamr(image, logits, steps=0) is logits


def test_pamr_rejects_mismatched_sizes():
    with pytest.raises(ValueError, match="one size"):
        pamr(torch.randn(1, 3, 8, 8), torch.randn(1, 2, 8, 9))
