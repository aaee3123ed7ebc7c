"""`naclip data`: list the benchmarks, check a dataset on disk, prepare COCO-Object and COCO-Stuff masks."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from naclip.benchmarks import CLASSES_DIR, PROTOCOLS, SHARED, SHARED_CLASS_FILES
from naclip.datasets import coco
from naclip.datasets.base import BadSample, check_sample, image_size
from naclip.datasets.benchmarks import DATA_ENV, PRESETS, open_benchmark
from naclip.datasets.folder import NO_IMAGE, add_folder_arguments, folder_from_args, unpaired_masks
from naclip.methods import METHODS, get_method
from naclip.preprocess import MIN_SIDE, load_image


def register(subparsers: argparse._SubParsersAction, argv: Sequence[str] = ()) -> None:
    parser = subparsers.add_parser("data", help="benchmarks: list, check, prepare COCO-Object / COCO-Stuff")
    commands = parser.add_subparsers(dest="data_command", required=True)

    listing = commands.add_parser(
        "list", help="the benchmarks, a method's protocol on each (--method) and the expected sub-folders"
    )
    listing.add_argument("--method", default="naclip", help=f"one of {', '.join(METHODS)} (default: naclip)")
    listing.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="authors",
        help="authors: the method's own protocol (default); shared: the one every method runs under, with the "
        "reason for each value",
    )
    listing.set_defaults(func=run_list)

    check = commands.add_parser(
        "check",
        help="decode every image and mask of a benchmark (or your folder), report problems",
        description="Decodes every image and mask; reports missing, unreadable or corrupt files, images under "
        f"{MIN_SIDE} px, masks whose size differs from their image or whose values are no class, and masks "
        "without an image. Exits 1 when anything is wrong.",
    )
    check.add_argument("benchmark", help=f"one of {', '.join(PRESETS)}, or folder (--images --masks --classes)")
    check.add_argument("--data-root", type=Path, help=f"folder holding the datasets (default: ${DATA_ENV})")
    add_folder_arguments(check)
    check.set_defaults(func=run_check)

    for target, suffix, what in [
        ("coco_object", "_instanceTrainIds.png", "COCO-Object masks (80 things + background)"),
        ("coco_stuff", "_labelTrainIds.png", "COCO-Stuff 171-class masks"),
    ]:
        prepare = commands.add_parser(
            target.replace("_", "-"),
            help=f"make {what} from the raw COCO-Stuff 164k annotations",
            description=f"Reads SRC/annotations/<split>/*.png (raw COCO-Stuff), writes "
            f"DST/annotations/<split>/*{suffix}, then reads every written mask back to verify it.",
        )
        prepare.add_argument("src", type=Path, help="COCO-Stuff 164k root (images/, annotations/)")
        prepare.add_argument("dst", type=Path, help="output root (may be SRC)")
        prepare.add_argument("--split", action="append", help="split folder(s) to convert (default: val2017)")
        prepare.add_argument("--workers", type=int, default=0, help="conversion processes (default: in-process)")
        prepare.set_defaults(func=run_coco, target=target)


def run_list(args: argparse.Namespace) -> int:
    method = get_method(args.method)
    print(method.describe())
    if args.protocol == "shared":
        print("shared protocol: the same values for every method (its own parameters stay its authors'):")
        for name, spec in SHARED.items():
            exceptions = "".join(f", {key} {value}" for key, value in spec.per_benchmark)
            print(f"  {name} = {spec.value}{exceptions}: {spec.reason}")
        print(f"  class files: {SHARED_CLASS_FILES}")
    header = (
        f"{'benchmark':<14} {'classes':<26} {'short':>5} {'windows':>8} {'logit':>5} {'prob_thd':>8} {'0->ignore':>9}"
    )
    print(f"{header}  folder")
    for preset in PRESETS.values():
        settings = method.settings(preset.protocol, args.protocol)
        windows = f"{settings.slide_crop}/{settings.slide_stride}" if settings.slide_crop else "whole"
        own = method.class_file(preset.protocol, args.protocol)
        classes = str(own.relative_to(CLASSES_DIR)) if own else preset.benchmark.class_file
        folder = "(embedded)" if preset.sample else f"$NACLIP_DATA/{preset.folder}"
        print(
            f"{preset.key:<14} {classes:<26} {settings.short_side:>5} {windows:>8} {settings.logit_scale:>5g} "
            f"{settings.prob_threshold:>8} {str(preset.benchmark.reduce_zero_label):>9}  {folder}"
        )
    fixed = method.settings(None, args.protocol)
    own = ", ".join(f"{key} {value}" for key, value in fixed.params.to_dict().items()) or "none"
    print(
        f"everywhere: PAMR steps {fixed.pamr_steps}, area threshold {fixed.area_threshold} (VOC21: "
        f"{method.settings('voc21', args.protocol).area_threshold}), windows padded: {fixed.pad_windows}; "
        f"head {method.head}, "
        f"its own parameters: {own}"
    )
    return 0


STALE_COCO_OBJECT = (
    "warning: {count} of {total} COCO-Object masks hold 255 (unlabelled); they were made by an earlier naclip "
    "that kept it, but the published protocol scores unlabelled pixels as background (0). Regenerate them from "
    "the raw COCO-Stuff annotations: naclip data coco-object SRC {root}"
)


def run_check(args: argparse.Namespace) -> int:
    """Check every sample of a benchmark or folder dataset; print each problem; 1 when there is any."""
    dataset = folder_from_args(args) if args.benchmark == "folder" else open_benchmark(args.benchmark, args.data_root)
    problems = []
    unlabelled = 0  # COCO-Object masks still holding raw 255
    for index in tqdm(range(len(dataset)), desc=f"check {dataset.name}", unit="image"):
        image = dataset.items[index].image
        try:
            size = image_size(image)
            if min(size) < MIN_SIDE:
                raise BadSample(
                    f"{image}: image is {size[1]}x{size[0]} pixels; expected at least {MIN_SIDE}x{MIN_SIDE}"
                )
            try:  # decoded in full, as eval decodes it: corrupt data is found, not only bad headers
                size = load_image(image).shape[:2]
            except (OSError, ValueError) as error:
                raise BadSample(str(error)) from None
            mask = check_sample(dataset, index, size)
        except BadSample as error:
            problems.append(str(error))
            continue
        if dataset.name == "coco_object" and (mask == coco.UNLABELLED).any():
            unlabelled += 1
    unpaired = unpaired_masks(dataset)
    for problem in problems:
        print(problem)
    for mask, why in unpaired.items():
        print(f"{mask}: {why}; it is never scored")
    unread = sum(why != NO_IMAGE for why in unpaired.values())
    print(
        f"{dataset.name}: {len(dataset)} images under {dataset.root}, {len(problems)} with problems, "
        f"{len(unpaired) - unread} masks without an image, {unread} images not read for their suffix"
    )
    if unlabelled:
        print(STALE_COCO_OBJECT.format(count=unlabelled, total=len(dataset), root=dataset.root))
    return 1 if problems or unpaired else 0


def run_coco(args: argparse.Namespace) -> int:
    counts = coco.convert(args.src, args.dst, args.split or ["val2017"], args.target, workers=args.workers)
    for split, count in counts.items():
        print(f"{split}: wrote and verified {count} masks in {args.dst / 'annotations' / split}")
    return 0
