"""Buffers that the settings of one prediction reuse in turn.

A freed buffer of tens of MB goes back to the kernel (glibc maps every allocation above 32 MB
anew), and the next one comes back zero-filled page by page: in a sweep of 8 settings on a CPU
that cost about as much as PAMR. A `Workspace` lives for one image; each step asks it for a named
buffer and gets the one it used for the previous setting when the shape still fits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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

    def resized(self, name: str, images: Tensor, size: tuple[int, int], rows: int = 0) -> Tensor:
        """`F.interpolate(images, size, mode="bilinear", align_corners=False)`, the same values, in buffer `name`.

        `images` (n, C, h, w) stored channels-first or channels-last; the result is stored alike (the
        kernel, and so the rounding, follows the storage). The buffer holds max(n, `rows`) images, so
        that a shorter last chunk of a sequence reuses it.
        """
        count, channels = images.shape[:2]
        rows = max(count, rows)
        if images.is_contiguous():
            out = self.empty(name, (rows, channels, *size), images)[:count]
        elif images.is_contiguous(memory_format=torch.channels_last):
            out = self.empty(name, (rows, *size, channels), images)[:count].permute(0, 3, 1, 2)
        else:
            return F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        return torch.ops.aten.upsample_bilinear2d.out(images, list(size), False, None, None, out=out)
