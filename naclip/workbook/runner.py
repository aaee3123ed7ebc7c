"""Execute study runs with papermill: skip completed runs, keep going past failures, record provenance.

A run folder ``results/<study>/<run>/`` holds the executed notebook, the tables and figures the notebook
wrote, and, written last and atomically, ``run.json``: the completion marker with the configuration and
provenance. A run counts as complete only when ``run.json`` exists and its key (a digest of the notebook's text
and the parameters) matches, so an interrupted run, or one whose notebook or parameters changed, is redone,
and nothing else is. A failed run leaves ``failed.json`` with the error instead.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from naclip.io import environment, write_json
from naclip.workbook.outputs import MANIFEST
from naclip.workbook.params import Run

MARKER = "run.json"
FAILED = "failed.json"
KERNEL_NAME = "naclip-workbook"

Executor = Callable[[Path, Path, dict[str, Any], Path], None]


@dataclass
class Report:
    """What one invocation of the runner did."""

    executed: list[Run] = field(default_factory=list)
    skipped: list[Run] = field(default_factory=list)
    failed: list[tuple[Run, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


def run_dir(results: Path, run: Run) -> Path:
    """Where a run's outputs go."""
    return results / run.study.name / run.name


def is_complete(folder: Path, key: str) -> bool:
    """True when `folder` holds a finished run whose key (notebook and parameters) is `key`."""
    marker = folder / MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("key") == key
    except json.JSONDecodeError:
        return False


@contextmanager
def notebook_kernel() -> Iterator[str]:
    """A Jupyter kernel spec that runs this very interpreter, visible for the duration of the block.

    Named kernels (``python3``) may point at another environment on a user's machine; this one cannot.
    """
    with tempfile.TemporaryDirectory(prefix="naclip-kernel-") as tmp:
        spec_dir = Path(tmp, "kernels", KERNEL_NAME)
        spec_dir.mkdir(parents=True)
        spec = {
            # log_level: the kernel's start-up notices are not the study's output
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                     "--IPKernelApp.log_level=CRITICAL"],
            "display_name": "naclip workbook",
            "language": "python",
        }
        (spec_dir / "kernel.json").write_text(json.dumps(spec))
        previous = os.environ.get("JUPYTER_PATH")
        os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in (tmp, previous) if p)
        try:
            yield KERNEL_NAME
        finally:
            if previous is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = previous


def papermill_executor(kernel_name: str) -> Executor:
    """An executor running a notebook with papermill on `kernel_name`."""

    def execute(notebook: Path, output: Path, parameters: dict[str, Any], cwd: Path) -> None:
        import papermill

        papermill.execute_notebook(
            str(notebook),
            str(output),
            parameters=parameters,
            kernel_name=kernel_name,
            cwd=str(cwd),
            progress_bar=False,
            log_output=False,
        )

    return execute


def _reset(folder: Path, force: bool) -> None:
    """Prepare a run folder: emptied with `force`; otherwise only the run's records go, so that evaluations
    a notebook keeps in its folder (``naclip.evaluation.evaluate(out=...)``) resume where they stopped."""
    if force:
        shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    for name in (MARKER, FAILED, MANIFEST):
        (folder / name).unlink(missing_ok=True)


def _error_text(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text if len(text) < 4000 else text[-4000:]


def execute_runs(
    runs: Sequence[Run],
    results: Path,
    notebooks: Path,
    execute: Executor,
    *,
    force: bool = False,
    profile: str = "paper",
    note: str | None = None,
    log: Callable[[str], None] = print,
) -> Report:
    """Execute every run not already complete (all of them with `force`); failures are recorded, not raised."""
    report = Report()
    env = environment()
    for number, run in enumerate(runs, 1):
        folder = run_dir(results, run)
        label = f"[{number}/{len(runs)}] {run.study.name}/{run.name}"
        notebook = notebooks / run.study.notebook
        if not notebook.is_file():
            report.failed.append((run, f"notebook {notebook} does not exist"))
            log(f"{label}: FAILED, no notebook {notebook}")
            continue
        key = run.key(notebook)
        if not force and is_complete(folder, key):
            report.skipped.append(run)
            log(f"{label}: complete, skipped")
            continue
        _reset(folder, force)
        record = {
            "study": run.study.name,
            "title": run.study.title,
            "run": run.name,
            "notebook": run.study.notebook,
            "parameters": run.parameters,
            "key": key,
            "random_weights": run.random_weights,
            "profile": profile,
            "note": note,
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "provenance": env,
        }
        parameters = {**run.parameters, "out_dir": str(folder.resolve()), "random_weights": run.random_weights}
        log(f"{label}: running {run.study.notebook}")
        start = time.perf_counter()
        try:
            execute(notebook, folder / notebook.name, parameters, notebooks)
        except Exception as error:  # noqa: BLE001 - any notebook error is reported, and the others still run
            record["error"] = _error_text(error)
            record["traceback"] = traceback.format_exc(limit=5)
            write_json(record, folder / FAILED)
            report.failed.append((run, record["error"]))
            log(f"{label}: FAILED after {time.perf_counter() - start:.1f}s")
            continue
        record["seconds"] = round(time.perf_counter() - start, 2)
        write_json(record, folder / MARKER)
        report.executed.append(run)
        log(f"{label}: done in {record['seconds']:.1f}s")
    return report
