"""What a study notebook writes into its run folder ``results/<study>/<run>/``: tidy tables (CSV) and figures
(PNG + SVG), listed in ``outputs.json`` with a caption and with what the model actually loaded.

A notebook records its own run, whoever executes it (papermill, *Run All*, nbconvert, `naclip workbook run`):
``RunOutputs.start(study, globals())`` reads the parameters the notebook ran with (its parameters cell and any
cell papermill injected, each checked against the cell's names and kinds) and `RunOutputs.finish`, the
notebook's last call, writes ``parameters.yaml`` and then ``run.json``, the completion record.

A notebook marks its outputs from what ran, not from a flag: `RunOutputs.loaded` is given the evaluator's
rows or the `Segmenter`, and when any weights were random every later table gets a ``random_weights`` column,
every figure a watermark, and the notebook prints a banner. A study that uses a model must call it before
writing anything, so no output can escape the mark.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

import naclip
from naclip.io import atomic_write, code_digest, environment, write_csv, write_json
from naclip.workbook.layout import MARKER_FILE, NOTEBOOKS, Study, resolve, workbook_root

MANIFEST = "outputs.json"
MARKER = "run.json"  # written when a run completes (by the notebook's `finish`, then by the runner)
FAILED = "failed.json"  # written by the runner when a run fails
PARAMETERS = "parameters.yaml"
INJECTED = "# Parameters"  # the first line of the cell papermill injects
RANDOM_BANNER = "RANDOM WEIGHTS — not a result: the model was randomly initialised, every number is noise."


def read_manifest(run_dir: Path) -> dict[str, Any]:
    """What a run folder holds: tables, figures, whether its weights were random, and which weights ran."""
    path = Path(run_dir) / MANIFEST
    data = json.loads(path.read_text()) if path.is_file() else {}
    return {
        "tables": data.get("tables", []),
        "figures": data.get("figures", []),
        "random_weights": data.get("random_weights", False),
        "weights": data.get("weights", []),
    }


def notebook_digest(path: Path | None) -> str | None:
    """A short digest of a notebook file (None when there is none)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path is not None and path.is_file() else None


def record_key(notebook: Path | None, parameters: Mapping[str, Any]) -> dict[str, Any]:
    """What a complete run must still match: its notebook, its parameters, naclip's version and code."""
    return {
        "notebook": notebook_digest(notebook),
        "parameters": dict(parameters),
        "naclip_version": naclip.__version__,
        "code": code_digest(),
    }


def _literal_assignments(source: str) -> dict[str, Any] | None:
    """The names and values a cell of literal assignments sets (None for any other cell)."""
    try:
        body = ast.parse(source).body
        if not body or not all(isinstance(n, ast.Assign) and len(n.targets) == 1 for n in body):
            return None
        if not all(isinstance(n.targets[0], ast.Name) for n in body):
            return None
        return {n.targets[0].id: ast.literal_eval(n.value) for n in body}
    except (SyntaxError, ValueError):
        return None


