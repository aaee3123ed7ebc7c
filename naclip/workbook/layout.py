"""Where a workbook lives, and its studies.

A workbook is a folder of study notebooks (``notebooks/``) beside its parameter files (``params/``) and its
outputs (``results/``); the folder above ``notebooks/`` is the workbook's root, and relative paths in a
study's parameters resolve against it, whatever the working directory. One name per study: the notebook
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


def _holds(folder: Path, study: str | None) -> bool:
    """True when `folder` holds the notebook of `study` (any notebook when `study` is None)."""
    if study is not None:
        return (folder / f"{study}.ipynb").is_file()
    return folder.is_dir() and any(folder.glob("*.ipynb"))


def find_notebooks(study: str | None = None, start: Path | None = None) -> Path:
    """The notebooks folder: ``$NACLIP_WORKBOOK/notebooks``; else the working directory (or a parent) when it is
    one or holds one; else the checkout naclip is imported from. `study`: the folder must hold its notebook.
    """
    if os.environ.get(ROOT_ENV):
        return Path(os.environ[ROOT_ENV]).resolve() / NOTEBOOKS
    start = Path(start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if study is not None and _holds(folder, study):
            return folder
        if _holds(folder / NOTEBOOKS, study):
            return folder / NOTEBOOKS
    checkout = Path(naclip.__file__).resolve().parents[1] / NOTEBOOKS
    if _holds(checkout, study):
        return checkout
    wanted = f"{study}.ipynb" if study else "study notebooks"
    raise FileNotFoundError(
        f"no workbook found: neither {start} nor a folder above it holds a '{NOTEBOOKS}/' folder with {wanted}; "
        f"run from the workbook, pass --notebooks DIR, or set {ROOT_ENV}=<the folder above notebooks/>"
    )


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


def discover(notebooks: Path) -> list[Study]:
    """Every study notebook in `notebooks`, in the workbook's order (then by name)."""
    studies = [read_study(path) for path in notebooks.glob("*.ipynb")]
    return sorted(studies, key=lambda s: (s.order, s.name))
