"""The runner on a stand-in executor: complete runs skipped, stale ones redone (and why), failures reported,
parameter files written, the index (Markdown and HTML), the command line, progress on the console."""

from __future__ import annotations

import io
import json
import os
import re
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import nbformat
import pandas as pd
import pytest
import yaml
from jupyter_client.kernelspec import KernelSpecManager

import naclip
from naclip import cli
from naclip.workbook import outputs, runner
from naclip.workbook import regenerate as regen
from naclip.workbook.layout import ROOT_ENV, Workbook
from naclip.workbook.outputs import FAILED, MANIFEST, MARKER, RANDOM_BANNER, RunOutputs
from naclip.workbook.params import plan
from naclip.workbook.runner import ConsoleBars, execute_runs, notebook_kernel, run_dir, run_state


class FakeNotebook:
    """Stands in for papermill: writes a table and a figure as a study notebook does; fails on demand."""

    def __init__(self, fail: set[str] = frozenset()):
        self.fail = set(fail)
        self.calls: list[str] = []

    def __call__(self, notebook: Path, output: Path, parameters: dict, cwd: Path) -> None:
        self.calls.append(parameters["run"])
        output.write_text("{}")
        out = RunOutputs(notebook.stem, parameters["run"], parameters["results_dir"])
        random = parameters["pretrained"] is None
        out.loaded(
            pd.DataFrame({"model": ["tiny"], "pretrained": [parameters["pretrained"]], "random_weights": [random]})
        )
        out.table(pd.DataFrame({"sigma": [parameters["sigma"]], "mIoU": [12.345]}), "results", "a table")
        if parameters["run"] in self.fail:
            raise RuntimeError(f"boom in {parameters['run']}")
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.plot([0, 1], [0, 1])
        out.figure(fig, "line", "a line")
        plt.close(fig)


def write_study(folder: Path, name: str = "sweep", pretrained: str | None = "openai") -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell(f"# The {name} study"),
        nbformat.v4.new_code_cell(
            f'run = "samples"\nresults_dir = "results"\nmodel = "tiny"\npretrained = {pretrained!r}\nsigma = 1.0',
            metadata={"tags": ["parameters"]},
        ),
    ]
    path = folder / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.fixture
def wb(tmp_path, monkeypatch) -> Workbook:
    """A workbook of one study and a profile `p` of three runs (sigma 1, 2, 3)."""
    monkeypatch.setenv(ROOT_ENV, str(tmp_path))
    (tmp_path / "notebooks").mkdir()
    write_study(tmp_path / "notebooks")
    for n in (1, 2, 3):
        path = tmp_path / "params" / "p" / "sweep" / f"s{n}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"sigma: {n}.0\n" + ("pretrained: null\n" if n == 3 else ""))
    return Workbook.at(tmp_path / "notebooks")


def quiet(_: str) -> None:
    pass


def test_runs_write_outputs_a_parameter_file_and_a_record_then_are_skipped(wb):
    fake = FakeNotebook()
    runs = plan(wb, (), "p")
    report = execute_runs(runs, wb, fake, log=quiet)
    assert len(report.executed) == 3 and report.ok
    folder = wb.results / "sweep" / "p-s2"
    record = json.loads((folder / MARKER).read_text())
    assert record["parameters"] == {"run": "p-s2", "model": "tiny", "pretrained": "openai", "sigma": 2.0}
    assert record["key"]["naclip_version"] == naclip.__version__ and record["key"]["code"] == outputs.code_digest()
    assert record["provenance"]["torch"] and record["seconds"] >= 0 and not record["random_weights"]
    assert json.loads((wb.results / "sweep" / "p-s3" / MARKER).read_text())["random_weights"]
    written = yaml.safe_load((folder / runner.PARAMETERS).read_text())  # what papermill -f reads
    assert written == {**record["parameters"], "results_dir": "results"}
    assert {p.name for p in folder.iterdir()} >= {"results.csv", "line.png", "line.svg", "sweep.ipynb", MANIFEST}

    again = execute_runs(plan(wb, (), "p"), wb, fake, log=quiet)
    assert len(again.skipped) == 3 and not again.executed and fake.calls == ["p-s1", "p-s2", "p-s3"]
    forced = execute_runs(plan(wb, (), "p")[:1], wb, fake, force=True, log=quiet)
    assert [r.name for r in forced.executed] == ["p-s1"]


