"""COCO-Object and COCO-Stuff label masks from the raw COCO-Stuff 164k annotations.

A raw COCO-Stuff annotation PNG holds COCO category id - 1 per pixel: 0..90 are things (80 used
ids), 91..181 stuff, 255 unlabelled. COCO-Object (`naclip data coco-object SRC DST`) keeps the 80
things as 1..80 in id order and folds every stuff class and the unlabelled pixels into 0
(background), as the authors' cvt_coco_object.py does. COCO-Stuff (`naclip data coco-stuff SRC DST`,
what mmsegmentation's converter writes) numbers the 171 used ids 0..170 in id order and keeps 255
(ignored).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

# COCO category ids 1..90 that no annotation uses; the other 80 are the thing classes.
UNUSED_THING_IDS = frozenset({12, 26, 29, 30, 45, 66, 68, 69, 71, 83})
RAW_THINGS = [cat_id - 1 for cat_id in range(1, 91) if cat_id not in UNUSED_THING_IDS]
RAW_STUFF = list(range(91, 182))
UNLABELLED = 255
INVALID = -1


def _table(targets: dict[int, int], unlabelled: int) -> np.ndarray:
    """(256,) int16 map from raw values; INVALID where undefined, raw 255 (unlabelled) to `unlabelled`."""
    table = np.full(256, INVALID, dtype=np.int16)
    table[list(targets)] = list(targets.values())
    table[UNLABELLED] = unlabelled
    return table


# The target of each preparation: (lookup table, suffix of the written masks).
TARGETS = {
    "coco_object": (
        _table({**{raw: i + 1 for i, raw in enumerate(RAW_THINGS)}, **dict.fromkeys(RAW_STUFF, 0)}, unlabelled=0),
        "_instanceTrainIds.png",
    ),
    "coco_stuff": (
        _table({raw: i for i, raw in enumerate(RAW_THINGS + RAW_STUFF)}, unlabelled=UNLABELLED),
        "_labelTrainIds.png",
    ),
}


def convert_mask(raw: np.ndarray, source: str | Path = "mask", target: str = "coco_object") -> np.ndarray:
    """A COCO-Object (or COCO-Stuff) label map (uint8) from a raw one; ValueError on undefined values."""
    mapped = TARGETS[target][0][raw]
    if (mapped == INVALID).any():
        bad = sorted(int(v) for v in np.unique(raw[mapped == INVALID]))[:10]
        raise ValueError(f"{source}: values {bad} are not COCO-Stuff labels; expected 0..181 (category id - 1) or 255")
    return mapped.astype(np.uint8)


def _read_raw(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        if image.mode not in ("L", "P"):
            raise ValueError(f"{path}: mode {image.mode}; expected a single-channel COCO-Stuff label PNG")
        return np.asarray(image)


def _convert_one(job: tuple[Path, Path, str]) -> None:
    source, output, target = job
    converted = convert_mask(_read_raw(source), source, target)
    temporary = output.with_name(output.name + ".tmp")
    Image.fromarray(converted, mode="L").save(temporary, format="PNG")
    os.replace(temporary, output)


def _verify_one(job: tuple[Path, Path, str]) -> None:
    source, output, target = job
    if not output.is_file():
        raise ValueError(f"{output}: missing after conversion of {source}")
    if not np.array_equal(_read_raw(output), convert_mask(_read_raw(source), source, target)):
        raise ValueError(f"{output}: content differs from the conversion of {source}")


def raw_masks(src_masks: Path) -> list[Path]:
    """The raw annotation PNGs of a COCO-Stuff split folder (derived *TrainIds.png files excluded)."""
    return sorted(p for p in src_masks.glob("*.png") if "TrainIds" not in p.name)


def _run(function, jobs: list[tuple[Path, Path, str]], workers: int, desc: str, progress: bool) -> None:
    bar = tqdm(total=len(jobs), desc=desc, unit="mask", disable=not progress)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            for _ in pool.map(function, jobs, chunksize=16):
                bar.update()
    else:
        for job in jobs:
            function(job)
            bar.update()
    bar.close()


def convert(
    src: str | Path,
    dst: str | Path,
    splits: Iterable[str] = ("val2017",),
    target: str = "coco_object",
    workers: int = 0,
    progress: bool = True,
) -> dict[str, int]:
    """Write DST/annotations/<split>/*<suffix> from SRC/annotations/<split>/*.png, then verify them.

    `target` is `coco_object` (suffix _instanceTrainIds.png) or `coco_stuff` (_labelTrainIds.png).
    Every written file is read back and compared with the conversion of its source. When DST is not
    SRC, DST/images is made a symbolic link to SRC/images so DST is a complete COCO-Object root.
    Returns the number of masks per split.
    """
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; expected one of {', '.join(TARGETS)}")
    suffix = TARGETS[target][1]
    src, dst = Path(src).expanduser().resolve(), Path(dst).expanduser().resolve()
    counts = {}
    for split in splits:
        src_masks = src / "annotations" / split
        if not src_masks.is_dir():
            raise FileNotFoundError(
                f"missing {src_masks}; expected the COCO-Stuff 164k layout under {src}:\n"
                f"  images/{split}/*.jpg\n  annotations/{split}/*.png (raw stuffthingmaps)"
            )
        sources = raw_masks(src_masks)
        if not sources:
            raise ValueError(f"no raw annotation PNGs in {src_masks}")
        dst_masks = dst / "annotations" / split
        dst_masks.mkdir(parents=True, exist_ok=True)
        jobs = [(source, dst_masks / f"{source.stem}{suffix}", target) for source in sources]
        _run(_convert_one, jobs, workers, f"convert {split}", progress)
        _run(_verify_one, jobs, workers, f"verify {split}", progress)
        counts[split] = len(jobs)
    images = dst / "images"
    if dst != src and not images.exists() and (src / "images").is_dir():
        images.symlink_to(src / "images", target_is_directory=True)
    return counts
