"""The published mIoU numbers (CLIP ViT-B/16) that the studies are compared with, as a tidy table."""

from __future__ import annotations

import pandas as pd

# Benchmark keys in the paper's column order, with the labels the paper uses.
BENCHMARKS = {
    "voc21": "VOC21",
    "context60": "PC60",
    "coco_object": "C-Obj",
    "voc20": "VOC20",
    "context59": "PC59",
    "coco_stuff": "C-Stf",
    "cityscapes": "City",
    "ade20k": "ADE",
}

# (method, with PAMR, source, mIoU per benchmark in BENCHMARKS order, average over the eight)
_ROWS: list[tuple[str, bool, str, list[float | None], float]] = [
    ("NACLIP", True, "NACLIP authors' code (v2)", [64.07, 34.99, 36.19, 83.03, 38.35, 25.69, 38.27, 19.05], 42.46),
    ("NACLIP", False, "NACLIP paper", [58.9, 32.2, 33.2, 79.7, 35.2, 23.3, 35.5, 17.4], 39.4),
    ("SCLIP", False, "NACLIP paper", [59.1, 30.4, 30.5, 80.4, 34.1, 22.4, 32.2, 16.1], 38.2),
    ("ClearCLIP", False, "NACLIP paper", [None] * 8, 38.1),
]


def published() -> pd.DataFrame:
    """One row per (method, pamr, source, benchmark) with the published mIoU in %; benchmark ``avg`` is the mean."""
    rows = []
    for method, pamr, source, values, average in _ROWS:
        for benchmark, miou in [*zip(BENCHMARKS, values, strict=True), ("avg", average)]:
            if miou is not None:
                rows.append({"method": method, "pamr": pamr, "source": source, "benchmark": benchmark, "mIoU": miou})
    return pd.DataFrame(rows)
