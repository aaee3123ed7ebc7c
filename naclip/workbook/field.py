"""The field's table regenerated: every registered method on every benchmark under its authors' protocol and the
shared one, beside what was printed for it (its paper, its README where it differs, other papers' re-runs and
citations), each average recomputed from its row, and what each run cost.

The notebook `notebooks/field.ipynb` glues these together; each function here has a test.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from naclip.benchmarks import PROTOCOLS, TABLE, check_protocol
from naclip.datasets import get_preset
from naclip.methods import METHODS
from naclip.workbook.published import AVERAGE_TOLERANCE, REPORTS, Report
from naclip.workbook.studies import evaluate_methods

MEASURED = {"authors": "measured, authors' protocol", "shared": "measured, shared protocol"}
COSTS = ["s_per_image", "images_per_s", "peak_memory_mib", "gflops"]


def registered_methods(methods: Sequence[str] | None = None) -> list[str]:
    """`methods`, or every registered method preset (those other packages add included) when None."""
    return list(METHODS) if methods is None else list(methods)


def evaluate_field(
    methods: Sequence[str] | None,
    benchmarks: Sequence[str],
    protocols: Sequence[str] = PROTOCOLS,
    out: str | os.PathLike | None = None,
    **options: Any,
) -> pd.DataFrame:
    """Every method of `methods` (None: every registered one) on `benchmarks` under each of `protocols`.

    One `evaluate_methods` per protocol, in its own resumable folder ``<out>/<protocol>``; `options` go to
    `naclip.evaluation.evaluate` (data_root, limit, model, pretrained, device, class_names, ...). The rows
    carry a ``protocol`` column (authors / shared); ``attrs["per_class"]`` holds every per-class row.
    """
    frames, per_class = [], []
    for protocol in protocols:
        check_protocol(protocol)
        folder = None if out is None else Path(out) / protocol
        frame = evaluate_methods(registered_methods(methods), benchmarks, out=folder, protocol=protocol, **options)
        per_class.append(frame.attrs.pop("per_class").assign(protocol=protocol))
        frame.attrs = {}
        frames.append(frame)
    result = pd.concat(frames, ignore_index=True)
    result.attrs = {"per_class": pd.concat(per_class, ignore_index=True)}
    return result


def recomputed_average(values: Sequence[float]) -> float:
    """The mean of the eight benchmarks' numbers; NaN unless all eight are there."""
    return float(np.mean(values)) if len(values) == len(TABLE) and not np.isnan(values).any() else math.nan


def _columns(measured: pd.DataFrame) -> list[str]:
    """The eight benchmarks, then any other benchmark run (the large-vocabulary pair), by key."""
    others = [key for key in dict.fromkeys(measured["key"]) if key not in TABLE]
    return [*TABLE, *others]


def _reports_shown(reports: list[Report]) -> list[tuple[str, Report]]:
    """A method's printed rows as the field's table shows them: the paper's, the README's where its numbers
    differ from the paper's (or there is no paper row), then the re-runs and citations."""
    papers = [r for r in reports if r.kind == "paper"]
    shown = [("paper", r) for r in papers]
    for readme in (r for r in reports if r.kind == "readme"):
        if not any(np.allclose(readme.values, p.values, equal_nan=True) for p in papers):
            shown.append(("README", readme))
    shown += [
        (f"{'re-run' if r.kind == 'rerun' else 'cited'} by {r.by}", r) for r in reports if r.kind in ("rerun", "cited")
    ]
    return shown


def field_table(results: pd.DataFrame) -> pd.DataFrame:
    """One row per method and source: our runs (a row per protocol, with their costs), then what was printed.

    `results` is `evaluate_field` output. Columns: the benchmarks by key (mIoU %), ``avg (printed)`` (as the
    source printed it), ``avg (recomputed)`` (the mean of the row's eight numbers, NaN unless all eight are
    there), ``avg differs`` (printed and recomputed more than `AVERAGE_TOLERANCE` apart), ``images`` (what our
    runs scored: samples are not the published sets), the cost columns (our runs: means over benchmarks, the
    peak the largest) and ``source``.
    """
    measured = results.assign(key=[get_preset(name).protocol for name in results["benchmark"]])
    columns = _columns(measured)
    rows = []
    for method in dict.fromkeys(measured["method"]):
        mine = measured[measured["method"] == method]
        for protocol in dict.fromkeys(mine["protocol"]):
            run = mine[mine["protocol"] == protocol]
            scores = run.groupby("key")["mIoU"].mean()
            values = [scores.get(key, math.nan) for key in TABLE]
            rows.append(
                {
                    "method": method,
                    "row": MEASURED[protocol],
                    **{key: scores.get(key, math.nan) for key in columns},
                    "avg (printed)": math.nan,
                    "avg (recomputed)": recomputed_average(values),
                    "avg differs": False,
                    "images": ", ".join(f"{b}: {int(n)}" for b, n in zip(run["benchmark"], run["n_images"])),
                    "s_per_image": run["s_per_image"].mean(),
                    "images_per_s": run["images_per_s"].mean(),
                    "peak_memory_mib": run["peak_memory_mib"].max(),
                    "gflops": run["gflops"].mean(),
                    "source": "this run",
                }
            )
        for label, report in _reports_shown([r for r in REPORTS if r.method == method]):
            rows.append(
                {
                    "method": method,
                    "row": label,
                    **dict(zip(TABLE, report.values, strict=True)),
                    "avg (printed)": report.average,
                    "avg (recomputed)": report.recomputed,
                    "avg differs": abs(report.average - report.recomputed) > AVERAGE_TOLERANCE + 1e-9,
                    "images": "full validation sets",
                    **dict.fromkeys(COSTS, math.nan),
                    "source": report.source,
                }
            )
    order = ["method", "row", *columns, "avg (printed)", "avg (recomputed)", "avg differs", "images", *COSTS, "source"]
    return pd.DataFrame(rows, columns=order)


def cost_table(results: pd.DataFrame) -> pd.DataFrame:
    """What each run cost, as the field reports it: per method, protocol and benchmark, seconds per image and
    images per second, peak memory (and what it measures) and GFLOPs per image (the first image's prediction)."""
    keep = ["method", "protocol", "benchmark", "n_images", *COSTS, "peak_memory_kind"]
    return results[keep].reset_index(drop=True)


def shared_fields(results: pd.DataFrame, fields: Sequence[str]) -> pd.DataFrame:
    """Per benchmark and protocol, how many distinct values each protocol field took across the methods: all
    ones under the shared protocol (the check that it is one protocol), more under the authors'."""
    present = [name for name in fields if name in results.columns]
    counts = results.groupby(["protocol", "benchmark"], sort=False)[present].nunique(dropna=False)
    return counts.reset_index()