def test_a_failure_does_not_stop_the_others_and_the_rerun_does_only_it(wb):
    report = execute_runs(plan(wb, (), "p"), wb, FakeNotebook(fail={"p-s2"}), log=quiet)
    assert [r.name for r in report.executed] == ["p-s1", "p-s3"]
    ((failed, error),) = report.failed
    assert failed.name == "p-s2" and "boom" in error
    assert str(run_state(run_dir(wb.results, failed), failed)) == "failed (boom in p-s2)"
    fake = FakeNotebook()
    rerun = execute_runs(plan(wb, (), "p"), wb, fake, jobs=2, log=quiet)
    assert fake.calls == ["p-s2"] and len(rerun.skipped) == 2
    assert not (wb.results / "sweep" / "p-s2" / FAILED).exists()


def state(wb: Workbook, name: str = "p-s1") -> str:
    (run,) = [r for r in plan(wb, (), "p") if r.name == name]
    return str(run_state(run_dir(wb.results, run), run))


def test_a_run_goes_stale_when_its_notebook_parameters_or_library_change(wb, monkeypatch):
    assert state(wb) == "missing"
    execute_runs(plan(wb, (), "p"), wb, FakeNotebook(), log=quiet)
    assert state(wb) == "complete"

    version = naclip.__version__
    with monkeypatch.context() as patch:
        patch.setattr(naclip, "__version__", "99.0")
        assert state(wb) == f"stale (naclip {version} -> 99.0)"
    with monkeypatch.context() as patch:
        patch.setattr(outputs, "code_digest", lambda: "another commit")
        assert state(wb) == "stale (naclip's code changed)"
    assert state(wb) == "complete"

    (wb.params / "p" / "sweep" / "s1.yaml").write_text("sigma: 1.5\n")
    assert state(wb) == "stale (parameters changed: sigma: 1.0 -> 1.5)"
    write_study(wb.notebooks).write_text(write_study(wb.notebooks).read_text().replace("The sweep", "A sweep"))
    assert state(wb, "p-s2") == "stale (the notebook changed)"

    (wb.results / "sweep" / "p-s3" / MARKER).unlink()  # outputs without a record: interrupted
    assert state(wb, "p-s3").startswith("stale (outputs without a run record")
    fake = FakeNotebook()
    execute_runs(plan(wb, (), "p"), wb, fake, log=quiet)
    assert fake.calls == ["p-s1", "p-s2", "p-s3"]


def test_the_index_shows_every_table_and_figure_marks_random_runs_and_gives_provenance(wb):
    execute_runs(plan(wb, (), "p"), wb, FakeNotebook(fail={"p-s2"}), log=quiet)
    markdown, page = (p.read_text() for p in runner_index(wb))
    for name in ("p-s1", "p-s3"):
        for link in ("results.csv", "line.png", "line.svg", "sweep.ipynb", "parameters.yaml"):
            assert f"(sweep/{name}/{link})" in markdown
    assert "boom in p-s2" in markdown and RANDOM_BANNER in markdown
    assert page.count('<img alt="a line" src="data:image/png;base64,') == 2  # every figure, embedded
    assert page.count('<table class="dataframe data"') == 3 and page.count("<td>12.35</td>") == 3  # all rendered
    assert page.count('class="run random"') == 1 and 'id="sweep-p-s3"' in page
    assert "commit " in page and "naclip " + naclip.__version__ in page and "boom in p-s2" in page
    assert (wb.results / "sweep" / "results.all-runs.csv").is_file()


def runner_index(wb: Workbook) -> list[Path]:
    from naclip.workbook.index import write_index

    return write_index(wb)


