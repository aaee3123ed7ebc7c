"""The `folder` dataset: evaluate your own images and masks without writing code."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from naclip.datasets.base import IGNORE_INDEX, SegDataset
from naclip.datasets.layouts import IMAGE_SUFFIXES, Layout

MAX_LABEL = 65535  # the largest value a 16-bit mask can hold


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
    unlabelled pixels (exactly one value: with another ignore index, 255 is an ordinary label); with
    `reduce_zero_label`, 0 is unlabelled and k is class k - 1. `background`: class 0 is the background
    (named so in tables). A method runs on it with its default protocol.
    """
    images, masks = Path(images).expanduser().resolve(), Path(masks).expanduser().resolve()
    if not images.is_dir():
        raise FileNotFoundError(f"{name}: images folder not found: {images}")
    suffix = image_suffix or _common_suffix(images)
    layout = Layout(
        str(images), str(masks), suffix, mask_suffix, str(Path(split).expanduser().resolve()) if split else None
    )
    dataset = SegDataset(
        name=name,
        items=layout.list_items(images.parent),
        class_file=Path(classes),
        reduce_zero_label=reduce_zero_label,
        ignore_index=ignore_index,
        background=background,
        root=images,
        split=Path(layout.split_file) if layout.split_file else None,
    )
    if not dataset.num_classes <= ignore_index <= MAX_LABEL:
        what = (
            f"class {ignore_index} ({dataset.class_names[ignore_index]!r})"
            if 0 <= ignore_index < dataset.num_classes
            else "not a mask value"
        )
        raise ValueError(
            f"{name}: ignore index {ignore_index} is {what} of {classes}; expected a value from "
            f"{dataset.num_classes} to {MAX_LABEL} that is no class index (usually 255)"
        )
    return dataset


NO_IMAGE = "mask without an image"


def unpaired_masks(dataset: SegDataset) -> dict[Path, str]:
    """Mask files in the dataset's mask folders whose image is not read, each with why: they are never scored.

    Why is NO_IMAGE, or names the image of the mask's name under another suffix (`x.JPG` beside
    `.jpg` images), which is not read: only the dataset's suffix is.
    Folders and suffixes are read off the dataset's items; a mask counts as paired when an image of
    its name exists, listed in the split or not (a split may leave out images on purpose).
    """
    folders: dict[tuple[Path, str], tuple[Path, str]] = {}
    for item in dataset.items:
        depth, stem = len(Path(item.name).parts), Path(item.name).name
        mask_suffix, image_suffix = item.mask.name[len(stem) :], item.image.name[len(stem) :]
        folders[item.mask.parents[depth - 1], mask_suffix] = (item.image.parents[depth - 1], image_suffix)
    unpaired: dict[Path, str] = {}
    for (mask_dir, mask_suffix), (image_dir, image_suffix) in folders.items():
        if not mask_dir.is_dir():
            continue
        others: dict[str, Path] | None = None  # images under other suffixes by name, listed when first needed
        for mask in sorted(mask_dir.rglob(f"*{mask_suffix}")):
            name = str(mask.relative_to(mask_dir))[: -len(mask_suffix)]
            if (image_dir / f"{name}{image_suffix}").is_file():
                continue
            if others is None:
                others = {
                    str(path.relative_to(image_dir).with_suffix("")): path
                    for path in sorted(image_dir.rglob("*"))
                    if path.suffix.lower() in IMAGE_SUFFIXES and path.suffix != image_suffix and path.is_file()
                }
            other = others.get(name)
            unpaired[mask] = (
                f"its image {other} is not read, only *{image_suffix} images are (rename it {name}{image_suffix})"
                if other
                else NO_IMAGE
            )
    return unpaired


def add_folder_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of the `folder` benchmark (`naclip eval` and `naclip data check`)."""
    folder = parser.add_argument_group("folder benchmark (--benchmark folder)")
    folder.add_argument("--images", type=Path, help="images folder")
    folder.add_argument("--masks", type=Path, help="masks folder (same relative names, .png)")
    folder.add_argument("--classes", type=Path, help="class file: one class a line, synonyms separated by commas")
    folder.add_argument("--image-suffix", help="image file suffix (default: the most common one)")
    folder.add_argument("--mask-suffix", default=".png", help="mask file suffix (default: .png)")
    folder.add_argument("--split", type=Path, help="file listing the image names to use (default: all)")
    folder.add_argument(
        "--ignore-index",
        type=int,
        default=IGNORE_INDEX,
        help=f"mask value of unlabelled pixels, the only value ignored (default: {IGNORE_INDEX})",
    )
    folder.add_argument("--reduce-zero-label", action="store_true", help="0 is unlabelled, k is class k-1")
    folder.add_argument("--background", action="store_true", help="class 0 is the background")


def folder_from_args(args: argparse.Namespace) -> SegDataset:
    """The `folder` dataset the flags of `add_folder_arguments` describe."""
    if not (args.images and args.masks and args.classes):
        raise ValueError("the folder benchmark needs --images DIR --masks DIR --classes FILE")
    return folder_dataset(
        args.images,
        args.masks,
        args.classes,
        image_suffix=args.image_suffix,
        mask_suffix=args.mask_suffix,
        split=args.split,
        ignore_index=args.ignore_index,
        reduce_zero_label=args.reduce_zero_label,
        background=args.background,
    )
