"""Gather the runs of one study that differ in swept parameters into one table and one figure.

A sweep run as separate runs (a shell loop of ``papermill ... -y "{sigmas: [3], run: s3}"``, or one parameter
file per value) gives one point per run. `gather` reads a table of every complete run of a study, adds the
parameters that differ between the runs as columns, and draws the score against the swept one: the run folder
``results/<study>/gathered/`` holds ``<table>.csv``, ``gathered.png``/``.svg`` and a ``run.json`` naming the
runs it comes from, like any run (random weights marked when any run had them).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

from naclip.io import environment, write_json
from naclip.workbook.layout import Study, Workbook, discover
from naclip.workbook.outputs import MARKER, RunOutputs, read_manifest, record_key
from naclip.workbook.params import RUN, closest
from naclip.workbook.runner import COMPLETE, recorded_state

GATHERED = "gathered"


def _value(value: Any) -> Any:
    """A parameter as a table cell: a one-value list (``sigmas: [3]``) as its value, other lists as text."""
    if isinstance(value, (list, tuple)):
        return value[0] if len(value) == 1 else str(list(value))
    return value


def _column(name: str, table: pd.DataFrame) -> str:
    """The table's own column for parameter `name` (``sigmas`` -> ``sigma``) when it has one, else `name`."""
    singular = name.removesuffix("s")
    return singular if singular != name and singular in table else name


def gather(
    workbook: Workbook, study: str, table: str = "results", x: str | None = None, runs: Sequence[str] = ()
) -> Path:
    """Gather the complete runs of `study` (or only `runs`) into ``<results>/<study>/gathered/``; its folder.

    `x`: the swept parameter on the figure's x axis (default: the only parameter that differs between the
    runs). ValueError, naming the study's folder, for fewer than two runs, a run without `table`, or an `x`
    that is not one of the parameters that differ.
    """
    studies = {s.name: s for s in discover(workbook.notebooks)}
    if study not in studies:
        raise ValueError(f"no study {study!r}{closest(study, list(studies))}")
    folder = workbook.results / study
    found = _complete(folder, studies[study], runs)
    if len(found) < 2:
        raise ValueError(
            f"{folder}: {len(found)} complete run(s) {sorted(found)}; gathering needs at least 2 (run a sweep, e.g. "
            f"one papermill run per value, each with its own -p run NAME)"
        )
    parameters = {name: record["parameters"] for name, record in found.items()}
    varying = sorted(
        {
            k
            for p in parameters.values()
            for k in p
            if k != RUN and len({str(q.get(k)) for q in parameters.values()}) > 1
        }
    )
    if not varying:
        raise ValueError(f"{folder}: the runs {sorted(found)} have the same parameters; nothing was swept")
    if x is None and len(varying) > 1:
        raise ValueError(f"{folder}: the runs differ in {', '.join(varying)}; pass --x NAME to say which was swept")
    x = x or varying[0]
    if x not in varying:
        raise ValueError(
            f"--x {x!r}: not a parameter that differs between the runs; expected one of: {', '.join(varying)}"
        )
    frames = []
    for name in found:
        path = folder / name / f"{table}.csv"
        if not path.is_file():
            raise ValueError(f"{path}: run {name!r} has no table {table!r}; expected every run to write it")
        frame = pd.read_csv(path).assign(run=name)
        for key in varying:
            frame[_column(key, frame)] = _value(parameters[name].get(key))
        frames.append(frame)
    data = pd.concat(frames, ignore_index=True)
    return _write(workbook, studies[study], data, _column(x, frames[0]), found, table)


def _complete(folder: Path, study: Study, runs: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The records of the complete runs in `folder` (only `runs` when given), by run name."""
    present = sorted(p for p in folder.glob("*") if p.is_dir() and p.name != GATHERED)
    for name in runs:
        if name not in {p.name for p in present}:
            raise ValueError(f"{folder}: no run {name!r}{closest(name, [p.name for p in present])}")
    found = {}
    for path in present:
        record, state = recorded_state(path, study)
        if (not runs or path.name in runs) and state.state == COMPLETE:
            found[path.name] = record
    return found


def _write(workbook: Workbook, study: Study, data: pd.DataFrame, x: str, found: dict, table: str) -> Path:
    from naclip.workbook import plots

    random = any(read_manifest(workbook.results / study.name / name)["random_weights"] for name in found)
    out = RunOutputs(study.name, GATHERED, workbook.results, model=False)
    out.weights_were(random, sorted({w for name in found for w in read_manifest(out.out_dir.parent / name)["weights"]}))
    out.table(data, table, f"{table} of the runs {', '.join(found)}, with the parameters that differ between them")
    if {"mIoU", "benchmark"} <= set(data) and pd.api.types.is_numeric_dtype(data[x]):
        several = "post-processing" in data and data["post-processing"].nunique() > 1
        style = "post-processing" if several else "benchmark"  # a marker on each run's point
        fig = plots.sweep_lines(
            data.sort_values(x),
            x=x,
            hue="benchmark",
            style=style,
            title=f"{study.title}: mIoU against {x}, {len(found)} runs gathered",
        )
        out.figure(fig, GATHERED, f"mIoU against {x} over the runs {', '.join(found)}")
        plt.close(fig)
    parameters = {RUN: GATHERED, "gathered_from": sorted(found), "table": table, "x": x}
    record = {
        "study": study.name,
        "run": GATHERED,
        "profile": None,
        "notebook": None,
        "parameters": parameters,
        "key": record_key(workbook.notebooks / study.notebook.name, parameters),
        "recorded_by": "naclip workbook gather",
        "random_weights": random,
        "provenance": environment(),
        "runs": {name: record.get("parameters") for name, record in found.items()},
    }
    write_json(record, out.out_dir / MARKER)
    return out.out_dir
