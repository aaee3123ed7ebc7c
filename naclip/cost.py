"""What a prediction costs, as the field reports it: seconds per image, peak memory, GFLOPs per image.

GFLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` (matrix products, convolutions and
attention: every model's, the second models' and the head's), not by hand; element-wise work and the
compiled CPU kernels (PAMR, labels) are not counted, as in the papers' tables. Peak memory is what the
device allocated (CUDA) or the process's resident set (CPU: the kernel's high-water mark, reset at the
start of each measurement where Linux allows it).
"""

from __future__ import annotations

import contextlib
import resource
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from torch.utils.flop_counter import FlopCounterMode

T = TypeVar("T")
_STATUS, _CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def counted_gflops(fn: Callable[[], T]) -> tuple[T, float]:
    """`fn()` and the GFLOPs (1e9 floating-point operations; a multiply-add counts 2) that torch counted in it."""
    with FlopCounterMode(display=False) as counter:
        result = fn()
    return result, counter.get_total_flops() / 1e9


@dataclass
class PeakMemory:
    """The peak memory of a stretch of work on `device`, in MiB; `kind` says what was measured."""

    device: torch.device
    mib: float = float("nan")

    @property
    def kind(self) -> str:
        if self.device.type == "cuda":
            return "cuda allocated"
        return "process resident (high-water mark)" if _STATUS.is_file() else "process resident (since start)"


def _resident_peak_mib() -> float:
    """The process's peak resident set: VmHWM where /proc has it, else getrusage's (since the process began)."""
    if _STATUS.is_file():
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, kB elsewhere


@contextlib.contextmanager
def peak_memory(device: torch.device | str) -> Iterator[PeakMemory]:
    """Measure the peak memory of the block on `device` (its `mib` is set when the block ends)."""
    measured = PeakMemory(torch.device(device))
    if measured.device.type == "cuda":
        torch.cuda.synchronize(measured.device)
        torch.cuda.reset_peak_memory_stats(measured.device)
    else:
        with contextlib.suppress(OSError):
            _CLEAR_REFS.write_text("5")  # resets VmHWM to the current resident set (Linux)
    try:
        yield measured
    finally:
        if measured.device.type == "cuda":
            torch.cuda.synchronize(measured.device)
            measured.mib = torch.cuda.max_memory_allocated(measured.device) / 2**20
        else:
            measured.mib = _resident_peak_mib()
