"""Parameters: the notebook's parameters cell, the profiles' parameter files, and the runs they make.

A notebook declares every parameter, with its default, in its cell tagged ``parameters``; the defaults are
the default profile (``samples``: ViT-B-16 / openai on the embedded samples). A profile is a folder
``params/<profile>/`` of papermill parameter files (flat YAML mappings, `papermill -f`), one per study::

    params/paper/sigma.yaml            # one run of study `sigma`, named by its `run` (default: the profile)
    params/paper/backbones/ViT-L-14.yaml   # a folder: one run per file, named <profile>-<file stem>

A file holds only what differs from the notebook's defaults. Every key is checked against the parameters
cell (an unknown key is an error naming the closest one), and each value against its default's kind.
"""

from __future__ import annotations

import ast
import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import yaml

from naclip.workbook.layout import Study, Workbook, discover

DEFAULT_PROFILE = "samples"
FALLBACK_PROFILE = "smoke"
# Set by the runner for every run, never by a parameter file.
RUN, RESULTS_DIR = "run", "results_dir"


def notebook_parameters(nb: nbformat.NotebookNode, name: str = "notebook") -> dict[str, Any]:
    """The names and default values the cell tagged ``parameters`` assigns (literal values only)."""
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{name}: expected one cell tagged 'parameters', found {len(cells)}")
    parameters = {}
    for node in ast.parse(cells[0].source).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise ValueError(f"{name}: the parameters cell may only assign literal values to names")
        try:
            parameters[node.targets[0].id] = ast.literal_eval(node.value)
        except ValueError:
            raise ValueError(f"{name}: parameter {node.targets[0].id!r} is not a literal value") from None
    return parameters


def _kind(value: Any) -> str | None:
    """What a parameter holds, for checking a value against its default (None: anything goes)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return None


def closest(name: str, known: Sequence[str]) -> str:
    """'; did you mean X?' for the closest of `known`, else the list of them."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else f"; expected one of: {', '.join(known)}"


def check_parameters(values: Mapping[str, Any], study: Study, where: str) -> None:
    """ValueError for a key the study's notebook does not declare, or a value of another kind than its default."""
    for key, value in values.items():
        if key not in study.parameters:
            raise ValueError(
                f"{where}: unknown parameter {key!r} for study {study.name!r}{closest(key, list(study.parameters))}"
            )
        expected = _kind(study.parameters[key])
        if value is not None and expected is not None and _kind(value) != expected:
            raise ValueError(
                f"{where}: {key}={value!r}; {study.notebook.name} expects {expected} "
                f"(default {study.parameters[key]!r})"
            )


def read_parameters(path: Path) -> dict[str, Any]:
    """A parameter file: a flat YAML mapping of parameter names to values."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise ValueError(f"{path}: not valid YAML{line}: {problem}; expected a flat mapping `name: value`") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of parameter names to values")
    return data


@dataclass(frozen=True)
class Run:
    """One notebook execution: a study with every parameter fixed."""

    study: Study
    name: str
    profile: str
    parameters: dict[str, Any]  # every declared parameter, results_dir aside
    source: Path | None = None  # the parameter file it comes from (None: the notebook's defaults)

    @property
    def changed(self) -> dict[str, Any]:
        """The parameters that differ from the notebook's defaults (the run's name aside)."""
        return changed(self.parameters, self.study)


def changed(parameters: Mapping[str, Any], study: Study) -> dict[str, Any]:
    """The `parameters` that differ from `study`'s defaults, the run's name aside."""
    return {k: v for k, v in parameters.items() if study.parameters.get(k) != v and k != RUN}


def profiles(params_dir: Path) -> list[str]:
    """The profiles of a workbook: the default one and every folder of `params_dir`."""
    found = sorted(p.name for p in params_dir.iterdir() if p.is_dir()) if params_dir.is_dir() else []
    return [DEFAULT_PROFILE, *(p for p in found if p != DEFAULT_PROFILE)]


def profile_folder(profile: str, params_dir: Path) -> Path | None:
    """The folder of `profile` (a name in `params_dir` or a folder path); None for a default without a folder."""
    path = Path(profile)
    folder = path if len(path.parts) > 1 or path.is_absolute() else params_dir / profile
    if folder.is_dir():
        return folder.resolve()
    if profile == DEFAULT_PROFILE:
        return None
    known = profiles(params_dir)
    raise FileNotFoundError(f"no profile {profile!r} ({folder} is not a folder){closest(profile, known)}")


def _files(folder: Path | None, studies: Mapping[str, Study]) -> dict[str, list[Path]]:
    """The parameter files of a profile folder by study; an entry naming no study is an error."""
    files: dict[str, list[Path]] = {}
    for entry in sorted(folder.iterdir()) if folder else []:
        if entry.is_dir():
            stem, paths = entry.name, sorted(p for p in entry.iterdir() if p.suffix in (".yaml", ".yml"))
        elif entry.suffix in (".yaml", ".yml"):
            stem, paths = entry.stem, [entry]
        else:
            continue
        if stem not in studies:
            raise ValueError(f"{entry}: no study {stem!r} in this workbook{closest(stem, list(studies))}")
        files.setdefault(stem, []).extend(paths)
    return files


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.,=+-]+", "_", text).strip("_") or "run"


def _runs(study: Study, profile: str, files: list[Path], overrides: Mapping[str, Any]) -> list[Run]:
    """The runs of one study under a profile: one per file (the notebook's defaults without a file)."""
    applied = {k: v for k, v in overrides.items() if k in study.parameters}
    suffix = "".join(f"-{k}={_slug(str(v))}" for k, v in applied.items())
    runs = []
    for path in files or [None]:
        values = read_parameters(path) if path else {}
        check_parameters(values, study, str(path or study.notebook))
        if RESULTS_DIR in values:
            raise ValueError(f"{path}: {RESULTS_DIR} is set by the runner (--results), not by a parameter file")
        default = profile if path is None or path.parent.name != study.name else f"{profile}-{path.stem}"
        name = _slug(str(values.get(RUN) or default)) + suffix
        parameters = {**study.parameters, **values, **applied, RUN: name}
        parameters.pop(RESULTS_DIR, None)
        runs.append(Run(study, name, profile, parameters, path))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"study {study.name!r}, profile {profile!r}: runs with the same name {names}")
    return runs


def plan(
    workbook: Workbook,
    targets: Sequence[str] = (),
    profile: str = DEFAULT_PROFILE,
    overrides: Mapping[str, Any] | None = None,
) -> list[Run]:
    """The runs of `targets` (study names; every study when empty) under `profile`, with `overrides` (e.g.
    ``{"model": "ViT-L-14"}``) applied to every study that declares them (and named in the run)."""
    studies = {s.name: s for s in discover(workbook.notebooks)}
    if not studies:
        raise FileNotFoundError(f"no study notebooks in {workbook.notebooks}")
    for target in targets:
        if target not in studies:
            raise ValueError(f"no study {target!r}{closest(target, list(studies))}")
    folder = profile_folder(profile, workbook.params)
    name = folder.name if folder else profile
    files = _files(folder, studies)
    chosen = [studies[t] for t in dict.fromkeys(targets)] if targets else list(studies.values())
    return [run for study in chosen for run in _runs(study, name, files.get(study.name, []), overrides or {})]