def test_regenerate_falls_back_to_smoke_with_a_banner_when_weights_are_missing(wb, monkeypatch):
    (wb.params / "smoke").mkdir()
    (wb.params / "smoke" / "sweep.yaml").write_text("run: smoke\npretrained: null\n")
    monkeypatch.setattr(regen, "weights_error", lambda model, pretrained: "no network")
    report = regen.regenerate(workbook=wb, executor=FakeNotebook(), log=quiet)
    (run,) = report.executed
    assert run.name == "smoke" and run.parameters["pretrained"] is None
    record = json.loads((wb.results / "sweep" / "smoke" / MARKER).read_text())
    assert record["profile"] == "smoke" and "could not be loaded" in record["note"] and record["random_weights"]
    assert "no network" in (wb.results / "index.md").read_text()
    assert "no network" in (wb.results / "index.html").read_text()


def args(wb: Workbook, *argv: str) -> list[str]:
    return [*argv, "--notebooks", str(wb.notebooks), "--params", str(wb.params), "--results", str(wb.results)]


def test_cli_run_reports_failures_and_dry_run_runs_nothing(wb, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(
        regen, "papermill_executor", lambda kernel, lines: calls.append(kernel) or FakeNotebook({"p-s1"})
    )
    assert cli.main(args(wb, "workbook", "run", "--profile", "p", "--dry-run")) == 0
    out = capsys.readouterr().out
    assert not calls and not wb.results.exists()
    assert "run  sweep/p-s1: missing; parameters from" in out and "sigma=2.0" in out

    assert cli.main(args(wb, "workbook", "run", "--profile", "p")) == 1
    captured = capsys.readouterr()
    assert "2 run(s) executed, 0 skipped, 1 failed" in captured.out
    assert "FAILED sweep/p-s1: boom in p-s1" in captured.err

    assert cli.main(args(wb, "workbook", "list")) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0] == "sweep: The sweep study"
    assert re.match(r"\s+samples\s+missing$", listing[1]) and re.match(r"\s+p-s1\s+failed \(boom in p-s1\)", listing[2])
    assert re.match(r"\s+p-s2\s+complete$", listing[3])


def test_cli_model_and_pretrained_override_the_profile_and_must_load(wb, monkeypatch, capsys):
    monkeypatch.setattr(regen, "weights_error", lambda model, pretrained: f"{pretrained} is not here")
    assert cli.main(args(wb, "workbook", "run", "--pretrained", "/nope.pt", "--model", "ViT-L-14")) == 2
    assert "ViT-L-14//nope.pt: /nope.pt is not here" in capsys.readouterr().err
    monkeypatch.setattr(regen, "weights_error", lambda model, pretrained: None)
    assert cli.main(args(wb, "workbook", "run", "--profile", "p", "--model", "ViT-L-14", "--dry-run")) == 0
    out = capsys.readouterr().out
    assert "sweep/p-s1-model=ViT-L-14: missing" in out and "model='ViT-L-14'" in out
    assert cli.main(args(wb, "workbook", "run", "--profile", "p", "--pretrained", "none", "--dry-run")) == 0
    assert "pretrained=None" in capsys.readouterr().out


def message(kind: str, comm: str, **state) -> dict:
    return {"msg_type": kind, "content": {"comm_id": comm, "data": {"state": state}}}


def test_console_bars_mirror_the_notebooks_progress_widgets():
    stream = io.StringIO()
    bars = ConsoleBars(stream)
    bars.message(message("comm_open", "l", _model_name="HTMLModel", value=""))
    bars.message(message("comm_open", "b", _model_name="FloatProgressModel", value=0, max=4))
    bars.message(message("comm_open", "r", _model_name="HTMLModel", value=""))
    bars.message(
        message("comm_open", "box", _model_name="HBoxModel", children=["IPY_MODEL_l", "IPY_MODEL_b", "IPY_MODEL_r"])
    )
    assert stream.getvalue() == ""
    for n in range(5):  # tqdm's order: the bar, the description, then the counts
        bars.message(message("comm_msg", "b", value=n))
        bars.message(message("comm_msg", "l", value=f"voc21:\u2007{25 * n}%"))
        bars.message(message("comm_msg", "r", value=f"\u2007{n}/4\u2007[00:0{n}&lt;00:0{4 - n}]"))
    lines = stream.getvalue().splitlines()
    assert lines == [
        "    voc21: 0% |                    |  0/4 [00:00<00:04]",
        "    voc21: 100% |████████████████████|  4/4 [00:04<00:00]",
    ]


