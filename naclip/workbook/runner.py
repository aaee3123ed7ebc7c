"""Execute study runs with papermill: skip complete runs, keep going past failures, record what made each run.

A run folder ``results/<study>/<run>/`` holds ``parameters.yaml`` (every parameter of the run, a file
``papermill -f`` reads), the executed notebook, the tables and figures the notebook wrote, and, written last,
``run.json``: the completion record. A run is *complete* when ``run.json`` exists and the notebook, the
parameters, naclip's version and naclip's code (a digest of the installed package) are those that made it;
*stale* when one of them changed (or the folder holds outputs but no record: interrupted);
*failed* when it left ``failed.json``; *missing* otherwise. Only complete runs are skipped.

While a notebook runs, its progress bars (tqdm's notebook widgets) are mirrored as text on the console.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import Any, TextIO

import yaml

from naclip.io import environment, write_json
from naclip.workbook.layout import ROOT_ENV, Study, Workbook
from naclip.workbook.outputs import FAILED, MANIFEST, MARKER, PARAMETERS, read_manifest, record_key
from naclip.workbook.params import RESULTS_DIR, Run

KERNEL_NAME = "naclip-workbook"
COMPLETE, STALE, FAILED_STATE, MISSING = "complete", "stale", "failed", "missing"

Executor = Callable[[Path, Path, dict[str, Any], Path], None]


def run_key(run: Run) -> dict[str, Any]:
    """What a complete run must still match: its notebook, its parameters, naclip's version and code."""
    return record_key(run.study.notebook, run.parameters)


@dataclass(frozen=True)
class State:
    """A run's state (complete, stale, failed, missing) and why."""

    state: str
    reason: str = ""

    def __str__(self) -> str:
        return f"{self.state} ({self.reason})" if self.reason else self.state


def _changed(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys)


def run_state(folder: Path, run: Run) -> State:
    """The state of `run` given what its folder holds."""
    if (folder / MARKER).is_file():
        try:
            key = json.loads((folder / MARKER).read_text()).get("key", {})
        except json.JSONDecodeError:
            return State(STALE, "unreadable run record")
        now = run_key(run)
        if key.get("notebook") is None:
            return State(STALE, "recorded outside a workbook: the notebook that made it is unknown")
        if key.get("notebook") != now["notebook"]:
            return State(STALE, "the notebook changed")
        if key.get("parameters") != now["parameters"]:
            return State(STALE, f"parameters changed: {_changed(key.get('parameters') or {}, now['parameters'])}")
        if key.get("naclip_version") != now["naclip_version"]:
            return State(STALE, f"naclip {key.get('naclip_version')} -> {now['naclip_version']}")
        if key.get("code") != now["code"]:
            return State(STALE, "naclip's code changed")
        return State(COMPLETE)
    if (folder / FAILED).is_file():
        try:
            error = json.loads((folder / FAILED).read_text()).get("error", "")
        except json.JSONDecodeError:
            error = ""
        return State(FAILED_STATE, error.strip().splitlines()[-1] if error.strip() else "")
    if (folder / MANIFEST).is_file():
        return State(STALE, "outputs without a run record: interrupted before its last cell")
    return State(MISSING)


def recorded_state(folder: Path, study: Study) -> tuple[dict[str, Any], State]:
    """A run folder's record (``run.json`` or ``failed.json``; empty without one) and its state, the parameters
    being those it recorded: for folders no profile makes, and for the index."""
    record: dict[str, Any] = {}
    for name in (MARKER, FAILED):
        if (folder / name).is_file():
            with contextlib.suppress(json.JSONDecodeError):
                record = json.loads((folder / name).read_text())
            break
    parameters = record.get("key", {}).get("parameters") or {}
    return record, run_state(folder, Run(study, folder.name, record.get("profile", ""), parameters))


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


def parameters_file(run: Run, workbook: Workbook) -> dict[str, Any]:
    """Every parameter of `run` as papermill gets it: results_dir relative to the workbook when inside it."""
    results = workbook.results
    value = results.relative_to(workbook.root).as_posix() if results.is_relative_to(workbook.root) else str(results)
    return {**run.parameters, RESULTS_DIR: value}


