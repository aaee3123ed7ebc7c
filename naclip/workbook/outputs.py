"""What a study notebook writes into its run folder ``results/<study>/<run>/``: tidy tables (CSV) and figures
(PNG + SVG), listed in ``outputs.json`` with a caption and with what the model actually loaded.

A notebook marks its outputs from what ran, not from a flag: `RunOutputs.loaded` is given the evaluator's
rows or the `Segmenter`, and when any weights were random every later table gets a ``random_weights`` column,
every figure a watermark, and the notebook prints a banner. A study that uses a model must call it before
writing anything, so no output can escape the mark.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from naclip.io import atomic_write, write_csv, write_json
from naclip.workbook.layout import find_notebooks, resolve

MANIFEST = "outputs.json"
MARKER = "run.json"  # written by the runner when a run completes
FAILED = "failed.json"  # written by the runner when a run fails
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


class RunOutputs:
    """The writer a study notebook uses for every table and figure it produces.

    ``RunOutputs("sigma", run, results_dir)`` writes to ``<results_dir>/sigma/<run>/``; a relative
    `results_dir` (and every path given to `path`) resolves against the workbook's root, found from the
    working directory or the naclip checkout (`naclip.workbook.layout.find_notebooks`). `model=False`
    declares a study without a model (nothing to mark).
    """

    def __init__(self, study: str, run: str, results_dir: str | os.PathLike, model: bool = True) -> None:
        self.root = find_notebooks(study).parent
        self.out_dir = resolve(results_dir, self.root) / study / run
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for stale in (MARKER, FAILED, MANIFEST):  # the records of an earlier run no longer describe this folder
            (self.out_dir / stale).unlink(missing_ok=True)
        self._manifest: dict[str, Any] = {"tables": [], "figures": [], "random_weights": False, "weights": []}
        self._loaded = not model
        # random weights are said once by the banner, not by a warning per model loaded
        warnings.filterwarnings("once", message=r"naclip: .* has RANDOM weights")
        print(f"outputs: {self.out_dir}")

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

        labels = [weights_label(m, p) for m, p in weights]
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
        if self.random_weights:
            frame = frame.assign(random_weights=True)
        path = self.out_dir / f"{name}.csv"
        write_csv(frame, path)
        self._record("tables", {"name": name, "file": path.name, "caption": caption, "rows": len(frame)})

    def figure(self, fig: Any, name: str, caption: str = "") -> None:
        """Save a matplotlib figure as ``<name>.png`` and ``<name>.svg`` (watermarked if weights were random)."""
        from naclip.workbook.plots import mark_random

        self._check_loaded()
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
        write_json(self._manifest, self.out_dir / MANIFEST)
