"""Study parameter files, profiles and grids: what the workbook runs, resolved into a list of runs.

A study file (``params/<study>.yaml``) names its notebook and holds the paper protocol::

    notebook: 03_sigma_sweep.ipynb
    title: Sigma sweep
    parameters: {model: ViT-B-16, pretrained: openai, sigmas: [1, 2, 3, 5, 8]}
    grid: {benchmark: [voc21, ade20k]}      # optional: one run per combination

A grid expands into separate runs (``results/<study>/<run>/``), each with its own notebook, so a failed or
interrupted run is redone alone. Sweeps that share the frozen trunk (sigma, attention, architecture) are
parameters *inside* one run instead, so the evaluator computes the trunk once for every setting. A grid
value that is a mapping sets several parameters at once (``{model: ViT-L-14, pretrained: openai}``).

A profile file (``params/smoke.yaml``) has no notebook; it overrides studies: ``parameters`` apply to every
study that declares the key, ``studies: {<study>: {parameters: ..., grid: ...}}`` to one study.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEFAULT_RUN = "default"


@dataclass(frozen=True)
class Study:
    """One study: its name (the params file stem), notebook, title, parameters and grid."""

    name: str
    notebook: str
    title: str
    parameters: dict[str, Any]
    grid: dict[str, list[Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Run:
    """One notebook execution: a study with every parameter fixed."""

    study: Study
    name: str
    parameters: dict[str, Any]

    def key(self, notebook: Path) -> str:
        """A digest of the notebook's text and the parameters: when either changes, a completed run is stale."""
        payload = json.dumps(self.parameters, sort_keys=True, default=str).encode() + notebook.read_bytes()
        return hashlib.sha256(payload).hexdigest()[:16]

    @property
    def random_weights(self) -> bool:
        """True when the run's model has random weights (``pretrained: null``): its numbers mean nothing."""
        return "pretrained" in self.parameters and self.parameters["pretrained"] is None


def _read_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return data


def is_study_file(path: Path) -> bool:
    """A study file names a notebook; a profile file does not."""
    return "notebook" in _read_yaml(path)


def load_study(path: Path) -> Study:
    """Read a study file."""
    data = _read_yaml(path)
    if "notebook" not in data:
        raise ValueError(f"{path}: a study file needs a 'notebook' key")
    grid = data.get("grid") or {}
    _check_grid(grid, path)
    return Study(
        name=path.stem,
        notebook=data["notebook"],
        title=data.get("title", path.stem),
        parameters=dict(data.get("parameters") or {}),
        grid=grid,
    )


def _check_grid(grid: Any, where: Path | str) -> None:
    if not isinstance(grid, Mapping) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ValueError(f"{where}: 'grid' must map each parameter to a non-empty list of values")


def discover_studies(params_dir: Path) -> list[Study]:
    """Every study file in `params_dir`, in notebook order."""
    studies = [load_study(p) for p in sorted(params_dir.glob("*.yaml")) if is_study_file(p)]
    return sorted(studies, key=lambda s: s.notebook)


def apply_profile(study: Study, profile: Mapping[str, Any]) -> Study:
    """The study with a profile's overrides: global parameters the study declares, then the study's own."""
    parameters = dict(study.parameters)
    for key, value in (profile.get("parameters") or {}).items():
        if key in parameters:
            parameters[key] = value
    own = (profile.get("studies") or {}).get(study.name) or {}
    unknown = set(own.get("parameters") or {}) - set(parameters)
    if unknown:
        raise ValueError(f"profile sets parameters {sorted(unknown)} that study {study.name!r} does not declare")
    parameters.update(own.get("parameters") or {})
    grid = own.get("grid", study.grid) or {}
    _check_grid(grid, f"profile override of {study.name}")
    return Study(study.name, study.notebook, study.title, parameters, grid)


def load_profile(path: Path) -> dict[str, Any]:
    """Read a profile file (a params file without a notebook)."""
    data = _read_yaml(path)
    if "notebook" in data:
        raise ValueError(f"{path} is a study file, not a profile")
    return data


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.,=+-]+", "_", text).strip("_") or "run"


def _text(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _label(key: str, value: Any) -> str:
    if isinstance(value, Mapping):
        return "_".join(f"{k}={_text(v)}" for k, v in value.items())
    return f"{key}={_text(value)}"


def expand(study: Study) -> list[Run]:
    """One run per grid combination (one run named ``default`` without a grid)."""
    if not study.grid:
        return [Run(study, DEFAULT_RUN, dict(study.parameters))]
    keys = list(study.grid)
    runs = []
    for values in itertools.product(*(study.grid[k] for k in keys)):
        parameters = dict(study.parameters)
        for key, value in zip(keys, values, strict=True):
            update = dict(value) if isinstance(value, Mapping) else {key: value}
            unknown = set(update) - set(study.parameters)
            if unknown:
                raise ValueError(f"study {study.name!r}: grid sets undeclared parameters {sorted(unknown)}")
            parameters.update(update)
        name = _slug("_".join(_label(k, v) for k, v in zip(keys, values, strict=True)))
        runs.append(Run(study, name, parameters))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"study {study.name!r}: grid values give duplicate run names {names}")
    return runs
