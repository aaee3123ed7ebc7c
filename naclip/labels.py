"""From query scores to class labels: each class scores its best query, each pixel takes its best class.

Ties go to the first index and NaN beats everything, as `torch.amax` and `torch.max` have them; the
compiled CPU kernel and the torch path give the same tensors bit for bit (tests hold them to it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from naclip.compiled import jit, kernel_threads, prange, serves


def _best_class_rows(
    probs: np.ndarray,
    firsts: np.ndarray,
    stops: np.ndarray,
    scores: np.ndarray,
    write_scores: bool,
    top: np.ndarray,
    labels: np.ndarray,
) -> None:
    """Rows in parallel: class c scores max(probs[firsts[c]:stops[c]]) (into `scores` if `write_scores`);
    `top` and `labels` (H, W) get the best score and its class."""
    height, width = probs.shape[1:]
    for y in prange(height):
        best, label = top[y], labels[y]
        score = np.empty(width, probs.dtype)
        for c in range(len(firsts)):
            score[:] = probs[firsts[c], y]
            for q in range(firsts[c] + 1, stops[c]):
                row = probs[q, y]
                for x in range(width):
                    if row[x] > score[x] or row[x] != row[x]:  # a NaN stays once in
                        score[x] = row[x]
            if write_scores:
                scores[c, y] = score
            if c == 0:
                best[:] = score
                label[:] = 0
                continue
            for x in range(width):
                if score[x] > best[x] or (score[x] != score[x] and best[x] == best[x]):  # the first NaN wins
                    best[x] = score[x]
                    label[x] = c


_compiled = jit(_best_class_rows)


def best_class(
    probs: Tensor, spans: Sequence[tuple[int, int]] | None = None, scores: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """(top, labels), each (H, W): per pixel the best class score and its class index.

    `probs` (Q, H, W) holds per-query scores; class c scores the best of probs[first:stop] for its
    span (synonyms); without `spans` each query is a class. `scores` (C, H, W), when given,
    receives the class scores.
    """
    spans = [(q, q + 1) for q in range(len(probs))] if spans is None else list(spans)
    height, width = probs.shape[1:]
    if serves(_compiled, probs) and probs.is_contiguous() and (scores is None or scores.is_contiguous()):
        top = probs.new_empty((height, width))
        labels = torch.empty((height, width), dtype=torch.int64)
        firsts, stops = (np.array(column, dtype=np.int64) for column in zip(*spans))
        out = probs.new_empty((1, 1, 1)) if scores is None else scores
        with kernel_threads():
            _compiled(probs.numpy(), firsts, stops, out.numpy(), scores is not None, top.numpy(), labels.numpy())
        return top, labels
    if scores is None and all(stop == first + 1 for first, stop in spans):
        return probs.max(0)
    if scores is None:
        scores = probs.new_empty((len(spans), height, width))
    for index, (first, stop) in enumerate(spans):
        torch.amax(probs[first:stop], 0, out=scores[index])
    return scores.max(0)
