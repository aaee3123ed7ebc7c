"""numba plumbing shared by the compiled CPU kernels (PAMR, class labels).

numba ships as a prebuilt wheel: nothing is compiled at install time and no C compiler is needed.
Where numba is missing, `jit` gives None and each caller runs its torch path instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

try:
    from numba import config as _numba_config
    from numba import njit, prange, set_num_threads
except ImportError:  # the torch paths serve everywhere
    njit = None
    prange = range

__all__ = ["jit", "kernel_threads", "prange", "serves"]


def jit(function: Callable) -> Callable | None:
    """numba's parallel compilation of `function` (None without numba), cached on disk where it can be."""
    if njit is None:
        return None
    options = {"parallel": True, "fastmath": {"contract"}, "boundscheck": False}
    try:
        return njit(cache=True, **options)(function)
    except RuntimeError:  # no writable cache location: each process compiles on first use
        return njit(**options)(function)


def serves(kernel: Callable | None, *tensors: Tensor) -> bool:
    """Whether a compiled `kernel` can take these tensors: on the CPU, float32 or float64, no autograd."""
    return (
        kernel is not None
        and all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) for t in tensors)
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
    )


@contextmanager
def kernel_threads() -> Iterator[int]:
    """Run numba's kernels on torch's thread count (as far as numba has threads), and leave torch's as it was.

    numba's OpenMP pool, when it starts, can change the count that torch reads from OpenMP.
    """
    torch_threads = torch.get_num_threads()
    threads = max(1, min(torch_threads, _numba_config.NUMBA_NUM_THREADS))
    set_num_threads(threads)
    try:
        yield threads
    finally:
        if torch.get_num_threads() != torch_threads:
            torch.set_num_threads(torch_threads)
