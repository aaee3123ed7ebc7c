"""The `folder` dataset: evaluate your own images and masks without writing code."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from naclip.datasets.base import IGNORE_INDEX, SegDataset
from naclip.datasets.layouts import IMAGE_SUFFIXES, Layout


def _common_suffix(images: Path) -> str:
    """The most frequent image suffix under `images` (so .jpg and .png folders both work unasked)."""
    counts = Counter(p.suffix.lower() for p in images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not counts:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {images}: the split is empty")
    suffix = counts.most_common(1)[0][0]
    # Keep the on-disk spelling (e.g. .JPG) of the most common suffix.
    return next(p.suffix for p in images.rglob("*") if p.suffix.lower() == suffix)


def folder_dataset(
    images: str | Path,
    masks: str | Path,
    classes: str | Path,
    *,
    image_suffix: str | None = None,
    mask_suffix: str = ".png",
    split: str | Path | None = None,
    ignore_index: int = IGNORE_INDEX,
    reduce_zero_label: bool = False,
    background: bool = False,
    name: str = "folder",
) -> SegDataset:
    """A dataset from an images folder, a masks folder (same relative names) and a class file.

    `split` is an optional file listing image names (relative, without suffix) to use; by default every
    image under `images` is used. Masks hold class indices (line order of `classes`), `ignore_index` for
    unlabelled pixels; with `reduce_zero_label`, 0 is unlabelled and k is class k - 1. `background`:
    class 0 is the background (named so in tables). A method runs on it with its default protocol.
    """
    images, masks = Path(images).expanduser().resolve(), Path(masks).expanduser().resolve()
    if not images.is_dir():
        raise FileNotFoundError(f"{name}: images folder not found: {images}")
    suffix = image_suffix or _common_suffix(images)
    layout = Layout(
        str(images), str(masks), suffix, mask_suffix, str(Path(split).expanduser().resolve()) if split else None
    )
    return SegDataset(
        name=name,
        items=layout.list_items(images.parent),
        class_file=Path(classes),
        reduce_zero_label=reduce_zero_label,
        ignore_index=ignore_index,
        background=background,
        root=images,
    )