def executed_parameters(history: Sequence[str], notebook: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The parameters cell's defaults and the values papermill injected, from the sources of the cells the
    kernel ran (IPython's ``In``): the parameters cell is the last cell of literal assignments that sets `run`
    and `results_dir`, the injected ones follow it and start with ``# Parameters``."""
    declared: dict[str, Any] | None = None
    injected: dict[str, Any] = {}
    for source in history:
        values = _literal_assignments(source)
        if values is None:
            continue
        if source.lstrip().startswith(INJECTED):
            injected.update(values)
        elif {"run", "results_dir"} <= set(values):
            declared, injected = values, {}
    if declared is None:
        raise ValueError(f"{notebook}: no parameters cell (literal values, 'run' and 'results_dir') was run")
    return declared, injected


class RunOutputs:
    """The writer a study notebook uses for every table and figure it produces, and the run's record.

    ``RunOutputs.start("sigma", globals())`` in a notebook; ``RunOutputs("sigma", run, results_dir)`` writes to
    ``<results_dir>/sigma/<run>/``, nothing recorded but the outputs. A relative `results_dir` (and every path
    given to `path`) resolves against the workbook holding the working directory (`workbook_root`), else
    against the working directory itself. `model=False` declares a study without a model (nothing to mark).
    The folder is made on the first write, so that a run failing before it leaves nothing behind.
    """

    def __init__(
        self,
        study: str,
        run: str,
        results_dir: str | os.PathLike,
        model: bool = True,
        parameters: Mapping[str, Any] | None = None,
    ) -> None:
        root = workbook_root()
        self.root = root or Path.cwd().resolve()
        self.study = study
        self.notebook = root / NOTEBOOKS / f"{study}.ipynb" if root else None
        self.out_dir = resolve(results_dir, self.root) / study / run
        self.parameters = dict(parameters) if parameters is not None else None
        self._started = (datetime.now(timezone.utc).isoformat(timespec="seconds"), time.perf_counter())
        for stale in (MARKER, FAILED, MANIFEST):  # the records of an earlier run no longer describe this folder
            (self.out_dir / stale).unlink(missing_ok=True)
        self._manifest: dict[str, Any] = {"tables": [], "figures": [], "random_weights": False, "weights": []}
        self._loaded = not model
        # random weights are said once by the banner, not by a warning per model loaded
        warnings.filterwarnings("once", message=r"naclip: .* has RANDOM weights")
        where = ""
        if root is None and not Path(results_dir).expanduser().is_absolute():
            where = f" (no workbook: no {MARKER_FILE} in {self.root} or above; under the working directory)"
        print(f"outputs: {self.out_dir}{where}")

    @classmethod
    def start(cls, study: str, namespace: Mapping[str, Any], model: bool = True) -> RunOutputs:
        """The writer of a notebook's run, from the notebook's namespace (``globals()``): the parameters it ran
        with, papermill's injected values checked first (an unknown name or a value of another kind than the
        default is a ValueError naming the closest parameter or the expected kind)."""
        from naclip.workbook.params import RESULTS_DIR, RUN, check_parameters

        history = namespace.get("In")
        if not isinstance(history, list):
            raise RuntimeError(f"RunOutputs.start reads the cells a notebook ran; else use RunOutputs({study!r}, ...)")
        declared, injected = executed_parameters(history, f"{study}.ipynb")
        check_parameters(injected, Study(study, Path(f"{study}.ipynb"), study, 0.0, declared), "papermill parameters")
        parameters = {name: namespace[name] for name in declared}
        return cls(study, parameters[RUN], parameters[RESULTS_DIR], model, parameters)

    def path(self, value: str | os.PathLike | None) -> Path | None:
        """An input path parameter (an image, a data root) resolved against the workbook's root."""
        return None if value is None else resolve(value, self.root)

    @property
    def random_weights(self) -> bool:
        return bool(self._manifest["random_weights"])

    def loaded(self, source: Any) -> None:
        """Record what ran: evaluator rows (a frame with ``model``, ``pretrained`` and ``random_weights``
        columns) or a `Segmenter`. Random weights mark every later output and print a banner."""
        if isinstance(source, pd.DataFrame):
            pairs = source[["model", "pretrained"]].drop_duplicates().itertuples(index=False)
            weights = [(m, None if pd.isna(p) else p) for m, p in pairs]
            random = bool(source["random_weights"].astype(bool).any())
        else:
            weights = [(source.settings.model, source.settings.pretrained)]
            random = bool(source.random_weights)
        from naclip.workbook.studies import weights_label

        self.weights_were(random, [weights_label(m, p) for m, p in weights])

    def weights_were(self, random: bool, labels: Sequence[str]) -> None:
        """Record the weights that ran (their labels) and whether any were random, as `loaded` does."""
        self._manifest["weights"] = list(dict.fromkeys([*self._manifest["weights"], *labels]))
        if random and not self.random_weights:
            print(f"{'=' * 100}\n{RANDOM_BANNER}\n{'=' * 100}")
        self._manifest["random_weights"] = self.random_weights or random
        self._loaded = True
        self._save()

    def _check_loaded(self) -> None:
        if not self._loaded:
            raise RuntimeError(
                "call out.loaded(...) with what ran (the evaluator's rows or the Segmenter) before "
                "writing outputs, so that random weights are marked"
            )

    def table(self, frame: pd.DataFrame, name: str, caption: str = "") -> None:
        """Write `frame` as ``<name>.csv`` (tidy: one row per observation)."""
        self._check_loaded()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.random_weights:
            frame = frame.assign(random_weights=True)
        path = self.out_dir / f"{name}.csv"
        write_csv(frame, path)
        self._record("tables", {"name": name, "file": path.name, "caption": caption, "rows": len(frame)})

    def figure(self, fig: Any, name: str, caption: str = "") -> None:
        """Save a matplotlib figure as ``<name>.png`` and ``<name>.svg`` (watermarked if weights were random)."""
        from naclip.workbook.plots import mark_random

        self._check_loaded()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.random_weights:
            mark_random(fig)
        for ext in ("png", "svg"):
            buffer = io.BytesIO()
            fig.savefig(buffer, format=ext, dpi=120, bbox_inches="tight")
            atomic_write(self.out_dir / f"{name}.{ext}", buffer.getvalue())
        self._record("figures", {"name": name, "png": f"{name}.png", "svg": f"{name}.svg", "caption": caption})

    def _record(self, kind: str, entry: dict[str, Any]) -> None:
        entries = [e for e in self._manifest[kind] if e["name"] != entry["name"]]
        self._manifest[kind] = [*entries, entry]
        self._save()

    def _save(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_json(self._manifest, self.out_dir / MANIFEST)

    def finish(self) -> None:
        """The notebook's last call: write ``parameters.yaml`` (every parameter, for ``papermill -f``) and then
        ``run.json``, which makes the run complete for `naclip workbook list` and the index."""
        if self.parameters is None:
            raise RuntimeError("finish() records a run made with RunOutputs.start(study, globals())")
        from naclip.workbook.params import RESULTS_DIR

        self._save()
        atomic_write(self.out_dir / PARAMETERS, yaml.safe_dump(self.parameters, sort_keys=False).encode())
        parameters = {k: v for k, v in self.parameters.items() if k != RESULTS_DIR}
        started, start = self._started
        record = {
            "study": self.study,
            "run": self.out_dir.name,
            "profile": None,
            "notebook": None,
            "parameters": parameters,
            "key": record_key(self.notebook, parameters),
            "recorded_by": "the notebook",
            "started": started,
            "seconds": round(time.perf_counter() - start, 2),
            "random_weights": self.random_weights,
            "weights": self._manifest["weights"],
            "provenance": environment(),
        }
        write_json(record, self.out_dir / MARKER)
        print(f"run recorded: {self.out_dir / MARKER}")
