"""Class labels from query scores: the compiled kernel and the torch path, bit for bit."""

from __future__ import annotations

import importlib

import pytest
import torch

from naclip.labels import best_class

module = importlib.import_module("naclip.labels")


@pytest.fixture(params=["compiled", "torch"])
def path(request, monkeypatch):
    """Each path in turn; the torch one is what runs where numba does not."""
    if request.param == "compiled" and module._compiled is None:
        pytest.skip("numba is not installed")
    if request.param == "torch":
        monkeypatch.setattr(module, "_compiled", None)
    return request.param


def reference(probs: torch.Tensor, spans: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each class's best query by amax, then the best class by max: what the authors' code does."""
    scores = torch.stack([probs[first:stop].amax(0) for first, stop in spans])
    top, labels = scores.max(0)
    return scores, top, labels


def scores_with_ties(queries: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(Q, 13, 37) scores on a coarse grid of values, so that ties between classes abound."""
    generator = torch.Generator().manual_seed(queries)
    return (torch.randint(0, 4, (queries, 13, 37), generator=generator) / 4).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_best_class_is_amax_then_max_with_the_first_index_on_ties(path, dtype):
    probs = scores_with_ties(9, dtype)
    for spans in ([(q, q + 1) for q in range(9)], [(0, 3), (3, 4), (4, 9)], [(0, 9)]):
        expected_scores, expected_top, expected_labels = reference(probs, spans)
        scores = torch.full((len(spans), 13, 37), float("nan"), dtype=dtype)
        top, labels = best_class(probs, spans, scores)
        assert torch.equal(labels, expected_labels) and torch.equal(top, expected_top)
        assert torch.equal(scores, expected_scores) and top.dtype == dtype and labels.dtype == torch.int64
        assert all(torch.equal(a, b) for a, b in zip(best_class(probs, spans), (expected_top, expected_labels)))
    assert all(torch.equal(a, b) for a, b in zip(best_class(probs), probs.max(0)))


def test_nan_wins_as_in_torch(path):
    probs = scores_with_ties(6)
    probs[2, 0, :5] = float("nan")
    probs[4, 0, 3:8] = float("nan")
    spans = [(0, 2), (2, 3), (3, 6)]
    expected_scores, expected_top, expected_labels = reference(probs, spans)
    scores = torch.empty(3, 13, 37)
    top, labels = best_class(probs, spans, scores)
    assert torch.equal(labels, expected_labels)
    assert labels[0, :5].eq(1).all() and torch.isnan(top[0, :8]).all()  # the first NaN class wins
    torch.testing.assert_close(top, expected_top, equal_nan=True, rtol=0, atol=0)
    torch.testing.assert_close(scores, expected_scores, equal_nan=True, rtol=0, atol=0)
