"""Where a workbook lives, and its studies.

A workbook is a folder of study notebooks (``notebooks/``) beside its parameter files (``params/``) and its
outputs (``results/``), marked as one by a file ``.naclip-workbook`` at its root; relative paths in a study's
parameters resolve against that root, whatever the working directory. The root is found by that marker only,
never guessed from a folder's name. One name per study: the notebook
``notebooks/<study>.ipynb``, its parameter files ``params/<profile>/<study>.yaml`` and its outputs
``results/<study>/<run>/``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat

import naclip

NOTEBOOKS, PARAMS, RESULTS = "notebooks", "params", "results"
ROOT_ENV = "NACLIP_WORKBOOK"
MARKER_FILE = ".naclip-workbook"  # only a workbook's root holds it


@dataclass(frozen=True)
class Workbook:
    """The three folders of a workbook."""

    notebooks: Path
    params: Path
    results: Path

    @classmethod
    def at(cls, notebooks: Path | None = None, params: Path | None = None, results: Path | None = None) -> Workbook:
        """The workbook of `notebooks` (default: `find_notebooks()`); params/ and results/ beside it by default."""
        notebooks = Path(notebooks or find_notebooks()).resolve()
        root = notebooks.parent
        return cls(notebooks, Path(params or root / PARAMS).resolve(), Path(results or root / RESULTS).resolve())

    @property
    def root(self) -> Path:
        return self.notebooks.parent


def workbook_root(start: Path | None = None) -> Path | None:
    """The workbook holding `start` (default: the working directory): ``$NACLIP_WORKBOOK``, else the nearest
    folder at or above `start` holding the ``.naclip-workbook`` marker; None outside any workbook."""
    if os.environ.get(ROOT_ENV):
        return Path(os.environ[ROOT_ENV]).resolve()
    start = Path(start or Path.cwd()).resolve()
    return next((folder for folder in (start, *start.parents) if (folder / MARKER_FILE).is_file()), None)


def find_notebooks(start: Path | None = None) -> Path:
    """The notebooks folder of the workbook holding `start` (`workbook_root`), else of the checkout naclip is
    imported from when that is a workbook."""
    root = workbook_root(start)
    checkout = Path(naclip.__file__).resolve().parents[1]
    if root is None and (checkout / MARKER_FILE).is_file():
        root = checkout
    if root is None:
        raise FileNotFoundError(
            f"no workbook found: neither {Path(start or Path.cwd()).resolve()} nor a folder above it holds a "
            f"{MARKER_FILE} file; run from a workbook, pass --notebooks DIR, or set {ROOT_ENV}=<its root>"
        )
    return root / NOTEBOOKS


def resolve(path: str | os.PathLike, root: Path) -> Path:
    """`path` as given when absolute (``~`` expanded), else relative to the workbook's `root`."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else root / path


@dataclass(frozen=True)
class Study:
    """One study: its name (the notebook's stem), notebook, title and declared parameters (with defaults)."""

    name: str
    notebook: Path
    title: str
    order: float
    parameters: dict[str, Any]


def read_study(notebook: Path) -> Study:
    """A study from its notebook: the title is the first heading, the order ``metadata.naclip.order``."""
    from naclip.workbook.params import notebook_parameters

    nb = nbformat.read(notebook, as_version=4)
    title = notebook.stem
    for cell in nb.cells:
        heading = next((line[2:].strip() for line in cell.source.splitlines() if line.startswith("# ")), None)
        if cell.cell_type == "markdown" and heading:
            title = heading
            break
    order = float(nb.metadata.get("naclip", {}).get("order", float("inf")))
    return Study(notebook.stem, notebook, title, order, notebook_parameters(nb, notebook.name))


def is_study(notebook: Path) -> bool:
    """False for a notebook that says it is none (``metadata.naclip.study: false``, e.g. the explorer)."""
    return nbformat.read(notebook, as_version=4).metadata.get("naclip", {}).get("study", True) is not False


def discover(notebooks: Path) -> list[Study]:
    """Every study notebook in `notebooks`, in the workbook's order (then by name)."""
    studies = [read_study(path) for path in notebooks.glob("*.ipynb") if is_study(path)]
    return sorted(studies, key=lambda s: (s.order, s.name))
