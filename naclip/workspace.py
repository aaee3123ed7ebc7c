"""Buffers that the settings of one prediction reuse in turn.

A freed buffer of tens of MB goes back to the kernel (glibc maps every allocation above 32 MB
anew), and the next one comes back zero-filled page by page: in a sweep of 8 settings on a CPU
that cost about as much as PAMR. A `Workspace` lives for one image; each step asks it for a named
buffer and gets the one it used for the previous setting when the shape still fits.
"""

from __future__ import annotations

from torch import Tensor


class Workspace:
    """Named scratch tensors, reused while their shape, dtype and device fit."""

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}

    def empty(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """An uninitialised tensor of `shape` with `like`'s dtype and device: the same one each time it fits.

        Whatever was read from it before must be done with: the caller owns it until it asks again.
        """
        kept = self._buffers.get(name)
        if kept is None or kept.shape != shape or kept.dtype != like.dtype or kept.device != like.device:
            kept = self._buffers[name] = like.new_empty(shape)
        return kept
