"""Parameters: the notebooks' parameters cells, the profiles' papermill files, their validation, the runs they make."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import nbformat
import pytest
import yaml

from naclip.workbook.layout import MARKER_FILE, ROOT_ENV, Workbook, discover, find_notebooks, workbook_root
from naclip.workbook.params import RESULTS_DIR, RUN, notebook_parameters, plan, profiles

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS, PARAMS = ROOT / "notebooks", ROOT / "params"
STUDIES = [
    "main",
    "components",
    "plugins",
    "sigma",
    "attention",
    "architecture",
    "backbones",
    "qualitative",
    "attention_maps",
    "kernel",
    "demo",
    "field",
]


def workbook(tmp_path: Path, files: dict[str, str]) -> Workbook:
    """The shipped notebooks with parameter files of our own under tmp_path/params."""
    for name, text in files.items():
        path = tmp_path / "params" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return Workbook(NOTEBOOKS, tmp_path / "params", tmp_path / "results")


def test_the_shipped_studies_one_name_each():
    studies = discover(NOTEBOOKS)
    assert [s.name for s in studies] == STUDIES
    for study in studies:
        nb = nbformat.read(study.notebook, as_version=4)
        code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        assert re.search(rf'out = RunOutputs.start\("{study.name}", globals\(\)', code), study.name
        assert nb.cells[-1].source.startswith("out.finish()"), study.name  # the record is written last
        assert study.parameters[RUN] == "samples" and study.parameters[RESULTS_DIR] == "results"
        assert "random_weights" not in study.parameters and "out_dir" not in study.parameters
        intro = nb.cells[0].source
        assert intro.startswith(f"# {study.title}") and f"naclip workbook run {study.name}" in intro
        assert f"papermill notebooks/{study.name}.ipynb out.ipynb -f params/smoke/{study.name}.yaml" in intro


def test_notebook_defaults_are_the_samples_profile():
    for study in discover(NOTEBOOKS):
        parameters = study.parameters
        if "model" in parameters:
            assert (parameters["model"], parameters["pretrained"]) == ("ViT-B-16", "openai"), study.name
        names = parameters.get("benchmarks", []) + [parameters.get("benchmark", "x-sample")]
        assert all(n.endswith("-sample") for n in names), study.name  # no dataset needed


def test_notebooks_are_stored_without_outputs():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, path.name


@pytest.mark.parametrize("profile", ["samples", "paper", "smoke"])
def test_every_shipped_file_is_a_flat_papermill_file_that_names_its_run(profile):
    runs = plan(Workbook(NOTEBOOKS, PARAMS, ROOT / "results"), (), profile)
    assert sorted({r.study.name for r in runs}) == sorted(STUDIES)
    for run in runs:
        if profile == "samples":
            assert run.source is None and run.name == "samples"
            continue
        values = yaml.safe_load(run.source.read_text())
        assert isinstance(values, dict) and values[RUN] == run.name, run.source
        assert run.name == profile or run.name == f"{profile}-{run.source.stem}"
        if profile == "smoke":
            assert run.parameters.get("pretrained", None) is None and run.parameters.get("limit", 1) == 1
    if profile == "paper":
        assert [r.name for r in runs if r.study.name == "backbones"] == [
            "paper-ViT-B-16",
            "paper-ViT-B-32",
            "paper-ViT-L-14",
        ]


def test_profiles_and_run_names(tmp_path):
    wb = workbook(
        tmp_path,
        {
            "mine/sigma.yaml": "sigmas: [1.0, 2.0]\n",
            "mine/kernel/a.yaml": "sigmas: [1.0]\n",
            "mine/kernel/b.yaml": "run: bee\n",
        },
    )
    assert profiles(wb.params) == ["samples", "mine"]
    runs = {f"{r.study.name}/{r.name}": r for r in plan(wb, ["sigma", "kernel", "demo"], "mine")}
    assert list(runs) == ["sigma/mine", "kernel/mine-a", "kernel/bee", "demo/mine"]
    assert runs["sigma/mine"].changed == {"sigmas": [1.0, 2.0]} and runs["sigma/mine"].parameters[RUN] == "mine"
    assert runs["demo/mine"].source is None  # no file: the notebook's defaults
    overridden = plan(wb, ["sigma", "kernel"], "mine", {"model": "ViT-L-14", "pretrained": None})
    assert [r.name for r in overridden] == ["mine-model=ViT-L-14-pretrained=None", "mine-a", "bee"]
    assert overridden[0].parameters["model"] == "ViT-L-14" and "model" not in overridden[1].parameters


# -- one test per validation error -----------------------------------------------------------------------


def test_an_unknown_key_names_the_closest_parameter(tmp_path):
    wb = workbook(tmp_path, {"typo/sigma.yaml": "sigmaz: [1.0]\n"})
    with pytest.raises(ValueError, match=r"unknown parameter 'sigmaz' for study 'sigma'; did you mean 'sigmas'\?"):
        plan(wb, (), "typo")


def test_a_misspelt_key_is_not_silently_ignored(tmp_path):
    wb = workbook(tmp_path, {"typo/sigma.yaml": "pamr_step: 0\n"})
    with pytest.raises(ValueError, match="did you mean 'pamr_steps'"):
        plan(wb, ["sigma"], "typo")


def test_a_value_of_the_wrong_kind(tmp_path):
    wb = workbook(tmp_path, {"kind/sigma.yaml": "sigmas: 5\n"})
    with pytest.raises(ValueError, match=r"sigmas=5; sigma.ipynb expects a list"):
        plan(wb, ["sigma"], "kind")


def test_a_file_for_an_unknown_study(tmp_path):
    wb = workbook(tmp_path, {"typo/sigmaa.yaml": "run: x\n"})
    with pytest.raises(ValueError, match="no study 'sigmaa' in this workbook; did you mean 'sigma'"):
        plan(wb, (), "typo")


def test_an_unknown_study_or_profile(tmp_path):
    wb = workbook(tmp_path, {"smoke/sigma.yaml": "run: smoke\n"})
    with pytest.raises(ValueError, match="no study 'sigmaz'; did you mean 'sigma'"):
        plan(wb, ["sigmaz"], "smoke")
    with pytest.raises(FileNotFoundError, match="no profile 'smok'.*did you mean 'smoke'"):
        plan(wb, (), "smok")


def test_the_results_folder_is_not_a_file_parameter(tmp_path):
    wb = workbook(tmp_path, {"p/kernel.yaml": "results_dir: /elsewhere\n"})
    with pytest.raises(ValueError, match="set by the runner"):
        plan(wb, ["kernel"], "p")


def test_two_runs_with_one_name(tmp_path):
    wb = workbook(tmp_path, {"p/kernel/a.yaml": "run: same\n", "p/kernel/b.yaml": "run: same\n"})
    with pytest.raises(ValueError, match="same name"):
        plan(wb, ["kernel"], "p")


def test_a_file_that_is_not_a_mapping(tmp_path):
    wb = workbook(tmp_path, {"p/kernel.yaml": "- 1\n- 2\n"})
    with pytest.raises(ValueError, match="expected a mapping"):
        plan(wb, ["kernel"], "p")


def test_malformed_yaml_names_the_file_and_line(tmp_path, capsys):
    from naclip.cli import main

    wb = workbook(tmp_path, {"p/kernel.yaml": "run: x\nsigma: [1, 2\n"})
    with pytest.raises(ValueError, match=r"kernel.yaml: not valid YAML \(line 3, column 1\): expected ',' or ']'"):
        plan(wb, ["kernel"], "p")
    folders = ["--notebooks", str(wb.notebooks), "--params", str(wb.params), "--results", str(wb.results)]
    assert main(["workbook", "run", "kernel", "--profile", "p", "--dry-run", *folders]) == 2
    err = capsys.readouterr().err
    assert err.startswith("naclip workbook: error: ") and "kernel.yaml: not valid YAML (line 3" in err
    assert len(err.strip().splitlines()) == 1


def test_a_parameters_cell_that_is_not_literal():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("a = 1\nb = a + 1", metadata={"tags": ["parameters"]})]
    with pytest.raises(ValueError, match="'b' is not a literal"):
        notebook_parameters(nb, "x.ipynb")
    nb.cells = []
    with pytest.raises(ValueError, match="one cell tagged 'parameters', found 0"):
        notebook_parameters(nb, "x.ipynb")


# -- where the workbook is -------------------------------------------------------------------------------


def test_the_workbook_is_found_by_its_marker_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv(ROOT_ENV, raising=False)
    assert find_notebooks(start=NOTEBOOKS) == NOTEBOOKS  # JupyterLab: the notebook's folder
    assert find_notebooks(start=ROOT / "naclip" / "workbook") == NOTEBOOKS
    assert find_notebooks(start=tmp_path) == NOTEBOOKS  # elsewhere: the checkout naclip runs from
    mine = tmp_path / "mine"
    (mine / "notebooks").mkdir(parents=True)
    (mine / MARKER_FILE).write_text("")
    assert find_notebooks(start=mine / "notebooks" / "deeper") == mine / "notebooks"
    assert Workbook.at(mine / "notebooks").results == mine / "results"
    monkeypatch.setenv(ROOT_ENV, str(mine))
    assert find_notebooks(start=tmp_path) == mine / "notebooks"


def test_a_folder_holding_a_notebook_is_not_taken_for_a_workbook(tmp_path, monkeypatch):
    """A copied notebook (~/mine/sigma.ipynb) is outside any workbook: its parent is not a workbook's root."""
    monkeypatch.delenv(ROOT_ENV, raising=False)
    copy = tmp_path / "mine"
    copy.mkdir()
    shutil.copy(NOTEBOOKS / "sigma.ipynb", copy)
    (tmp_path / "notebooks").mkdir()  # a folder of that name is no marker either
    shutil.copy(NOTEBOOKS / "sigma.ipynb", tmp_path / "notebooks")
    assert workbook_root(copy) is None and workbook_root(tmp_path / "notebooks") is None
    assert find_notebooks(start=copy) == NOTEBOOKS  # the command line still falls back to the checkout
