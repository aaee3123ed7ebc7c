"""PAMR against naive references written from its definition."""

from __future__ import annotations

import importlib
import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from naclip.pamr import affinity, compiled_applies, pamr, propagate
from naclip.workspace import Workspace

module = importlib.import_module("naclip.pamr")  # `naclip.pamr` the attribute is the function

needs_numba = pytest.mark.skipif(module._compiled is None, reason="numba is not installed")

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


def test_affinity_matches_pixelwise_definition(path):
    image = torch.randn(1, 3, 9, 11, dtype=torch.float64)
    ours = affinity(image, (1, 2))[0].numpy()
    np.testing.assert_allclose(ours, naive_affinity(image[0].numpy(), (1, 2)), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ours.sum(0), 1.0)
    single = affinity(image.float(), (1, 2))
    assert single.dtype == torch.float32
    np.testing.assert_allclose(single[0].numpy(), ours, rtol=1e-4, atol=1e-6)


@pytest.fixture(params=["compiled", "torch"])
def path(request, monkeypatch):
    """Each propagation path in turn; the torch one is what runs where numba does not."""
    if request.param == "compiled":
        if module._compiled is None:
            pytest.skip("numba is not installed")
    else:
        monkeypatch.setattr(module, "_compiled", None)
    return request.param


def test_pamr_matches_naive_reference(path):
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(1, 3, 12, 10, generator=generator)
    logits = torch.randn(1, 5, 12, 10, generator=generator)
    assert compiled_applies(logits, logits) == (path == "compiled")
    ours = pamr(image, logits, steps=4, dilations=(1, 3))
    reference = gather_all_pamr(image, logits, 4, (1, 3))
    assert ours.shape == logits.shape and ours.dtype == logits.dtype
    assert (ours.double() - reference).abs().max() < 1e-5


def test_pamr_in_double_precision_is_exact(path):
    generator = torch.Generator().manual_seed(1)
    image = torch.randn(1, 3, 11, 13, generator=generator, dtype=torch.float64)
    logits = torch.randn(1, 6, 11, 13, generator=generator, dtype=torch.float64)
    ours = pamr(image, logits, steps=3, dilations=(2, 4))
    assert ours.dtype == torch.float64
    assert (ours - gather_all_pamr(image, logits, 3, (2, 4))).abs().max() < 1e-12


def test_pamr_dilation_larger_than_image(path):
    image, logits = torch.randn(1, 3, 6, 5), torch.randn(1, 2, 6, 5)
    reference = gather_all_pamr(image, logits, 2, (8,))
    assert (pamr(image, logits, steps=2, dilations=(8,)).double() - reference).abs().max() < 1e-5


def test_pamr_batch_of_two_matches_each_image(path):
    generator = torch.Generator().manual_seed(2)
    image, logits = torch.randn(2, 3, 9, 14, generator=generator), torch.randn(2, 7, 9, 14, generator=generator)
    both = pamr(image, logits, steps=3, dilations=(1, 2, 5))
    for b in range(2):
        reference = gather_all_pamr(image[b : b + 1], logits[b : b + 1], 3, (1, 2, 5))
        assert (both[b : b + 1].double() - reference).abs().max() < 1e-5
    shared = propagate(logits, affinity(image[:1], (1, 2, 5)), (1, 2, 5), 3)  # one guide for both
    assert (shared[1:].double() - gather_all_pamr(image[:1], logits[1:], 3, (1, 2, 5))).abs().max() < 1e-5


@needs_numba
def test_paths_agree_at_a_realistic_size():
    generator = torch.Generator().manual_seed(3)
    image, logits = torch.randn(2, 3, 70, 90, generator=generator), torch.randn(2, 21, 70, 90, generator=generator)
    scores = module._scores_compiled(image, (8, 16))
    expected = module._scores_torch(image, (8, 16))
    assert ((scores - expected).abs() / expected.abs().clamp_min(1)).max() < 1e-6
    weights = affinity(image, (8, 16))
    before = logits.clone()
    compiled = propagate(logits, weights, (8, 16), 10)
    assert torch.equal(logits, before)  # the input is left as it was
    assert (compiled - module._propagate_torch(logits, weights, (8, 16), 10)).abs().max() < 1e-5


@needs_numba
@pytest.mark.parametrize("threads", [1, 2, 3, 5])
def test_compiled_parts_cover_every_plane(threads):
    for channels in (1, 2, 7, 21, 56, 171):
        bounds = module._part_bounds(channels, threads).tolist()
        assert bounds[0] == 0 and bounds[-1] == channels and bounds == sorted(set(bounds))
        assert all(end % 2 == 0 for end in bounds[1:-1])  # planes go by pairs
    generator = torch.Generator().manual_seed(4)
    image, logits = torch.randn(1, 3, 20, 17, generator=generator), torch.randn(1, 9, 20, 17, generator=generator)
    weights = affinity(image, (1, 3))
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        compiled = propagate(logits, weights, (1, 3), 4)
        assert torch.get_num_threads() == threads  # numba's pool leaves torch's count alone
    finally:
        torch.set_num_threads(previous)
    assert (compiled - module._propagate_torch(logits, weights, (1, 3), 4)).abs().max() < 1e-5


