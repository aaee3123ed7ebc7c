"""The runner: skip completed runs, --force, failures reported at the end, provenance and the index."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from PIL import Image

from naclip.workbook import regenerate as regen
from naclip.workbook.cli import _run
from naclip.workbook.index import write_index
from naclip.workbook.outputs import RANDOM_BANNER, RunOutputs
from naclip.workbook.params import Study, expand
from naclip.workbook.runner import FAILED, MARKER, execute_runs, is_complete, notebook_kernel


class FakeNotebook:
    """Stands in for papermill: writes a table and a figure like a study notebook; fails on demand."""

    def __init__(self, fail: set[str] = frozenset()):
        self.fail = set(fail)
        self.calls: list[str] = []

    def __call__(self, notebook: Path, output: Path, parameters: dict, cwd: Path) -> None:
        name = Path(parameters["out_dir"]).name
        self.calls.append(name)
        output.write_text("{}")
        out = RunOutputs(parameters["out_dir"], parameters["random_weights"])
        out.table(pd.DataFrame({"sigma": [parameters["sigma"]], "mIoU": [1.0]}), "results", "a table")
        if name in self.fail:
            raise RuntimeError(f"boom in {name}")
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.plot([0, 1], [0, 1])
        out.figure(fig, "line", "a line")
        plt.close(fig)


@pytest.fixture
def layout(tmp_path):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    (notebooks / "01_s.ipynb").write_text("{}")
    return notebooks, tmp_path / "results"


def runs(pretrained="openai"):
    return expand(Study("sweep", "01_s.ipynb", "Sweep", {"sigma": 1.0, "pretrained": pretrained},
                        {"sigma": [1.0, 2.0, 3.0]}))


def test_runs_write_outputs_and_a_marker_then_are_skipped(layout):
    notebooks, results = layout
    fake = FakeNotebook()
    report = execute_runs(runs(), results, notebooks, fake, log=lambda _: None)
    assert len(report.executed) == 3 and report.ok
    folder = results / "sweep" / "sigma=2.0"
    record = json.loads((folder / MARKER).read_text())
    assert record["parameters"] == {"sigma": 2.0, "pretrained": "openai"} and not record["random_weights"]
    assert record["provenance"]["torch"] and record["provenance"]["git_commit"] and record["seconds"] >= 0
    assert {p.name for p in folder.iterdir()} >= {"results.csv", "line.png", "line.svg", "01_s.ipynb"}

    again = execute_runs(runs(), results, notebooks, fake, log=lambda _: None)
    assert len(again.skipped) == 3 and not again.executed and fake.calls == [r.name for r in runs()]

    forced = execute_runs(runs()[:1], results, notebooks, fake, force=True, log=lambda _: None)
    assert [r.name for r in forced.executed] == ["sigma=1.0"]


def test_a_failure_does_not_stop_the_others_and_the_rerun_does_only_it(layout):
    notebooks, results = layout
    report = execute_runs(runs(), results, notebooks, FakeNotebook(fail={"sigma=2.0"}), log=lambda _: None)
    assert [r.name for r in report.executed] == ["sigma=1.0", "sigma=3.0"]
    assert [(r.name, e) for r, e in report.failed] == [("sigma=2.0", "boom in sigma=2.0")]
    failed = results / "sweep" / "sigma=2.0"
    assert (failed / FAILED).is_file() and not (failed / MARKER).exists()

    fixed = FakeNotebook()
    rerun = execute_runs(runs(), results, notebooks, fixed, log=lambda _: None)
    assert fixed.calls == ["sigma=2.0"] and rerun.ok and not (failed / FAILED).exists()


def test_an_interrupted_run_is_redone(layout):
    notebooks, results = layout
    execute_runs(runs(), results, notebooks, FakeNotebook(), log=lambda _: None)
    (results / "sweep" / "sigma=3.0" / MARKER).unlink()  # killed before its marker was written
    fake = FakeNotebook()
    execute_runs(runs(), results, notebooks, fake, log=lambda _: None)
    assert fake.calls == ["sigma=3.0"]


def test_changed_parameters_or_notebook_make_a_run_stale(layout):
    notebooks, results = layout
    (run, *_) = runs()
    execute_runs([run], results, notebooks, FakeNotebook(), log=lambda _: None)
    folder = results / "sweep" / run.name
    assert is_complete(folder, run.key(notebooks / "01_s.ipynb"))
    (notebooks / "01_s.ipynb").write_text('{"changed": 1}')
    assert not is_complete(folder, run.key(notebooks / "01_s.ipynb"))
    changed = expand(Study("sweep", "01_s.ipynb", "Sweep", {"sigma": 1.0, "pretrained": None}, {}))[0]
    assert changed.key(notebooks / "01_s.ipynb") != run.key(notebooks / "01_s.ipynb")


def test_a_missing_notebook_is_a_reported_failure(layout):
    notebooks, results = layout
    (notebooks / "01_s.ipynb").unlink()
    report = execute_runs(runs()[:1], results, notebooks, FakeNotebook(), log=lambda _: None)
    assert "does not exist" in report.failed[0][1]


def test_index_links_every_table_figure_and_notebook_and_marks_random_weights(layout):
    notebooks, results = layout
    execute_runs(runs(pretrained=None), results, notebooks, FakeNotebook(fail={"sigma=3.0"}), log=lambda _: None)
    index = write_index(results, banner="fell back").read_text()
    assert "fell back" in index and RANDOM_BANNER in index
    for name in ("sigma=1.0", "sigma=2.0"):
        for file in ("results.csv", "line.png", "line.svg", "01_s.ipynb"):
            link = f"sweep/{name}/{file}"
            assert f"({link})" in index and (results / link).is_file()
    assert "sweep/sigma=3.0" in index and "boom in sigma=3.0" in index and "failed" in index
    combined = pd.read_csv(results / "sweep" / "results.all-runs.csv")
    assert sorted(combined["run"]) == ["sigma=1.0", "sigma=2.0"] and combined["random_weights"].all()
    assert "(sweep/results.all-runs.csv)" in index
    with Image.open(results / "sweep" / "sigma=1.0" / "line.png") as image:
        assert image.width > 50 and image.height > 50


def test_regenerate_falls_back_to_smoke_with_a_banner_when_weights_are_missing(tmp_path, monkeypatch):
    params = tmp_path / "params"
    params.mkdir()
    (params / "a.yaml").write_text("notebook: 01_s.ipynb\nparameters: {model: ViT-B-16, pretrained: openai, "
                                   "sigma: 5.0}\n")
    (params / "samples.yaml").write_text("parameters: {model: ViT-B-16, pretrained: openai}\n")
    (params / "smoke.yaml").write_text("parameters: {model: naclip-tiny, pretrained: null}\n")
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    (notebooks / "01_s.ipynb").write_text("{}")
    monkeypatch.setattr(regen, "weights_error", lambda model, pretrained: "no network")
    fake = FakeNotebook()
    report = regen.regenerate(results=tmp_path / "results", params_dir=params, notebooks=notebooks,
                              executor=fake, log=lambda _: None)
    (run,) = report.executed
    assert run.parameters["model"] == "naclip-tiny" and run.random_weights
    record = json.loads((tmp_path / "results" / "a" / "default" / MARKER).read_text())
    assert record["profile"] == "smoke" and "could not be loaded" in record["note"]
    assert "no network" in (tmp_path / "results" / "index.md").read_text()
    with pytest.raises(FileNotFoundError, match="smoke"):
        regen.regenerate(profile="nope", params_dir=params, notebooks=notebooks, executor=fake)


def test_cli_exit_status_reports_failures(monkeypatch, capsys, layout):
    notebooks, results = layout
    fake = FakeNotebook(fail={"sigma=1.0"})
    monkeypatch.setattr(regen, "regenerate", lambda *a, **k: execute_runs(runs(), results, notebooks, fake,
                                                                         log=lambda _: None))
    args = type("Args", (), {"targets": [], "profile": "smoke", "results": results, "force": False})()
    assert _run(args) == 1
    captured = capsys.readouterr()
    assert "2 run(s) executed, 0 skipped, 1 failed" in captured.out
    assert "FAILED sweep/sigma=1.0: boom in sigma=1.0" in captured.err


def test_notebook_kernel_runs_this_interpreter_and_is_temporary(monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", "/elsewhere")
    with notebook_kernel() as name:
        spec = KernelSpecManager().get_kernel_spec(name)
        assert spec.argv[:3] == [sys.executable, "-m", "ipykernel_launcher"]
        assert os.environ["JUPYTER_PATH"].endswith(os.pathsep + "/elsewhere")
    assert os.environ["JUPYTER_PATH"] == "/elsewhere"
