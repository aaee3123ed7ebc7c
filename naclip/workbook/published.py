"""The published mIoU numbers (CLIP ViT-B/16 / openai, full validation sets) the studies are compared with.

They live in one data file, `naclip/resources/published.yaml`, keyed by the name of the method preset that
reruns them (`naclip.methods`), each report with its source: the method's paper, its README, another paper's
re-run of its code, or another paper's table quoting it. `ROWS` are the primary reports (one per method, made
under its authors' own protocol), the rows the main study compares with; `REPORTS` every report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from naclip.benchmarks import BENCHMARKS as ALL
from naclip.benchmarks import RESOURCES, TABLE

DATA_FILE = RESOURCES / "published.yaml"
# The field's eight benchmark keys in the papers' column order, with their labels, and the validation images a
# published number covers.
BENCHMARKS = {key: ALL.get(key).label for key in TABLE}
IMAGES = {key: ALL.get(key).images for key in TABLE}
BACKBONE = ("ViT-B-16", "openai")
KINDS = ("paper", "readme", "rerun", "cited")
AVERAGE_TOLERANCE = 0.1  # a printed average further than this from its row's mean is flagged


@dataclass(frozen=True)
class Report:
    """One printed row of mIoU (%) for a method: per benchmark in `BENCHMARKS` order (NaN: not printed), and the
    average as printed (NaN: none), with who printed it and where."""

    method: str  # the method preset's name
    title: str
    pamr: bool  # PAMR as the final post-processing
    kind: str  # one of KINDS
    by: str
    source: str
    values: tuple[float, ...]
    average: float
    primary: bool = False
    note: str = ""

    @property
    def recomputed(self) -> float:
        """The mean of the eight per-benchmark numbers; NaN unless all eight were printed."""
        if any(math.isnan(v) for v in self.values):
            return math.nan
        return sum(self.values) / len(self.values)

    @property
    def average_differs(self) -> bool:
        """Whether the printed average is more than `AVERAGE_TOLERANCE` from the recomputed one."""
        return abs(self.average - self.recomputed) > AVERAGE_TOLERANCE + 1e-9  # NaN on either side: False


Published = Report  # a row the studies compare with (kept name)


def _number(value: float | None) -> float:
    return math.nan if value is None else float(value)


def load(path: str | Path = DATA_FILE) -> tuple[Report, ...]:
    """Every report of the data file at `path`; ValueError naming the method for a malformed entry."""
    reports = []
    for method, entry in yaml.safe_load(Path(path).read_text()).items():
        primaries = 0
        for report in entry["reports"]:
            values = tuple(_number(v) for v in report["values"])
            if len(values) != len(BENCHMARKS) or report["kind"] not in KINDS or not str(report.get("source", "")):
                raise ValueError(
                    f"{path}: a report of {method!r} needs {len(BENCHMARKS)} values (null where not printed), a kind "
                    f"among {', '.join(KINDS)} and a source"
                )
            primaries += bool(report.get("primary"))
            reports.append(
                Report(
                    method,
                    entry["title"],
                    bool(entry["pamr"]),
                    report["kind"],
                    report["by"],
                    report["source"],
                    values,
                    _number(report.get("average")),
                    bool(report.get("primary")),
                    entry.get("note", ""),
                )
            )
        if primaries > 1:
            raise ValueError(f"{path}: {method!r} has {primaries} primary reports; expected at most one")
    return tuple(reports)


REPORTS: tuple[Report, ...] = load()
ROWS: tuple[Report, ...] = tuple(report for report in REPORTS if report.primary)


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


def reports_table() -> pd.DataFrame:
    """Every report as a row: its numbers per benchmark, the printed and the recomputed average, and a flag where
    the two differ by more than `AVERAGE_TOLERANCE`."""
    return pd.DataFrame(
        [
            {
                "method": r.method,
                "kind": r.kind,
                "by": r.by,
                "primary": r.primary,
                **dict(zip(BENCHMARKS, r.values, strict=True)),
                "avg (printed)": r.average,
                "avg (recomputed)": r.recomputed,
                "avg differs": r.average_differs,
                "source": r.source,
            }
            for r in REPORTS
        ]
    )