def test_kernel_logic_in_plain_python():
    """The compiled kernels' own source, run by the interpreter on a small case, equals the torch path."""
    generator = torch.Generator().manual_seed(5)
    image, logits = torch.randn(1, 3, 7, 6, generator=generator), torch.randn(1, 3, 7, 6, generator=generator)
    scores = np.empty((16, 7, 6), dtype=np.float32)
    padded = torch.nn.functional.pad(image, [2, 2, 0, 0], mode="replicate")[0].numpy()
    pooled, offsets = np.array(module._pooled_offsets((1, 2))), np.array(module._offsets((1, 2)))
    module._score_rows(padded, scores, pooled, offsets)
    np.testing.assert_allclose(scores, module._scores_torch(image, (1, 2))[0].numpy(), rtol=1e-5)
    weights = affinity(image, (1, 2))
    out, result = np.empty((3, 7, 6 + 4), dtype=np.float32), np.full((3, 7, 6), np.nan, dtype=np.float32)
    dy, dx = offsets[:, 0], offsets[:, 1]
    stored_last = logits[0].permute(1, 2, 0).contiguous().numpy()  # (H, W, C), as `stitch` leaves logits
    for steps in (1, 2, 3):
        expected = module._propagate_torch(logits, weights, (1, 2), steps)[0].numpy()
        for planes, channels_last in ((logits[0].numpy(), False), (stored_last, True)):
            result[:] = np.nan
            module._propagate_planes(
                planes, channels_last, out, result, weights[0].numpy(), dy, dx, steps, np.array([0, 3])
            )
            np.testing.assert_allclose(result, expected, atol=1e-6)


@needs_numba
def test_compiled_path_reads_any_storage_alike():
    """Planes stored (C, H, W), (H, W, C) or neither give the same result, bit for bit."""
    generator = torch.Generator().manual_seed(6)
    image, logits = torch.randn(1, 3, 30, 41, generator=generator), torch.randn(1, 7, 30, 41, generator=generator)
    weights = affinity(image, (2, 4))
    expected = propagate(logits, weights, (2, 4), 3)
    channels_last = logits.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    transposed = logits.transpose(2, 3).contiguous().transpose(2, 3)  # neither: copied first
    for stored in (channels_last, transposed):
        assert not stored.is_contiguous()
        assert torch.equal(propagate(stored, weights, (2, 4), 3), expected)
        assert torch.equal(propagate(stored, weights, (2, 4), 3, Workspace()), expected)


def test_other_dtypes_and_autograd_take_the_torch_path():
    image, logits = torch.randn(1, 3, 8, 8), torch.randn(1, 2, 8, 8)
    assert not compiled_applies(logits.half(), logits.half())
    trainable = logits.clone().requires_grad_()
    assert not compiled_applies(trainable, logits)
    refined = pamr(image, trainable, steps=2, dilations=(1, 2))
    refined.sum().backward()
    assert trainable.grad is not None and trainable.grad.shape == logits.shape
    half = pamr(image.half(), logits.half(), steps=2, dilations=(1, 2))
    assert half.dtype == torch.float16
    assert (half.double() - gather_all_pamr(image, logits, 2, (1, 2))).abs().max() < 1e-2


def test_pamr_keeps_constant_masks_and_zero_steps_is_identity(path):
    image = torch.randn(1, 3, 8, 8)
    constant = torch.full((1, 2, 8, 8), 0.25)
    torch.testing.assert_close(pamr(image, constant, steps=3, dilations=(1, 2)), constant)
    logits = torch.randn(1, 2, 8, 8)
    assert pamr(image, logits, steps=0) is logits


def test_pamr_rejects_mismatched_sizes():
    with pytest.raises(ValueError, match="one size"):
        pamr(torch.randn(1, 3, 8, 8), torch.randn(1, 2, 8, 9))


@needs_numba
def test_imports_where_numba_has_no_cache_location():
    code = "import torch; from naclip.pamr import compiled_applies; x = torch.ones(1); assert compiled_applies(x, x)"
    env = {**os.environ, "NUMBA_CACHE_LOCATOR_CLASSES": "numba.core.caching.IPythonCacheLocator"}  # finds none
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent, env=env)


def test_without_numba_the_torch_path_serves():
    code = (
        "import sys; sys.modules['numba'] = None\n"
        "import torch; from naclip.pamr import _compiled, pamr\n"
        "assert _compiled is None\n"
        "out = pamr(torch.randn(1, 3, 9, 9), torch.randn(1, 4, 9, 9), steps=2, dilations=(1, 2))\n"
        "assert out.shape == (1, 4, 9, 9)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)


def test_any_layout_in_and_a_reused_workspace_change_nothing():
    """The kernel copies channels-last logits in as they are; a workspace's buffers serve call after call."""
    from naclip.workspace import Workspace

    generator = torch.Generator().manual_seed(3)
    image = torch.randn(1, 3, 20, 24, generator=generator)
    weights = affinity(image, (1, 2))
    stored = torch.randn(1, 20, 24, 5, generator=generator)  # (B, H, W, C) memory
    channels_last = stored.permute(0, 3, 1, 2)  # (B, C, H, W) view
    expected = module._propagate_torch(channels_last.contiguous(), weights, (1, 2), 3)
    workspace = Workspace()
    first = propagate(channels_last, weights, (1, 2), 3, workspace)
    assert first.is_contiguous() and (first - expected).abs().max() < 1e-5
    kept = first.clone()
    second = propagate(channels_last.contiguous() * 2, weights, (1, 2), 3, workspace)
    assert second.data_ptr() == first.data_ptr()  # the same buffer, now holding the second result
    torch.testing.assert_close(second, 2 * kept, rtol=1e-5, atol=1e-5)
