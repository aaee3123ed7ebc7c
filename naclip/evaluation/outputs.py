"""What a run leaves on disk: prediction PNGs, the summary and per-class tables, provenance."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from naclip.datasets import SegDataset
from naclip.io import atomic_write, atomic_write_all, environment, json_bytes, remove_leftovers
from naclip.metric import scores
from naclip.viz import label_png

SUMMARY_CSV, PER_CLASS_CSV, PROVENANCE_JSON = "summary.csv", "per_class.csv", "provenance.json"
OUTPUTS = (SUMMARY_CSV, PER_CLASS_CSV, PROVENANCE_JSON)


@dataclass
class Run:
    """The outcome of one dataset: a confusion matrix per variant, counts, time, skipped images."""

    dataset: SegDataset
    variants: list[str]
    configs: list[dict[str, Any]]
    matrices: list[np.ndarray]
    scored: int  # images in the matrices, resumed ones included
    resumed: int
    seconds: float
    skipped: dict[int, str] = field(default_factory=dict)
    key: str = ""  # of the records (`records.run_key`)
    records: Path | None = None  # their folder, removed once the results are written
    unpaired_masks: list[str] = field(default_factory=list)
    gflops: float = float("nan")  # one prediction of the first image scored (every variant); NaN: none scored
    peak_memory_mib: float = float("nan")
    peak_memory_kind: str = ""


def save_prediction(labels: np.ndarray, path: Path, num_classes: int) -> str:
    """A label map as a PNG of class indices (`naclip.viz.label_png`), written atomically.

    Returns the digest of the file written (`file_digest`), which its record keeps.
    """
    data = label_png(labels, num_classes)
    atomic_write(path, data)
    return hashlib.sha256(data).hexdigest()


def file_digest(path: Path) -> str | None:
    """The SHA-256 of a file's bytes; None when it cannot be read."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def prediction_path(root: Path, dataset: str, variant: str, nest: tuple[bool, bool], name: str) -> Path:
    """<root>[/<dataset>][/<variant>]/<image name>.png; the sub-folders only when several are run."""
    by_dataset, by_variant = nest
    folder = root / dataset if by_dataset else root
    folder = folder / variant.replace(os.sep, "_") if by_variant else folder
    return folder / f"{name}.png"


def text(value: Any) -> Any:
    """Config values as CSV-friendly scalars (tuples as '8,16')."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return value


def tables(run: Run, world: int) -> tuple[list[dict], list[dict]]:
    """Tidy rows: one summary row per variant, one per-class row per (variant, class).

    images_per_s counts the images scored in this attempt; NaN when all were resumed (see n_resumed).
    """
    summary, per_class = [], []
    new = run.scored - run.resumed
    for variant, config, matrix in zip(run.variants, run.configs, run.matrices):
        result = scores(matrix)
        summary.append(
            {
                "benchmark": run.dataset.name,
                "variant": variant,
                "mIoU": 100 * result.miou,
                "aAcc": 100 * result.aacc,
                "mAcc": 100 * result.macc,
                "n_images": run.scored,
                "n_skipped": len(run.skipped),
                "n_resumed": run.resumed,
                "seconds": run.seconds,
                "images_per_s": new / run.seconds if new and run.seconds > 0 else float("nan"),
                "s_per_image": run.seconds / new if new else float("nan"),
                "gflops": run.gflops,
                "peak_memory_mib": run.peak_memory_mib,
                "peak_memory_kind": run.peak_memory_kind,
                "num_classes": run.dataset.num_classes,
                **{key: text(value) for key, value in config.items()},
                "world_size": world,
            }
        )
        for index, name in enumerate(run.dataset.class_names):
            per_class.append(
                {
                    "benchmark": run.dataset.name,
                    "variant": variant,
                    "class_index": index,
                    "class_name": name,
                    "IoU": 100 * result.iou[index],
                    "Acc": 100 * result.acc[index],
                    "gt_pixels": int(matrix[index].sum()),
                    "pred_pixels": int(matrix[:, index].sum()),
                    "random_weights": bool(config["random_weights"]),
                }
            )
    return summary, per_class


def provenance(runs: Sequence[Run], **facts: Any) -> dict[str, Any]:
    """The environment, `facts` about the whole run (device, method, ...) and, per dataset, what was scored."""
    return {
        **environment(),
        **facts,
        "random_weights": any(config["random_weights"] for run in runs for config in run.configs),
        "runs": [
            {
                "benchmark": run.dataset.name,
                "root": str(run.dataset.root),
                "n_images": run.scored,
                "n_resumed": run.resumed,
                "skipped": [
                    {"image": str(run.dataset.items[i].image), "reason": reason}
                    for i, reason in sorted(run.skipped.items())
                ],
                "unpaired_masks": run.unpaired_masks,
                "key": run.key,
                "variants": [{"name": v, "config": c} for v, c in zip(run.variants, run.configs)],
            }
            for run in runs
        ],
    }


def per_class_table(per_class: pd.DataFrame) -> str:
    """The per-class IoU and accuracy of each benchmark (and variant, when there are several) as boxed text
    tables, as mmsegmentation's ``tools/test.py`` prints them; a class absent from the ground truth and the
    predictions shows nan."""
    blocks, several = [], per_class.variant.nunique() > 1
    for (benchmark, variant), rows in per_class.groupby(["benchmark", "variant"], sort=False):
        cells = [(str(r.class_name), f"{r.IoU:.2f}", f"{r.Acc:.2f}") for r in rows.itertuples()]
        widths = [max(len(c[i]) for c in [("Class", "IoU", "Acc"), *cells]) for i in range(3)]
        rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

        def line(cell: tuple[str, str, str], widths: list[int] = widths) -> str:
            name, *numbers = (f" {c:<{w}} " if i == 0 else f" {c:>{w}} " for i, (c, w) in enumerate(zip(cell, widths)))
            return "|" + "|".join([name, *numbers]) + "|"

        title = f"per-class results: {benchmark}" + (f" ({variant})" if several else "")
        blocks.append("\n".join([title, rule, line(("Class", "IoU", "Acc")), rule, *map(line, cells), rule]))
    return "\n\n".join(blocks)


def write_results(out: Path, summary: pd.DataFrame, per_class: pd.DataFrame, facts: dict[str, Any]) -> None:
    """summary.csv, per_class.csv and provenance.json in `out`, all written before any replaces the old one."""
    for name in OUTPUTS:  # what an earlier run killed while writing them left
        remove_leftovers(out, name)
    atomic_write_all(
        {
            out / SUMMARY_CSV: summary.to_csv(index=False).encode(),
            out / PER_CLASS_CSV: per_class.to_csv(index=False).encode(),
            out / PROVENANCE_JSON: json_bytes(facts),
        }
    )
