"""The Gaussian bias and every attention variant against direct computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from naclip.attention import ATTENTIONS, QKV, gaussian_bias, get_attention, register_attention
from tests.conftest import VOC_IMAGE


def test_gaussian_bias_matches_closed_form():
    h, w, sigma = 3, 4, 1.5
    omega = gaussian_bias(h, w, sigma).numpy()
    assert omega.shape == (1 + h * w, 1 + h * w)
    for i in range(h * w):
        for j in range(h * w):
            (ri, ci), (rj, cj) = divmod(i, w), divmod(j, w)
            expected = math.exp(-((ri - rj) ** 2 + (ci - cj) ** 2) / (2 * sigma**2))
            assert omega[1 + i, 1 + j] == pytest.approx(expected, abs=1e-6)
    assert np.all(omega[0] == 0) and np.all(omega[:, 0] == 0)
    assert np.allclose(np.diag(omega)[1:], 1.0)


def test_gaussian_bias_equals_window_convolution():
    """The reference builds the bias by convolving a (2h-1) x (2w-1) window over one-hot patch maps."""
    h, w, sigma = 4, 6, 2.0
    ys = torch.arange(2 * h - 1, dtype=torch.float32) - (h - 1)
    xs = torch.arange(2 * w - 1, dtype=torch.float32) - (w - 1)
    window = torch.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * sigma**2))
    one_hot = torch.eye(h * w).reshape(h * w, 1, h, w)
    spread = F.conv2d(one_hot, window[None, None], padding=(h - 1, w - 1)).reshape(h * w, h * w)
    assert torch.allclose(gaussian_bias(h, w, sigma)[1:, 1:], spread, atol=1e-6)


def test_gaussian_bias_is_cached_per_key():
    assert gaussian_bias(5, 7, 5.0) is gaussian_bias(5, 7, 5.0)
    assert gaussian_bias(5, 7, 5.0) is not gaussian_bias(5, 7, 3.0)
    assert gaussian_bias(5, 7, 5.0, dtype=torch.float64).dtype == torch.float64


def test_gaussian_bias_rejects_non_positive_sigma():
    with pytest.raises(ValueError, match="sigma must be > 0"):
        gaussian_bias(2, 2, 0.0)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture
def qk():
    generator = torch.Generator().manual_seed(3)
    q = torch.randn(2, 3, 1 + 2 * 3, 8, generator=generator, dtype=torch.float64)
    k = torch.randn(2, 3, 1 + 2 * 3, 8, generator=generator, dtype=torch.float64)
    return q, k, gaussian_bias(2, 3, 1.0, dtype=torch.float64)


def _direct(name: str, q: np.ndarray, k: np.ndarray, omega: np.ndarray) -> np.ndarray:
    """Per image and head, straight from the formulas of the method description."""
    out = np.zeros(q.shape[:3] + (q.shape[2],))
    d = q.shape[-1]
    for b in range(q.shape[0]):
        s = np.mean(
            [
                np.linalg.norm(q[b, h, i]) * np.linalg.norm(k[b, h, j]) / math.sqrt(d)
                for h in range(q.shape[1])
                for i in range(q.shape[2])
                for j in range(q.shape[2])
            ]
        )
        for h in range(q.shape[1]):
            qq = _softmax(q[b, h] @ q[b, h].T / math.sqrt(d))
            kk = _softmax(k[b, h] @ k[b, h].T / math.sqrt(d))
            if name == "vanilla":
                out[b, h] = _softmax(q[b, h] @ k[b, h].T / math.sqrt(d))
            elif name == "kk":
                out[b, h] = kk
            elif name == "qq":
                out[b, h] = qq
            elif name == "csa":
                out[b, h] = qq + kk
            elif name == "vanilla_gauss":
                out[b, h] = _softmax(q[b, h] @ k[b, h].T / math.sqrt(d) + omega)
            elif name == "nonly":
                out[b, h] = _softmax(omega * s)
            elif name == "identity":
                out[b, h] = np.eye(q.shape[2])
            else:
                out[b, h] = _softmax(k[b, h] @ k[b, h].T / math.sqrt(d) + omega)
    return out


@pytest.mark.parametrize("name", ["vanilla", "kk", "qq", "csa", "vanilla_gauss", "nonly", "naclip", "identity"])
def test_variant_matches_direct_computation(qk, name):
    q, k, omega = qk
    variant = get_attention(name)
    weights = variant.fn(QKV(q, k, torch.zeros_like(k)), omega if variant.neighbourhood else None)
    assert weights.shape == (2, 3, 7, 7)
    np.testing.assert_allclose(weights.numpy(), _direct(name, q.numpy(), k.numpy(), omega.numpy()), atol=1e-10)


def test_unknown_variant_names_the_choices():
    with pytest.raises(ValueError, match="unknown attention variant 'qk'.*naclip"):
        get_attention("qk")


def test_a_new_variant_is_one_function(tiny):
    @register_attention("kq-test")
    def key_query(p, omega):
        return (p.k @ p.q.transpose(-2, -1) * p.q.shape[-1] ** -0.5).softmax(-1)

    try:
        segmenter = tiny(attention="kq-test", pamr_steps=0)
        segmenter.set_classes(["cat", "dog"])
        assert segmenter.predict(VOC_IMAGE).labels.shape == (513, 513)
    finally:
        del ATTENTIONS["kq-test"]
