"""Helpers shared by the benchmark scripts: timing, memory, a segmenter on random weights, README rows."""

from __future__ import annotations

import resource
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from naclip import Segmenter


def best_of_each(fns: Sequence[Callable[[], object]], repeat: int = 3, warmup: int = 1) -> list[float]:
    """Best wall-clock seconds of each function over `repeat` rounds after `warmup` rounds, run in turns
    so that a drifting load hits them all alike."""
    times: list[list[float]] = [[] for _ in fns]
    for round_ in range(warmup + repeat):
        for fn, spent in zip(fns, times):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            if round_ >= warmup:
                spent.append(time.perf_counter() - start)
    return [min(spent) for spent in times]


def best_of(fn: Callable[[], object], repeat: int = 3, warmup: int = 1) -> float:
    """Best wall-clock seconds of `repeat` calls after `warmup` calls."""
    return best_of_each([fn], repeat, warmup)[0]


def rss_growth_mb(fn: Callable[[], object]) -> float:
    """Growth of this process's peak resident memory (MiB) while `fn()` runs."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


def peak_memory_mb(module: str, *args: str) -> float:
    """Run `python -m module args...` in a fresh process; it prints its memory growth (MiB) last.

    Call it while the calling process is small: on Linux a child starts from its parent's peak.
    """
    out = subprocess.run([sys.executable, "-m", module, *args], check=True, capture_output=True, text=True).stdout
    return float(out.split()[-1])


def random_segmenter(model: str, num_classes: int, **options) -> Segmenter:
    """A Segmenter with random weights and random unit text embeddings for `num_classes` classes.

    Random weights make real text embeddings meaningless, and skipping them saves minutes on a CPU.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = Segmenter(model=model, pretrained=None, **options)
    names = [f"class {i}" for i in range(num_classes)]
    width = seg.clip.text_projection.shape[-1]
    seg.text_cache.memory.update({name: F.normalize(torch.randn(width), dim=0) for name in names})
    seg.set_classes(names)
    return seg


ROW_PREFIX = "README row: "


def readme_row(what: str, baseline: str, naclip: str, ratio: str) -> None:
    """Print this benchmark's row of the README's performance table (`benchmarks/report.py` collects it)."""
    print(f"{ROW_PREFIX}{what} | {baseline} | {naclip} | {ratio}")
