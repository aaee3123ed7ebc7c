"""`naclip workbook run` and `list`: resolve studies and a profile into runs, show their states, execute them,
rebuild the index."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from naclip.workbook.index import write_index
from naclip.workbook.layout import Workbook, discover
from naclip.workbook.params import DEFAULT_PROFILE, FALLBACK_PROFILE, Run, plan, profiles
from naclip.workbook.runner import (
    COMPLETE,
    Executor,
    Report,
    execute_runs,
    notebook_kernel,
    papermill_executor,
    recorded_state,
    run_dir,
    run_state,
)


def weights_error(model: str, pretrained: str | None) -> str | None:
    """Why `model`/`pretrained` weights cannot be loaded here (None when they can)."""
    from naclip.backbone import load_clip

    try:
        load_clip(model, pretrained)
    except (RuntimeError, OSError, ValueError) as error:
        return str(error)
    return None


@dataclass
class Plan:
    """The runs an invocation would make, and the banner and note when it fell back to random weights."""

    workbook: Workbook
    runs: list[Run]
    banner: str | None = None
    note: str | None = None


def _weights(runs: Sequence[Run]) -> list[tuple[str, str | None]]:
    pairs = {(r.parameters["model"], r.parameters["pretrained"]) for r in runs if "pretrained" in r.parameters}
    return sorted(pairs, key=str)


def resolve(
    targets: Sequence[str] = (),
    profile: str | None = None,
    workbook: Workbook | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Plan:
    """The runs of `targets` under `profile` with `overrides` (model, pretrained, device).

    Without `profile` the default profile runs (the notebooks' defaults: real weights on the embedded samples);
    when those weights cannot be loaded (offline, nothing cached), the fallback profile runs instead, under a
    banner. Weights named on the command line must load: their error is raised at once.
    """
    workbook = workbook or Workbook.at()
    overrides = dict(overrides or {})
    runs = plan(workbook, targets, profile or DEFAULT_PROFILE, overrides)
    named = bool({"model", "pretrained"} & set(overrides))
    if profile is not None and not named:
        return Plan(workbook, runs)
    for model, pretrained in _weights(runs):
        error = pretrained is not None and weights_error(model, pretrained)
        if error and named:
            raise RuntimeError(f"{model}/{pretrained}: {error}")
        if error:
            banner = (
                f"RANDOM WEIGHTS — not a result: the {model}/{pretrained} weights could not be loaded, so the "
                f"'{FALLBACK_PROFILE}' profile ran instead (tiny random model). Reason: {error}"
            )
            note = f"Ran the '{FALLBACK_PROFILE}' profile: the {model}/{pretrained} weights could not be loaded."
            return Plan(workbook, plan(workbook, targets, FALLBACK_PROFILE, overrides), banner, note)
    return Plan(workbook, runs)


def regenerate(
    targets: Sequence[str] = (),
    profile: str | None = None,
    workbook: Workbook | None = None,
    force: bool = False,
    overrides: Mapping[str, Any] | None = None,
    jobs: int = 1,
    executor: Executor | None = None,
    log: Callable[[str], None] = print,
) -> Report:
    """Run the studies that are not complete (all with `force`), `jobs` notebooks at a time, and rebuild
    ``index.md`` and ``index.html``."""
    chosen = resolve(targets, profile, workbook, overrides)
    if chosen.banner:
        print(f"\n{'!' * 100}\n{chosen.banner}\n{'!' * 100}\n", file=sys.stderr)
    chosen.workbook.results.mkdir(parents=True, exist_ok=True)
    with notebook_kernel() as kernel:
        execute = executor or papermill_executor(kernel, lines=jobs > 1)
        report = execute_runs(chosen.runs, chosen.workbook, execute, force=force, note=chosen.note, jobs=jobs, log=log)
    for index in write_index(chosen.workbook, chosen.banner):
        log(f"index: {index}")
    return report


def preview(chosen: Plan, force: bool = False) -> list[str]:
    """What `regenerate` would do with `chosen`, one line per run (and its changed parameters)."""
    lines = [f"> {chosen.banner}"] if chosen.banner else []
    for run in chosen.runs:
        state = run_state(run_dir(chosen.workbook.results, run), run)
        action = "skip" if state.state == COMPLETE and not force else "run "
        source = run.source or f"{run.study.notebook.name} defaults"
        lines.append(f"{action} {run.study.name}/{run.name}: {state}; parameters from {source}")
        if run.changed:
            lines.append("       " + ", ".join(f"{k}={v!r}" for k, v in run.changed.items()))
    return lines


def listing(workbook: Workbook, profile: str | None = None) -> list[str]:
    """Every study with its runs (each profile's, or `profile`'s, and any other run folder) and their states."""
    names = [profile] if profile else profiles(workbook.params)
    planned: dict[str, list[Run]] = {}
    for name in names:
        for run in plan(workbook, (), name):
            planned.setdefault(run.study.name, []).append(run)
    lines = []
    for study in discover(workbook.notebooks):
        lines.append(f"{study.name}: {study.title}")
        runs = planned.get(study.name, [])
        for run in runs:
            lines.append(f"  {run.name:<28} {run_state(run_dir(workbook.results, run), run)}")
        if profile is None:
            known = {r.name for r in runs}
            folder = workbook.results / study.name
            for other in sorted(p for p in folder.glob("*") if p.is_dir() and p.name not in known):
                lines.append(f"  {other.name:<28} {recorded_state(other, study)[1]}")
    return lines
