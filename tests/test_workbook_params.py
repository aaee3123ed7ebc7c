"""Study files, profiles and grids: how the workbook turns parameter files into runs."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest

from naclip.workbook.params import Study, apply_profile, discover_studies, expand, load_profile, load_study
from naclip.workbook.regenerate import ROOT, plan, resolve_profile

PARAMS, NOTEBOOKS = ROOT / "params", ROOT / "notebooks"


def study(grid=None, **parameters) -> Study:
    return Study("s", "01_s.ipynb", "S", parameters or {"model": "m", "pretrained": "openai", "sigma": 5.0},
                 grid or {})


def test_no_grid_is_one_default_run():
    (run,) = expand(study())
    assert run.name == "default" and run.parameters == {"model": "m", "pretrained": "openai", "sigma": 5.0}


def test_grid_expands_to_the_product_with_readable_names():
    runs = expand(study(grid={"sigma": [1, 3], "model": ["a", "b"]}))
    assert [r.name for r in runs] == ["sigma=1_model=a", "sigma=1_model=b", "sigma=3_model=a", "sigma=3_model=b"]
    assert runs[1].parameters == {"model": "b", "pretrained": "openai", "sigma": 1}


def test_mapping_grid_values_set_several_parameters():
    runs = expand(study(grid={"backbone": [{"model": "ViT-B-32", "pretrained": None}, {"model": "ViT-L-14"}]}))
    assert [r.name for r in runs] == ["model=ViT-B-32_pretrained=None", "model=ViT-L-14"]
    assert runs[0].random_weights and not runs[1].random_weights
    assert runs[0].parameters["model"] == "ViT-B-32"


def test_list_grid_values_name_runs_by_their_items():
    runs = expand(study(grid={"sigma": [[1.0, 2.0], [3.0]]}))
    assert [r.name for r in runs] == ["sigma=1.0,2.0", "sigma=3.0"]


def test_grid_of_undeclared_parameter_is_an_error():
    with pytest.raises(ValueError, match="undeclared"):
        expand(study(grid={"sigmaa": [1, 2]}))


def test_grid_with_duplicate_run_names_is_an_error():
    with pytest.raises(ValueError, match="duplicate"):
        expand(study(grid={"model": ["a/b", "a_b"]}))


def test_profile_overrides_only_declared_parameters_then_per_study():
    profile = {"parameters": {"model": "tiny", "limit": 2}, "studies": {"s": {"parameters": {"sigma": 1.0}}}}
    resolved = apply_profile(study(), profile)
    assert resolved.parameters == {"model": "tiny", "pretrained": "openai", "sigma": 1.0}
    with pytest.raises(ValueError, match="does not declare"):
        apply_profile(study(), {"studies": {"s": {"parameters": {"limit": 1}}}})


def test_profile_replaces_a_grid():
    base = study(grid={"model": ["a", "b"]})
    resolved = apply_profile(base, {"studies": {"s": {"grid": {"model": ["tiny"]}}}})
    assert [r.name for r in expand(resolved)] == ["model=tiny"]


def test_random_weights_follow_pretrained():
    assert expand(study(pretrained=None))[0].random_weights
    assert not expand(study(sigma=1.0))[0].random_weights  # no model at all


def test_study_file_needs_a_notebook_and_a_well_formed_grid(tmp_path):
    (tmp_path / "bad.yaml").write_text("parameters: {a: 1}\n")
    with pytest.raises(ValueError, match="notebook"):
        load_study(tmp_path / "bad.yaml")
    (tmp_path / "grid.yaml").write_text("notebook: x.ipynb\nparameters: {a: 1}\ngrid: {a: 3}\n")
    with pytest.raises(ValueError, match="grid"):
        load_study(tmp_path / "grid.yaml")
    with pytest.raises(ValueError, match="study file"):
        load_profile(tmp_path / "grid.yaml")


def test_unknown_study_and_profile_name_the_known_ones():
    with pytest.raises(FileNotFoundError, match="kernel"):
        plan(["nope"], {}, PARAMS)
    with pytest.raises(FileNotFoundError, match="smoke"):
        resolve_profile("nope", PARAMS)


def test_the_shipped_studies():
    names = [s.name for s in discover_studies(PARAMS)]
    assert names == ["main", "components", "sigma", "attention", "architecture", "backbones", "qualitative",
                     "attention_maps", "kernel", "demo"]


def _parameter_cell(notebook: Path) -> set[str]:
    nb = nbformat.read(notebook, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{notebook.name}: one cell tagged 'parameters'"
    return {t.id for node in ast.parse(cells[0].source).body for t in node.targets}


@pytest.mark.parametrize("profile", ["paper", "samples", "smoke"])
def test_every_study_and_profile_fits_its_notebook(profile):
    """Each run's parameters are exactly what its notebook's parameters cell declares."""
    _, overrides = resolve_profile(profile, PARAMS)
    for run in plan([], overrides, PARAMS):
        declared = _parameter_cell(NOTEBOOKS / run.study.notebook)
        assert declared == set(run.parameters) | {"out_dir", "random_weights"}, run.study.name
        if profile == "smoke":
            assert run.random_weights or "pretrained" not in run.parameters, run.study.name


def test_notebooks_are_stored_without_outputs():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, path.name
