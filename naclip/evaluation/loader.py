"""Background decoding: images are read, checked against their masks and `prepare`d in DataLoader workers.

Workers end with the main process, even when it is killed (kill -9): a worker blocked on a full
queue would otherwise wait forever, holding its memory. Workers send numpy arrays (pickled through a
pipe), never torch tensors: those go through shared memory, and a small /dev/shm (a container's
64 MB default) or a file size limit made the workers fail and the main process wait for ever.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from naclip.datasets.base import BadSample, SegDataset, check_sample, image_size
from naclip.preprocess import check_size, load_image, prepare

PR_SET_DEATHSIG = 1  # linux/prctl.h


@dataclass
class Loaded:
    """One image ready for the model, or the reason it cannot be scored (`error`)."""

    index: int
    tensor: torch.Tensor | np.ndarray | None = None  # an array until `load_prepared` hands it out
    size: tuple[int, int] | None = None
    mask: np.ndarray | None = None
    error: str | None = None
    original: np.ndarray | None = None  # (H, W, 3) uint8 RGB, kept for methods that read it (`keep_original`)


def _die_with_parent(worker: int, parent: int) -> None:
    """DataLoader `worker_init_fn`: end this worker as soon as the main process (`parent`) dies.

    A forked worker on Linux asks the kernel for SIGKILL on its parent's death (prctl
    PR_SET_DEATHSIG). Otherwise (other systems, or workers started by a forkserver, whose parent is
    the server) a daemon thread polls the main process. A main process already gone ends the worker now.
    """
    if os.getppid() == parent and sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DEATHSIG, signal.SIGKILL)
    if not _alive(parent):
        os._exit(1)
    if os.getppid() != parent or not sys.platform.startswith("linux"):
        threading.Thread(target=_watch, args=(parent,), daemon=True, name="naclip-parent-watch").start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _watch(parent: int) -> None:
    while _alive(parent):
        time.sleep(0.2)
    os._exit(1)


class _Prepared(Dataset):
    def __init__(
        self,
        dataset: SegDataset,
        indices: Sequence[int],
        short_side: int,
        long_side: int,
        min_side: int,
        keep_original: bool = False,
    ) -> None:
        self.dataset, self.indices = dataset, list(indices)
        self.short_side, self.long_side, self.min_side = short_side, long_side, min_side
        self.keep_original = keep_original

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> Loaded:
        index = self.indices[position]
        item = self.dataset.items[index]
        try:
            try:
                check_size(item.image, image_size(item.image), self.short_side, self.long_side, self.min_side)
                image = load_image(item.image)
            except ValueError as error:  # the message names the file and what was expected
                raise BadSample(str(error)) from error
            mask = check_sample(self.dataset, index, image.shape[:2])
        except BadSample as error:
            return Loaded(index, error=str(error))
        prepared = prepare(image, self.short_side, self.long_side).numpy()
        return Loaded(index, prepared, image.shape[:2], mask, original=image if self.keep_original else None)


def _single(sample: Loaded) -> Loaded:
    return sample


def _as_tensors(samples: Iterator[Loaded]) -> Iterator[Loaded]:
    for sample in samples:
        if isinstance(sample.tensor, np.ndarray):
            sample.tensor = torch.from_numpy(sample.tensor)
        yield sample


def load_prepared(
    dataset: SegDataset,
    indices: Sequence[int],
    short_side: int,
    long_side: int,
    workers: int,
    min_side: int = 1,
    keep_original: bool = False,
) -> Iterator[Loaded]:
    """Yield the images of `indices` in order, decoded, checked and resized by `workers` background processes.

    `min_side`: the smallest usable side after resizing (see `check_size`); `keep_original`: also hand out the
    decoded original image (`Loaded.original`), for methods that read it.
    """
    loader = DataLoader(
        _Prepared(dataset, indices, short_side, long_side, min_side, keep_original),
        batch_size=None,
        num_workers=workers,
        collate_fn=_single,
        prefetch_factor=4 if workers else None,
        worker_init_fn=functools.partial(_die_with_parent, parent=os.getpid()) if workers else None,
    )
    return _as_tensors(iter(loader))
