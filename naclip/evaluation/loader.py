"""Background decoding: images are read, checked against their masks and `prepare`d in DataLoader workers."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from naclip.datasets.base import BadSample, SegDataset, check_sample
from naclip.preprocess import load_image, prepare


@dataclass
class Loaded:
    """One image ready for the model, or the reason it cannot be scored (`error`)."""

    index: int
    tensor: torch.Tensor | None = None
    size: tuple[int, int] | None = None
    mask: np.ndarray | None = None
    error: str | None = None


class _Prepared(Dataset):
    def __init__(self, dataset: SegDataset, indices: Sequence[int], short_side: int, long_side: int) -> None:
        self.dataset, self.indices = dataset, list(indices)
        self.short_side, self.long_side = short_side, long_side

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> Loaded:
        index = self.indices[position]
        item = self.dataset.items[index]
        try:
            if not item.image.is_file():
                raise BadSample(f"{item.image}: image not found (listed in the split; expected this file)")
            try:
                image = load_image(item.image)
            except ValueError as error:
                raise BadSample(f"{item.image}: cannot read image; expected a JPEG/PNG file ({error})") from error
            mask = check_sample(self.dataset, index, image.shape[:2])
        except BadSample as error:
            return Loaded(index, error=str(error))
        return Loaded(index, prepare(image, self.short_side, self.long_side), image.shape[:2], mask)


def _single(sample: Loaded) -> Loaded:
    return sample


def load_prepared(
    dataset: SegDataset, indices: Sequence[int], short_side: int, long_side: int, workers: int
) -> Iterator[Loaded]:
    """Yield the images of `indices` in order, decoded and resized by `workers` background processes."""
    loader = DataLoader(
        _Prepared(dataset, indices, short_side, long_side),
        batch_size=None,
        num_workers=workers,
        collate_fn=_single,
        prefetch_factor=4 if workers else None,
    )
    return iter(loader)