# -- progress on the console -----------------------------------------------------------------------------


class ConsoleBars:
    """Mirrors the kernel's tqdm notebook bars as text lines on a console stream.

    tqdm's notebook bar is an ipywidgets box of [description HTML, FloatProgress, counts HTML]; the kernel
    sends every change of those widgets to the client, which hands the messages to `message`. A line is
    written when the counts change (at most every `interval` seconds, every 10 s when the stream is not a
    terminal), and once more when the bar is full.
    """

    def __init__(self, stream: TextIO, label: str = "", lines: bool = False, interval: float = 0.5) -> None:
        self.stream = stream
        self.label = f"{label}: " if label else ""
        self.tty = stream.isatty() and not lines  # one line rewritten in place; else a line per update
        self.interval = interval if self.tty else 10.0
        self.models: dict[str, dict[str, Any]] = {}
        self.shown: dict[str, tuple[float, str]] = {}  # bar id -> (time, text) last written
        self.done: set[str] = set()

    def message(self, msg: dict[str, Any]) -> None:
        """Take one comm_open / comm_msg message of the kernel."""
        content = msg.get("content", {})
        state = content.get("data", {}).get("state")
        if msg.get("msg_type") not in ("comm_open", "comm_msg") or not isinstance(state, dict):
            return
        self.models.setdefault(content["comm_id"], {}).update(state)
        for box_id, children in self._bars():
            if content["comm_id"] == children[2]:  # tqdm sets the counts text last, after the bar and description
                self._show(box_id, children)

    def _bars(self) -> Iterator[tuple[str, list[str]]]:
        for box_id, state in self.models.items():
            children = [str(c).removeprefix("IPY_MODEL_") for c in state.get("children", [])]
            names = [self.models.get(c, {}).get("_model_name") for c in children]
            if names == ["HTMLModel", "FloatProgressModel", "HTMLModel"]:
                yield box_id, children

    def _show(self, box_id: str, children: list[str]) -> None:
        if box_id in self.done:
            return
        left, bar, right = (self.models[c] for c in children)
        total, value = float(bar.get("max") or 1), float(bar.get("value") or 0)
        filled = int(20 * min(1.0, value / total)) if total else 0
        text = html.unescape(f"{left.get('value', '')} |{'█' * filled}{' ' * (20 - filled)}| {right.get('value', '')}")
        text = re.sub(r"<[^>]+>", "", text).replace("\u2007", " ").strip()
        finished = bar.get("bar_style") in ("success", "danger") or (total and value >= total)
        last_time, last_text = self.shown.get(box_id, (0.0, ""))
        now = time.monotonic()
        if text == last_text or (not finished and now - last_time < self.interval):
            return
        self.shown[box_id] = (now, text)
        if finished:
            self.done.add(box_id)
        line = f"    {self.label}{text}"
        self.stream.write(f"\r{line}\x1b[K" + ("\n" if finished else "") if self.tty else f"{line}\n")
        self.stream.flush()


@cache
def _engine() -> str:
    """Register the papermill engine that mirrors the kernel's progress bars on its `console` argument; its name."""
    from papermill.clientwrap import PapermillNotebookClient
    from papermill.engines import NBClientEngine, papermill_engines

    class Client(PapermillNotebookClient):
        bars: ConsoleBars | None = None

        def handle_comm_msg(self, outs, msg, cell_index):
            super().handle_comm_msg(outs, msg, cell_index)
            if self.bars is not None:
                self.bars.message(msg)

    class Engine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(
            cls,
            nb_man,
            kernel_name,
            log_output=False,
            start_timeout=60,
            execution_timeout=None,
            console=None,
            label="",
            lines=False,
            **kwargs,
        ):
            kwargs = {k: v for k, v in kwargs.items() if k not in ("input_path", "timeout", "startup_timeout")}
            client = Client(
                nb_man,
                kernel_name=kernel_name,
                log_output=log_output,
                startup_timeout=start_timeout,
                timeout=execution_timeout,
                **kwargs,
            )
            client.bars = ConsoleBars(console, label, lines) if console is not None else None
            return client.execute()

    papermill_engines.register("naclip", Engine)
    return "naclip"


