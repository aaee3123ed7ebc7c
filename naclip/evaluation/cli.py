"""`naclip eval --benchmark voc21 [--data-root D] [--limit N] [--out DIR] [method flags]`."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from naclip.benchmarks import CLASS_NAMES, PROTOCOLS
from naclip.datasets import DATA_ENV, PRESETS
from naclip.datasets.folder import add_folder_arguments, folder_from_args
from naclip.evaluation.outputs import PER_CLASS_CSV, PROVENANCE_JSON, SUMMARY_CSV, per_class_table
from naclip.evaluation.runner import evaluate
from naclip.options import add_settings_arguments, settings_overrides


def register(subparsers: argparse._SubParsersAction, argv: Sequence[str] = ()) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="mIoU on the benchmarks (or your own folder of images and masks)",
        description="Evaluate on benchmarks. --method runs a method as its authors ran it on each benchmark "
        "(`naclip data list --method NAME` prints its protocol); setting flags override it. Writes "
        "OUT/summary.csv (one row per benchmark and variant), OUT/per_class.csv and OUT/provenance.json; "
        "an interrupted run resumes when rerun with the same OUT. "
        "Under `torchrun --nproc-per-node N -m naclip eval ...` the images are shared between processes.",
    )
    parser.add_argument(
        "--benchmark", nargs="+", required=True, metavar="NAME", help=f"{', '.join(PRESETS)}, or folder"
    )
    parser.add_argument("--data-root", type=Path, help=f"folder holding the datasets (default: ${DATA_ENV})")
    parser.add_argument("--limit", type=int, help="only the first N images of each benchmark")
    parser.add_argument("--out", type=Path, help="results folder (default: results/<benchmarks>)")
    parser.add_argument("--save-predictions", type=Path, metavar="DIR", help="write each label map as DIR/<image>.png")
    parser.add_argument("--skip-bad", action="store_true", help="skip (and report) unreadable or inconsistent images")
    parser.add_argument("--fresh", action="store_true", help="ignore saved partial results, start over")
    parser.add_argument("--workers", type=int, help="image decoding processes (default: up to 4)")
    parser.add_argument(
        "--variant",
        action="append",
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="a method variant sharing the trunk pass, e.g. --variant sigma=3 --variant attention=kk (repeatable)",
    )
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="authors",
        help="authors: each method as its authors ran it (default); shared: the same protocol fields and class "
        "files for every method (naclip data list --protocol shared)",
    )
    parser.add_argument(
        "--class-names",
        choices=CLASS_NAMES,
        default="synonyms",
        help="synonyms: the class file's lines (default); plain: one name per class, the background as 'background'",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--quiet", action="store_true", help="no per-class table at the end (the summary only)")

    add_folder_arguments(parser)
    add_settings_arguments(parser, argv)
    parser.set_defaults(func=run)


def parse_variant(text: str) -> dict[str, Any]:
    """'sigma=3,attention=kk,pamr_dilations=4,8' -> {'sigma': 3, 'attention': 'kk', 'pamr_dilations': '4,8'}.

    A comma starts a new setting only when `KEY=` follows it; values are read as YAML scalars.
    """
    variant = {}
    for part in re.split(r",(?=\s*[A-Za-z_-]+=)", text):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--variant {text!r}: expected KEY=VALUE[,KEY=VALUE], e.g. sigma=3,attention=kk")
        try:
            variant[key.strip().replace("-", "_")] = yaml.safe_load(value)
        except yaml.YAMLError as error:
            problem = getattr(error, "problem", None) or type(error).__name__
            raise ValueError(
                f"--variant {text!r}: the value of {key.strip()!r} ({value!r}) is not a YAML scalar ({problem}); "
                "expected e.g. 3, kk or 8,16"
            ) from None
    return variant


def _benchmarks(args: argparse.Namespace) -> list:
    return [folder_from_args(args) if name == "folder" else name for name in args.benchmark]


def run(args: argparse.Namespace) -> int:
    out = args.out or Path("results") / "+".join(args.benchmark)
    frame = evaluate(
        _benchmarks(args),
        [parse_variant(text) for text in args.variant] if args.variant else None,
        data_root=args.data_root,
        limit=args.limit,
        out=out,
        save_predictions=args.save_predictions,
        skip_bad=args.skip_bad,
        resume=not args.fresh,
        workers=args.workers,
        progress=not args.no_progress,
        method=args.method,
        protocol=args.protocol,
        class_names=args.class_names,
        **settings_overrides(args),
    )
    provenance = frame.attrs["provenance"]
    if os.environ.get("RANK", "0") != "0":
        return 0
    columns = [
        "benchmark",
        "variant",
        "mIoU",
        "aAcc",
        "mAcc",
        "n_images",
        "n_skipped",
        "images_per_s",
        "s_per_image",
        "peak_memory_mib",
        "gflops",
    ]
    if not args.quiet:
        print(per_class_table(frame.attrs["per_class"]), end="\n\n")
    print(frame[columns].to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    print(
        f"protocol: {args.protocol}, class names: {args.class_names}; peak memory: {frame['peak_memory_kind'].iloc[0]}"
        "; gflops: one prediction of the first image scored (torch's FlopCounterMode)"
    )
    print(f"wrote {out / SUMMARY_CSV}, {out / PER_CLASS_CSV}, {out / PROVENANCE_JSON}")
    if provenance["random_weights"]:
        print("note: RANDOM weights were used (--pretrained none); these numbers are meaningless.")
    return 0
