"""`naclip segment IMAGE... --classes "cat; dog; grass, lawn" --out DIR`."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from naclip.options import add_settings_arguments, settings_overrides
from naclip.preprocess import load_image
from naclip.segmenter import Segmenter
from naclip.viz import label_image, overlay


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment your images with your own class names",
        description="Segment images with free-text classes. Writes <stem>_labels.png (palette PNG of class "
        "indices), <stem>_overlay.png (image, colours and a legend) and, with --save-probs, <stem>_probs.npy "
        "(float32, classes x H x W).",
    )
    parser.add_argument("images", nargs="+", type=Path, help="image files")
    classes = parser.add_mutually_exclusive_group(required=True)
    classes.add_argument("--classes", help='classes separated by ";", synonyms by ",": "cat; dog; grass, lawn"')
    classes.add_argument("--class-file", type=Path, help="one class per line, synonyms separated by commas")
    parser.add_argument("--out", type=Path, default=Path("segmentations"), help="output folder")
    parser.add_argument("--save-probs", action="store_true", help="also write per-class probabilities (.npy)")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the colours")
    add_settings_arguments(parser)
    parser.set_defaults(func=run)


def parse_class_argument(text: str) -> list[str]:
    """'cat; dog; grass, lawn' -> ['cat', 'dog', 'grass, lawn']."""
    lines = [line.strip() for line in text.split(";") if line.strip()]
    if not lines:
        raise ValueError(f"--classes {text!r} holds no class; expected e.g. 'cat; dog; grass, lawn'")
    return lines


def run(args: argparse.Namespace) -> int:
    for path in args.images:
        if not path.is_file():
            raise FileNotFoundError(f"image {str(path)!r} does not exist")
    segmenter = Segmenter(method=args.method, **settings_overrides(args))
    segmenter.set_classes(args.class_file if args.class_file else parse_class_argument(args.classes))
    names = segmenter.class_names
    args.out.mkdir(parents=True, exist_ok=True)
    for path in tqdm(args.images, desc="segment", unit="image", disable=len(args.images) < 2):
        image = load_image(path)
        result = segmenter.predict(image)
        stem = args.out / path.stem
        label_image(result.labels, len(names)).save(f"{stem}_labels.png")
        overlay(image, result.labels, names, alpha=args.alpha).save(f"{stem}_overlay.png")
        if args.save_probs:
            np.save(f"{stem}_probs.npy", result.probs)
        shares = np.bincount(result.labels.ravel(), minlength=len(names)) / result.labels.size
        found = ", ".join(f"{names[i]} {shares[i]:.0%}" for i in np.argsort(-shares) if shares[i] >= 0.01)
        print(f"{path}: {found}")
    if segmenter.random_weights:
        print("note: RANDOM weights were used (--pretrained none); these segmentations are meaningless.")
    return 0
