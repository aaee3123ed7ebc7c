"""What a study notebook writes into its run folder: tidy tables (CSV) and figures (PNG + SVG).

Every file is listed in ``outputs.json`` so the runner and the results index know what a run made, with
a caption. When the run's weights were random, tables get a ``random_weights`` column, figures a
watermark, and the notebook prints a banner, so no smoke output can pass for a result.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

MANIFEST = "outputs.json"
RANDOM_BANNER = "RANDOM WEIGHTS — not a result: the model was randomly initialised, every number is noise."


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path`, renamed onto it only when the block succeeds."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (a reader never sees half a file)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_manifest(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """The tables and figures a run folder holds (empty lists when it holds none)."""
    path = Path(run_dir) / MANIFEST
    data = json.loads(path.read_text()) if path.is_file() else {}
    return {"tables": data.get("tables", []), "figures": data.get("figures", [])}


class RunOutputs:
    """The writer a study notebook uses for every table and figure it produces."""

    def __init__(self, out_dir: str | os.PathLike, random_weights: bool) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.random_weights = random_weights
        self._manifest = read_manifest(self.out_dir)
        if random_weights:
            print(f"{'=' * 100}\n{RANDOM_BANNER}\n{'=' * 100}")

    def table(self, frame: pd.DataFrame, name: str, caption: str = "") -> Path:
        """Write `frame` as ``<name>.csv`` (tidy: one row per observation)."""
        if self.random_weights:
            frame = frame.assign(random_weights=True)
        path = self.out_dir / f"{name}.csv"
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, index=False)
        self._record("tables", {"name": name, "file": path.name, "caption": caption, "rows": len(frame)})
        return path

    def figure(self, fig: Any, name: str, caption: str = "") -> list[Path]:
        """Save a matplotlib figure as ``<name>.png`` and ``<name>.svg`` (watermarked if weights were random)."""
        from naclip.plots import mark_random

        if self.random_weights:
            mark_random(fig)
        paths = []
        for ext in ("png", "svg"):
            path = self.out_dir / f"{name}.{ext}"
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=ext, dpi=120, bbox_inches="tight")
            paths.append(path)
        self._record("figures", {"name": name, "png": paths[0].name, "svg": paths[1].name, "caption": caption})
        return paths

    def _record(self, kind: str, entry: dict[str, Any]) -> None:
        entries = [e for e in self._manifest[kind] if e["name"] != entry["name"]]
        self._manifest[kind] = [*entries, entry]
        write_json(self.out_dir / MANIFEST, self._manifest)