@contextmanager
def _environ(name: str, value: str) -> Iterator[None]:
    """`name` set to `value` in the environment (the kernels inherit it) for the duration of the block."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


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
            "argv": [
                sys.executable,
                "-m",
                "ipykernel_launcher",
                "-f",
                "{connection_file}",
                "--IPKernelApp.log_level=CRITICAL",
            ],
            "display_name": "naclip workbook",
            "language": "python",
        }
        (spec_dir / "kernel.json").write_text(json.dumps(spec))
        with _environ("JUPYTER_PATH", os.pathsep.join(p for p in (tmp, os.environ.get("JUPYTER_PATH")) if p)):
            yield KERNEL_NAME


def papermill_executor(kernel_name: str, console: TextIO | None = sys.stderr, lines: bool = False) -> Executor:
    """An executor running a notebook with papermill on `kernel_name`, its progress bars mirrored on `console`
    (a line per update with `lines`, as when several notebooks run at once)."""

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
            engine_name=_engine(),
            console=console,
            label=f"{notebook.stem}/{parameters['run']}",
            lines=lines,
        )

    return execute


# -- running ---------------------------------------------------------------------------------------------


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
    workbook: Workbook,
    execute: Executor,
    *,
    force: bool = False,
    note: str | None = None,
    jobs: int = 1,
    log: Callable[[str], None] = print,
) -> Report:
    """Execute every run that is not complete (all of them with `force`), `jobs` notebooks at a time; failures
    are recorded, not raised."""
    report = Report()
    env = environment()
    todo = []
    for number, run in enumerate(runs, 1):
        label = f"[{number}/{len(runs)}] {run.study.name}/{run.name}"
        state = run_state(run_dir(workbook.results, run), run)
        if not force and state.state == COMPLETE:
            report.skipped.append(run)
            log(f"{label}: complete, skipped")
        else:
            todo.append((label, run, state))

    def one(item: tuple[str, Run, State]) -> str | None:
        label, run, state = item
        folder = run_dir(workbook.results, run)
        _reset(folder, force)
        parameters = parameters_file(run, workbook)
        (folder / PARAMETERS).write_text(yaml.safe_dump(parameters, sort_keys=False))
        record = {
            "study": run.study.name,
            "title": run.study.title,
            "run": run.name,
            "profile": run.profile,
            "notebook": run.study.notebook.name,
            "parameters": run.parameters,
            "source": str(run.source) if run.source else None,
            "key": run_key(run),
            "note": note,
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "provenance": env,
        }
        log(f"{label}: running {run.study.notebook.name} ({state})")
        start = time.perf_counter()
        try:
            execute(run.study.notebook, folder / run.study.notebook.name, parameters, workbook.notebooks)
        except Exception as error:  # noqa: BLE001 - any notebook error is reported, and the others still run
            (folder / MARKER).unlink(missing_ok=True)  # the notebook may have recorded itself before papermill failed
            record["error"] = _error_text(error)
            record["traceback"] = traceback.format_exc(limit=5)
            write_json(record, folder / FAILED)
            log(f"{label}: FAILED after {time.perf_counter() - start:.1f}s")
            return record["error"]
        manifest = read_manifest(folder)
        record.update(
            seconds=round(time.perf_counter() - start, 2),
            random_weights=manifest["random_weights"],
            weights=manifest["weights"],
        )
        write_json(record, folder / MARKER)
        log(f"{label}: done in {record['seconds']:.1f}s")
        return None

    # the notebooks find their workbook (for relative paths) whether or not it is marked
    with _environ(ROOT_ENV, str(workbook.root)), ThreadPoolExecutor(max(1, jobs)) as pool:
        errors = list(pool.map(one, todo))
    for (_, run, _), error in zip(todo, errors, strict=True):
        if error is None:
            report.executed.append(run)
        else:
            report.failed.append((run, error))
    return report
