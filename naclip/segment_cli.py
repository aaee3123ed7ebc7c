"""`naclip segment IMAGE... --classes "cat; dog; grass, lawn" --out DIR`."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from naclip.evaluation.runner import naming_failures
from naclip.io import atomic_write, atomic_write_with, writable_folder
from naclip.options import add_settings_arguments, settings_overrides
from naclip.preprocess import check_size, load_image
from naclip.progress import tqdm
from naclip.segmenter import Segmenter
from naclip.viz import RANDOM_MARK, label_png, overlay


def register(subparsers: argparse._SubParsersAction, argv: Sequence[str] = ()) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment your images with your own class names",
        description="Segment images with free-text classes. Writes <stem>_labels.png (palette PNG of class "
        "indices; 16-bit greyscale beyond 255 classes), <stem>_overlay.png (image, colours and a legend) "
        "and, with --save-probs, <stem>_probs.npy (float32, classes x H x W). "
        "Images from several folders keep their paths relative to the folders' "
        "common parent under --out, so outputs never overwrite each other.",
    )
    parser.add_argument("images", nargs="+", type=Path, help="image files")
    classes = parser.add_mutually_exclusive_group(required=True)
    classes.add_argument("--classes", help='classes separated by ";", synonyms by ",": "cat; dog; grass, lawn"')
    classes.add_argument("--class-file", type=Path, help="one class per line, synonyms separated by commas")
    parser.add_argument("--out", type=Path, default=Path("segmentations"), help="output folder")
    parser.add_argument("--save-probs", action="store_true", help="also write per-class probabilities (.npy)")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the colours")
    add_settings_arguments(parser, argv)
    parser.set_defaults(func=run)


def parse_class_argument(text: str) -> list[str]:
    """'cat; dog; grass, lawn' -> ['cat', 'dog', 'grass, lawn']."""
    lines = [line.strip() for line in text.split(";") if line.strip()]
    if not lines:
        raise ValueError(f"--classes {text!r} holds no class; expected e.g. 'cat; dog; grass, lawn'")
    return lines


def output_stems(images: Sequence[Path], out: Path) -> dict[Path, Path]:
    """{image: OUT/<stem>} for each distinct image file; outputs are `<stem>_labels.png` and so on.

    Images from one folder go straight into OUT; images from several folders keep their paths
    relative to the folders' common parent (a/x.jpg -> OUT/a/x, b/x.jpg -> OUT/b/x), so no output
    overwrites another. Two files that would still share outputs (x.jpg and x.png) are refused.
    """
    files = {path.resolve(): path for path in images}  # the same file named twice is segmented once
    parents = {path.parent for path in files}
    base = Path(os.path.commonpath(parents)) if len(parents) > 1 else next(iter(parents))
    stems: dict[Path, Path] = {}
    owner: dict[Path, Path] = {}
    for resolved, path in files.items():
        stem = out / resolved.parent.relative_to(base) / resolved.stem
        if stem in owner:
            raise ValueError(
                f"{owner[stem]} and {path} would both be written as {stem}_*.png; expected images whose names "
                "differ by more than their suffix (rename one, or segment them into separate --out folders)"
            )
        owner[stem], stems[path] = path, stem
    return stems


def run(args: argparse.Namespace) -> int:
    for path in args.images:
        if not path.is_file():
            raise FileNotFoundError(f"image {str(path)!r} does not exist")
    out = writable_folder(args.out, "--out")
    stems = output_stems(args.images, out)
    classes = args.class_file if args.class_file else parse_class_argument(args.classes)
    segmenter = Segmenter(method=args.method, **settings_overrides(args))
    segmenter.set_classes(classes)
    names, settings = segmenter.class_names, segmenter.settings
    done = 0
    try:
        mark = RANDOM_MARK if segmenter.random_weights else None
        bar = tqdm(stems.items(), desc="segment", unit="image", disable=len(stems) < 2)
        for path, stem in bar:
            image = load_image(path)
            check_size(path, image.shape[:2], settings.short_side, settings.long_side, segmenter.min_side)
            with naming_failures(path, image.shape[:2]):
                result = segmenter.predict(image, probs=args.save_probs)
            atomic_write(f"{stem}_labels.png", label_png(result.labels, len(names)))
            _save_image(overlay(image, result.labels, names, alpha=args.alpha, mark=mark), Path(f"{stem}_overlay.png"))
            if args.save_probs:
                atomic_write_with(f"{stem}_probs.npy", lambda file, probs=result.probs: np.save(file, probs))
            done += 1
            shares = np.bincount(result.labels.ravel(), minlength=len(names)) / result.labels.size
            found = ", ".join(f"{names[i]} {shares[i]:.0%}" for i in np.argsort(-shares) if shares[i] >= 0.01)
            bar.write(f"{path}: {found}")  # above the bar, not on its line
    except KeyboardInterrupt:
        raise KeyboardInterrupt(
            f"interrupted after {done} of {len(stems)} images; their outputs are in {out} "
            "(rerun with the remaining images to finish)"
        ) from None
    if segmenter.random_weights:
        print("note: RANDOM weights were used (--pretrained none); these segmentations are meaningless.")
    return 0


def _save_image(image: Image.Image, path: Path) -> None:
    atomic_write_with(path, lambda file: image.save(file, format="PNG"))
