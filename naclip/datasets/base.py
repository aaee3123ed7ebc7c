"""A segmentation dataset: image/mask pairs, a class file, and the label conventions to score them."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from naclip.text import read_class_file

IGNORE_INDEX = 255
EXIF_ORIENTATION = 0x0112


class BadSample(ValueError):
    """A sample that cannot be scored; the message names the file and what was expected."""


@dataclass(frozen=True)
class Item:
    """One image and its ground-truth mask; `name` (a relative path without suffix) names outputs."""

    name: str
    image: Path
    mask: Path

    def __post_init__(self) -> None:
        parts = Path(self.name).parts
        if not parts or Path(self.name).is_absolute() or ".." in parts:
            raise ValueError(
                f"item name {self.name!r} leaves its folders; expected a path relative to the images and "
                "masks folders, without '..'"
            )


def read_class_names(class_file: str | Path) -> list[str]:
    """The display name (first synonym) of each class of a class file, parsed as the Segmenter does."""
    return read_class_file(class_file).names


def read_mask(
    path: Path, num_classes: int, *, reduce_zero_label: bool = False, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """Read a label PNG as an (H, W) int64 array in the dataset's label space, checking its values.

    With `reduce_zero_label` (mmsegmentation's convention) 0 becomes ignored and k becomes k - 1.
    Raises BadSample for a missing or unreadable file, a multi-channel image, or a label value that is
    neither a class index (0..num_classes-1) nor `ignore_index`.
    """
    if not path.is_file():
        raise BadSample(f"{path}: ground-truth mask not found")
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L", "I", "I;16"):
                raise BadSample(
                    f"{path}: mask has mode {image.mode}; expected a single-channel label PNG "
                    "(palette or greyscale, one class index per pixel)"
                )
            mask = np.asarray(image).astype(np.int64)
    except BadSample:
        raise
    except Exception as error:  # PIL raises many types for damaged files
        raise BadSample(f"{path}: cannot read mask ({error})") from error
    if reduce_zero_label:
        mask = np.where(mask == 0, ignore_index, mask - 1)
        mask[mask == ignore_index - 1] = ignore_index
    bad = (mask != ignore_index) & ((mask < 0) | (mask >= num_classes))
    if bad.any():
        values = sorted(int(v) for v in np.unique(mask[bad]))[:10]
        if reduce_zero_label:
            values, expected = [v + 1 for v in values], f"1..{num_classes} (0 is ignored, reduce_zero_label)"
        else:
            expected = f"0..{num_classes - 1}"
        raise BadSample(
            f"{path}: label values {values} are outside the {num_classes} classes; "
            f"expected {expected} or {ignore_index} (ignored)"
        )
    return mask


@dataclass
class SegDataset:
    """Image/mask pairs with their class file and scoring conventions.

    `protocol` names the benchmark whose protocol a method applies to it (None for your own data:
    the method's default protocol); `background`: class 0 is the background, spelled as stuff words.
    """

    name: str
    items: list[Item]
    class_file: Path
    reduce_zero_label: bool = False
    ignore_index: int = IGNORE_INDEX
    background: bool = False
    protocol: str | None = None
    root: Path | None = None
    split: Path | None = None  # the file listing the items, if any

    def __post_init__(self) -> None:
        if not self.items:
            raise ValueError(f"{self.name}: the split is empty (no images found under {self.root})")
        self.class_names = read_class_names(self.class_file)
        if self.background:
            self.class_names[0] = "background"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Item:
        return self.items[index]

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def read_mask(self, index: int) -> np.ndarray:
        """The ground truth of item `index` in the label space of the classes (see `read_mask`)."""
        item = self.items[index]
        if not item.mask.is_file():
            raise BadSample(f"{item.image}: image has no ground-truth mask; expected {item.mask}")
        return read_mask(
            item.mask,
            self.num_classes,
            reduce_zero_label=self.reduce_zero_label,
            ignore_index=self.ignore_index,
        )

    def inputs(self) -> list[tuple[str, Path]]:
        """What a run reads and must never write: its images and masks folders and its split file."""
        found: dict[Path, str] = {}
        for item in self.items:
            depth = len(Path(item.name).parts)
            found.setdefault(item.image.parents[depth - 1], "images folder")
            found.setdefault(item.mask.parents[depth - 1], "masks folder")
        if self.split is not None:
            found[self.split] = "split file"
        return [(what, path) for path, what in found.items()]

    def limited(self, limit: int | None) -> SegDataset:
        """The first `limit` items (all when None), same conventions."""
        if limit is None or limit >= len(self.items):
            return self
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        return dataclasses.replace(self, items=self.items[:limit])

    def with_class_file(self, class_file: Path | None) -> SegDataset:
        """The same data scored with another class file of the same length (a method's own spelling)."""
        if class_file is None or Path(class_file) == Path(self.class_file):
            return self
        other = dataclasses.replace(self, class_file=Path(class_file))
        if other.num_classes != self.num_classes:
            raise ValueError(
                f"{class_file}: {other.num_classes} classes, but {self.name}'s masks have {self.num_classes}; "
                "expected the same number"
            )
        return other


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image file as decoded (EXIF orientation applied) from its header; BadSample when unreadable."""
    if not path.is_file():
        raise BadSample(f"{path}: image not found")
    try:
        with Image.open(path) as image:
            width, height = image.size
            turned = image.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8)  # 90 or 270 degrees
    except Exception as error:
        raise BadSample(f"{path}: cannot read image ({error})") from error
    return (width, height) if turned else (height, width)


def check_sample(dataset: SegDataset, index: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """The validated ground truth of item `index`; `size` is the image's (H, W) when already known.

    Raises BadSample naming the file for a missing or unreadable image or mask, label values outside
    the classes, or a mask whose size differs from its image.
    """
    item = dataset.items[index]
    if size is None:
        size = image_size(item.image)
    mask = dataset.read_mask(index)
    if mask.shape != tuple(size):
        raise BadSample(
            f"{item.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {item.image} is "
            f"{size[1]}x{size[0]}; expected the same size"
        )
    return mask
