"""The published mIoU numbers (CLIP ViT-B/16 / openai, full validation sets) the studies are compared with.

One row per published method, keyed by the name of the method preset that reruns it (`naclip.methods`).
Each row was made under its authors' own protocol.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from naclip.benchmarks import BENCHMARKS as ALL

# Benchmark keys in the papers' column order, with their labels, and the validation images a published number
# covers.
BENCHMARKS = {key: benchmark.label for key, benchmark in ALL.items()}
IMAGES = {key: benchmark.images for key, benchmark in ALL.items()}
BACKBONE = ("ViT-B-16", "openai")


@dataclass(frozen=True)
class Published:
    """One published row: mIoU (%) per benchmark in `BENCHMARKS` order, and the average over the eight."""

    method: str  # the method preset's name
    title: str
    pamr: bool  # PAMR as the final post-processing
    source: str
    values: tuple[float, ...]
    average: float
    note: str = ""


ROWS: tuple[Published, ...] = (
    Published(
        "naclip",
        "NACLIP + PAMR (authors' code, v2)",
        True,
        "NACLIP README",
        (64.07, 34.99, 36.19, 83.03, 38.35, 25.69, 38.27, 19.05),
        42.46,
    ),
    Published(
        "naclip-nopamr",
        "NACLIP, no post-processing",
        False,
        "NACLIP paper, Table 1",
        (58.9, 32.2, 33.2, 79.7, 35.2, 23.3, 35.5, 17.4),
        39.4,
    ),
    Published(
        "sclip",
        "SCLIP (its own protocol, no PAMR)",
        False,
        "NACLIP paper, Table 1 (from SCLIP's paper)",
        (59.1, 30.4, 30.5, 80.4, 34.1, 22.4, 32.2, 16.1),
        38.2,
        "SCLIP's README reports a slightly different run: 59.63 / 31.74 / 33.52 / 81.54 / 34.46 / 22.77 / "
        "32.34 / 16.45",
    ),
    Published(
        "clearclip",
        "ClearCLIP (its own protocol)",
        False,
        "ResCLIP's table; the 5 no-background ones also ClearCLIP's README",
        (51.8, 32.6, 33.0, 80.9, 35.9, 23.9, 30.0, 16.7),
        38.1,
    ),
    Published(
        "maskclip",
        "MaskCLIP (SCLIP's re-run)",
        False,
        "ResCLIP's table (from SCLIP's paper)",
        (38.8, 23.6, 20.6, 74.9, 26.4, 16.4, 12.6, 9.8),
        27.9,
        "the re-run's settings are not published",
    ),
    Published(
        "resclip",
        "ResCLIP on NACLIP (no final PAMR)",
        False,
        "ResCLIP README figure",
        (61.1, 33.5, 35.0, 86.0, 36.8, 24.7, 35.9, 18.0),
        41.4,
        "its first pass uses PAMR internally; an independent reproduction got VOC20 82.3",
    ),
    Published(
        "scclip",
        "SC-CLIP",
        False,
        "secondary (a later paper's table); SC-CLIP's README has none",
        (64.6, 36.8, 37.7, 84.3, 40.1, 26.6, 41.0, 20.1),
        43.9,
    ),
)


def published() -> pd.DataFrame:
    """Tidy: one row per (method, benchmark) with the published mIoU in %; benchmark ``avg`` is the paper's mean."""
    rows = [
        {
            "method": row.method,
            "title": row.title,
            "pamr": row.pamr,
            "source": row.source,
            "benchmark": benchmark,
            "mIoU": miou,
        }
        for row in ROWS
        for benchmark, miou in [*zip(BENCHMARKS, row.values, strict=True), ("avg", row.average)]
    ]
    return pd.DataFrame(rows)