def test_notebook_kernel_runs_this_interpreter_and_is_temporary(monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", "/elsewhere")
    with notebook_kernel() as name:
        spec = KernelSpecManager().get_kernel_spec(name)
        assert spec.argv[:3] == [sys.executable, "-m", "ipykernel_launcher"]
        assert os.environ["JUPYTER_PATH"].endswith(os.pathsep + "/elsewhere")
    assert os.environ["JUPYTER_PATH"] == "/elsewhere"


def test_outputs_refuse_to_write_before_saying_what_ran(wb):
    out = RunOutputs("sweep", "x", "results")
    with pytest.raises(RuntimeError, match="out.loaded"):
        out.table(pd.DataFrame({"a": [1]}), "t")
    assert not out.out_dir.exists()  # a run that fails before writing anything leaves no folder
    assert out.out_dir == wb.root / "results" / "sweep" / "x"
    assert out.path("images/a.jpg") == wb.root / "images" / "a.jpg" and out.path("/abs") == Path("/abs")


def test_the_markdown_index_escapes_names_and_parameters_as_the_html_one(wb):
    live = "<img src=x onerror=alert(1)>"
    (wb.params / "p" / "sweep" / "s1.yaml").write_text(f'sigma: 1.0\nmodel: "{live} `x` | [a](javascript:b) *c*"\n')
    execute_runs(plan(wb, ["sweep"], "p"), wb, FakeNotebook(fail={"p-s2"}), log=quiet)
    record = json.loads((wb.results / "sweep/p-s2" / FAILED).read_text())
    record["error"] = f"```\n{live}\n```"
    (wb.results / "sweep/p-s2" / FAILED).write_text(json.dumps(record))
    markdown, page = (p.read_text() for p in runner_index(wb))
    fenced = "- error:\n\n````\n```\n" + live + "\n```\n````\n"  # a fence the error cannot close: literal text
    assert fenced in markdown and live not in markdown.replace(fenced, "") and live not in page
    shown = "&#x27;&lt;img src=x onerror=alert(1)&gt; \\`x\\` \\| \\[a\\](javascript:b) \\*c\\*&#x27;"
    assert f"<code>model={shown}</code>" in markdown  # rendered as the value itself, nothing live
    assert "<code>model=&#x27;&lt;img src=x onerror=alert(1)&gt;" in page


# -- a notebook records its own run, whoever executes it ---------------------------------------------------

PARAMETERS_CELL = 'run = "samples"\nresults_dir = "results"\nmodel = "tiny"\npretrained = "openai"\nsigma = 1.0'


def kernel_namespace(*cells: str) -> dict:
    """What a notebook's kernel holds after running `cells`: IPython's ``In`` and the names they set."""
    namespace: dict = {"In": ["", *cells]}
    for cell in cells:
        exec(cell, namespace)
    return namespace


def test_a_notebook_run_by_papermill_records_itself_and_is_complete(wb):
    """papermill -p sigma 3 -p run mine: parameters.yaml and run.json from the notebook, complete in the list."""
    namespace = kernel_namespace(PARAMETERS_CELL, '# Parameters\nsigma = 3.0\nrun = "mine"\n')
    out = RunOutputs.start("sweep", namespace)
    out.loaded(pd.DataFrame({"model": ["tiny"], "pretrained": ["openai"], "random_weights": [False]}))
    out.table(pd.DataFrame({"sigma": [3.0], "mIoU": [1.0]}), "results")
    assert "mine" in "\n".join(regen.listing(wb)) and not (out.out_dir / MARKER).exists()
    out.finish()
    written = yaml.safe_load((out.out_dir / runner.PARAMETERS).read_text())
    assert written == {"run": "mine", "results_dir": "results", "model": "tiny", "pretrained": "openai", "sigma": 3.0}
    record = json.loads((out.out_dir / MARKER).read_text())
    assert record["recorded_by"] == "the notebook" and not record["random_weights"] and record["seconds"] >= 0
    (line,) = [line for line in regen.listing(wb) if "mine" in line]
    assert line.split() == ["mine", "complete"]
    # Run All after editing the parameters cell: the cell's own values are the run's
    edited = kernel_namespace(PARAMETERS_CELL.replace("samples", "edited").replace("1.0", "2.0"))
    assert RunOutputs.start("sweep", edited).parameters["sigma"] == 2.0


@pytest.mark.parametrize(
    "injected, message",
    [
        ("sigmaa = 3", "papermill parameters: unknown parameter 'sigmaa' for study 'sweep'; did you mean 'sigma'?"),
        ("sigma = 'three'", "papermill parameters: sigma='three'; sweep.ipynb expects a number (default 1.0)"),
    ],
)
def test_injected_parameters_are_checked_against_the_parameters_cell(wb, injected, message):
    namespace = kernel_namespace(PARAMETERS_CELL, f"# Parameters\n{injected}\n")
    with pytest.raises(ValueError, match=re.escape(message)):
        RunOutputs.start("sweep", namespace)
    assert not (wb.results / "sweep").exists()


def papermill_sweep(wb: Workbook, sigmas: list[float], pretrained: str | None = "openai") -> None:
    """What `for s in ...; do papermill sweep.ipynb out.ipynb -y "{sigma: $s, run: s$s}"; done` leaves."""
    for sigma in sigmas:
        injected = f'# Parameters\nsigma = {sigma}\nrun = "s{sigma:g}"\npretrained = {pretrained!r}\n'
        out = RunOutputs.start("sweep", kernel_namespace(PARAMETERS_CELL, injected))
        random = pretrained is None
        out.loaded(pd.DataFrame({"model": ["tiny"], "pretrained": [pretrained], "random_weights": [random]}))
        rows = pd.DataFrame({"benchmark": ["voc", "ade"], "mIoU": [10 * sigma, 5 * sigma]})
        out.table(rows, "results")
        out.finish()


def test_gather_makes_one_curve_of_a_papermill_sweep(wb, capsys):
    papermill_sweep(wb, [1.0, 3.0, 5.0])
    assert cli.main(["workbook", "gather", "sweep", "--notebooks", str(wb.notebooks)]) == 0
    folder = wb.results / "sweep" / "gathered"
    table = pd.read_csv(folder / "results.csv")
    assert sorted(table.run.unique()) == ["s1", "s3", "s5"] and len(table) == 6
    assert table.set_index(["run", "benchmark"]).loc[("s3", "ade")].tolist()[:2] == [15.0, 3.0]  # mIoU, sigma
    manifest = outputs.read_manifest(folder)
    assert [f["name"] for f in manifest["figures"]] == ["gathered"] and (folder / "gathered.png").is_file()
    assert not manifest["random_weights"] and "random_weights" not in table
    (line,) = [line for line in regen.listing(wb) if "gathered" in line]
    assert line.split() == ["gathered", "complete"]
    assert 'id="sweep-gathered"' in (wb.results / "index.html").read_text()
    assert "index: " in capsys.readouterr().out


def test_gather_says_what_is_wrong(wb, capsys):
    papermill_sweep(wb, [1.0])
    assert cli.main(["workbook", "gather", "sweep", "--notebooks", str(wb.notebooks)]) == 2
    assert "1 complete run(s) ['s1']; gathering needs at least 2" in capsys.readouterr().err
    papermill_sweep(wb, [2.0], pretrained=None)  # random weights: the gathered outputs say so
    assert cli.main(["workbook", "gather", "sweep", "--x", "model", "--notebooks", str(wb.notebooks)]) == 2
    assert "--x 'model': not a parameter that differs between the runs; expected one of: pretrained, sigma" in (
        capsys.readouterr().err
    )
    assert cli.main(["workbook", "gather", "sweep", "--x", "sigma", "--notebooks", str(wb.notebooks)]) == 0
    assert pd.read_csv(wb.results / "sweep" / "gathered" / "results.csv").random_weights.all()


def test_workbook_index_rebuilds_the_index_on_its_own(wb, capsys):
    papermill_sweep(wb, [1.0])
    assert cli.main(["workbook", "index", "--notebooks", str(wb.notebooks)]) == 0
    assert 'id="sweep-s1"' in (wb.results / "index.html").read_text()
    assert f"index: {wb.results / 'index.md'}" in capsys.readouterr().out
