"""What a study notebook writes into its run folder: tidy tables (CSV) and figures (PNG + SVG).

Every file is listed in ``outputs.json`` so the runner and the results index know what a run made, with
a caption. When the run's weights were random, tables get a ``random_weights`` column, figures a
watermark, and the notebook prints a banner, so no smoke output can pass for a result.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from naclip.io import atomic_write, write_csv, write_json

MANIFEST = "outputs.json"
RANDOM_BANNER = "RANDOM WEIGHTS — not a result: the model was randomly initialised, every number is noise."


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
        write_csv(frame, path)
        self._record("tables", {"name": name, "file": path.name, "caption": caption, "rows": len(frame)})
        return path

    def figure(self, fig: Any, name: str, caption: str = "") -> list[Path]:
        """Save a matplotlib figure as ``<name>.png`` and ``<name>.svg`` (watermarked if weights were random)."""
        from naclip.plots import mark_random

        if self.random_weights:
            mark_random(fig)
        paths = []
        for ext in ("png", "svg"):
            buffer = io.BytesIO()
            fig.savefig(buffer, format=ext, dpi=120, bbox_inches="tight")
            paths.append(self.out_dir / f"{name}.{ext}")
            atomic_write(paths[-1], buffer.getvalue())
        self._record("figures", {"name": name, "png": paths[0].name, "svg": paths[1].name, "caption": caption})
        return paths

    def _record(self, kind: str, entry: dict[str, Any]) -> None:
        entries = [e for e in self._manifest[kind] if e["name"] != entry["name"]]
        self._manifest[kind] = [*entries, entry]
        write_json(self._manifest, self.out_dir / MANIFEST)
