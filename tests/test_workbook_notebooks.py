"""The study notebooks for real: every study through the runner with the smoke profile (and the HTML index of it),
a notebook run by hand with `papermill -f` from another folder, an interrupted run resumed."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import yaml
from PIL import Image

from naclip.workbook.index import INDEX_HTML
from naclip.workbook.layout import MARKER_FILE, ROOT_ENV, Workbook
from naclip.workbook.outputs import MARKER, RANDOM_BANNER, read_manifest
from naclip.workbook.published import REPORTS
from naclip.workbook.regenerate import regenerate

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS, PARAMS = ROOT / "notebooks", ROOT / "params"
PAPERMILL = [sys.executable, "-m", "papermill", "--kernel", "python3", "--no-progress-bar"]
# study -> {table: (columns it must have, rows)}, figures (the smoke profile: one voc20 sample image)
EXPECTED = {
    "main": (
        {
            "results": ({"benchmark", "method", "post-processing", "protocol", "mIoU", "n_images"}, 6),
            "per_class": ({"benchmark", "method", "class_name", "IoU"}, 20 * 6),
            "comparison": ({"benchmark", "method", "images", "mIoU", "published", "gap", "note"}, 12),
            "per_class_iou": ({"benchmark", "class_name", "clip", "maskclip", "naclip"}, 20),
        },
        ["main", "per_class"],
    ),
    "components": (
        {
            "results": ({"variant", "attention", "arch", "mIoU"}, 8),
            "per_class": ({"IoU"}, 8 * 20),
            "comparison": ({"variant", "gap", "note"}, 16),
        },
        ["components"],
    ),
    "plugins": (
        {
            "combinations": ({"base", "plugin", "method", "combination"}, 2),
            "results": ({"benchmark", "method", "protocol", "mIoU"}, 4),
            "plugin_effect": ({"base", "plugin", "without", "with_plugin", "change", "combination"}, 2),
        },
        ["plugins"],
    ),
    "sigma": ({"results": ({"sigma", "post-processing", "mIoU"}, 6), "comparison": ({"sigma", "gap"}, 12)}, ["sigma"]),
    "attention": ({"results": ({"attention", "mIoU"}, 6), "comparison": ({"attention", "note"}, 12)}, ["attention"]),
    "architecture": (
        {"results": ({"attention", "arch", "mIoU"}, 6), "comparison": ({"attention", "arch"}, 12)},
        ["architecture"],
    ),
    "backbones": ({"results": ({"model", "method", "mIoU"}, 2), "comparison": ({"method", "gap"}, 4)}, ["backbone"]),
    "qualitative": ({}, ["qualitative"]),
    "attention_maps": (
        {"attention_maps": ({"method", "query_row", "row", "weight"}, 3 * 3 * 21 * 21)},
        ["attention_maps"],
    ),
    "kernel": ({"kernel": ({"sigma", "row", "col", "distance", "omega"}, 3 * 14 * 14)}, ["kernel"]),
    "demo": ({"classes": ({"class", "pixel_share", "mean_probability"}, 7)}, ["overlay", "probabilities"]),
    "field": (
        {
            "results": ({"benchmark", "method", "protocol", "mIoU", "s_per_image", "gflops", "peak_memory_mib"}, 4),
            "per_class": ({"benchmark", "method", "protocol", "class_name", "IoU"}, 20 * 4),
            # per method: a row per protocol, then its printed rows (naclip-nopamr: paper, PEARL's re-run; sclip:
            # paper, README, PEARL's re-run)
            "field": ({"method", "row", "voc20", "avg (printed)", "avg (recomputed)", "avg differs", "source"}, 9),
            "costs": ({"method", "protocol", "s_per_image", "images_per_s", "peak_memory_mib", "gflops"}, 4),
            "protocol_fields": ({"protocol", "benchmark", "short_side", "logit_scale", "pamr_steps"}, 2),
            "published": ({"method", "kind", "by", "source", "avg (recomputed)"}, len(REPORTS)),
        },
        [],
    ),
}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    workbook = Workbook(NOTEBOOKS, PARAMS, tmp_path_factory.mktemp("smoke") / "results")
    report = regenerate(profile="smoke", workbook=workbook, jobs=2, log=lambda _: None)
    return report, workbook.results


def test_every_study_runs(smoke):
    report, _ = smoke
    assert report.ok, report.failed
    assert [r.study.name for r in report.executed] == list(EXPECTED)


@pytest.mark.parametrize("study", list(EXPECTED))
def test_study_outputs_are_marked_from_what_loaded(smoke, study):
    _, results = smoke
    tables, figures = EXPECTED[study]
    folder = results / study / "smoke"
    record = json.loads((folder / MARKER).read_text())
    random = study != "kernel"
    assert record["profile"] == "smoke" and record["random_weights"] == random
    manifest = read_manifest(folder)
    assert manifest["random_weights"] == random
    assert manifest["weights"] == (["naclip-tiny / random weights"] if random else [])
    assert {t["name"] for t in manifest["tables"]} == set(tables)
    for name, (columns, rows) in tables.items():
        frame = pd.read_csv(folder / f"{name}.csv")
        assert columns <= set(frame.columns), (name, sorted(frame.columns))
        assert len(frame) == rows, name
        assert ("random_weights" in frame) == random and (not random or frame.random_weights.all())
    assert [f["name"] for f in manifest["figures"]] == figures
    for name in figures:
        with Image.open(folder / f"{name}.png") as image:
            image.verify()
            assert image.width > 200 and image.height > 150
        assert (folder / f"{name}.svg").read_text().lstrip().startswith("<?xml")
    executed = nbformat.read(folder / record["notebook"], as_version=4)
    outputs = [o for cell in executed.cells if cell.cell_type == "code" for o in cell.outputs]
    assert outputs and not [o for o in outputs if o.output_type == "error"]
    texts = [o.get("text", "") for o in outputs]
    assert any(RANDOM_BANNER in t for t in texts) == random
    assert not any("TqdmWarning" in t or "PosixPath(" in t for t in texts)


def test_the_plugin_study_labels_each_combination(smoke):
    _, results = smoke
    effect = pd.read_csv(results / "plugins" / "smoke" / "plugin_effect.csv").set_index("base")
    assert effect.loc["sclip", "combination"].startswith("tlp on sclip published in PEARL's paper")
    assert effect.loc["naclip-nopamr", "combination"].startswith("tlp on naclip-nopamr published in PEARL's paper")
    frame = pd.read_csv(results / "plugins" / "smoke" / "results.csv").set_index("method")
    assert effect.loc["sclip", "with_plugin"] == frame.loc["sclip+tlp", "mIoU"]
    assert effect.loc["sclip", "change"] == frame.loc["sclip+tlp", "mIoU"] - frame.loc["sclip", "mIoU"]
    assert frame.loc["sclip+tlp", "tlp_grid"] == 80


def test_the_main_study_is_each_method_beside_its_published_row(smoke):
    _, results = smoke
    comparison = pd.read_csv(results / "main" / "smoke" / "comparison.csv")
    rows = comparison[comparison.benchmark == "voc20-sample"].set_index("method")
    assert list(rows.index) == ["clip", "maskclip", "sclip", "clearclip", "naclip-nopamr", "naclip"]
    assert rows.gap.isna().all()  # a sample of random weights is never compared
    assert rows.loc["naclip", "published"] == 83.03 and "sample: 1 of 1449 images" in rows.loc["naclip", "note"]
    assert (
        rows.loc["clip", "protocol"] == rows.loc["maskclip", "protocol"] == "NACLIP's protocol (no authors' "
        "run published)"
    )


def test_the_html_index_shows_every_table_and_figure_of_the_smoke_run(smoke):
    _, results = smoke
    page = (results / INDEX_HTML).read_text()
    figures = tables = 0
    for study in EXPECTED:
        folder = results / study / "smoke"
        manifest = read_manifest(folder)
        assert f'id="{study}-smoke"' in page
        for table in manifest["tables"]:
            assert f"<b>{table['name']}</b> ({table['rows']} rows)" in page
            assert f'href="{study}/smoke/{table["file"]}"' in page
        for figure in manifest["figures"]:
            assert f"<b>{figure['name']}</b>: {figure['caption']}" in page.replace("&#x27;", "'")
        figures += len(manifest["figures"])
        tables += len(manifest["tables"])
    assert page.count('src="data:image/png;base64,') == figures
    assert page.count('<table class="dataframe data"') == tables
    assert page.count('class="run random"') == len(EXPECTED) - 1 and "commit " in page


def test_a_second_run_skips_everything(smoke):
    _, results = smoke
    report = regenerate(profile="smoke", workbook=Workbook(NOTEBOOKS, PARAMS, results), log=lambda _: None)
    assert not report.executed and len(report.skipped) == len(EXPECTED)


@pytest.fixture
def workbook(tmp_path, monkeypatch) -> Path:
    """A copy of two study notebooks in a workbook of its own, and no NACLIP_WORKBOOK."""
    monkeypatch.delenv(ROOT_ENV, raising=False)
    (tmp_path / "notebooks").mkdir()
    (tmp_path / MARKER_FILE).write_text("")
    for study in ("demo", "kernel"):
        shutil.copy(NOTEBOOKS / f"{study}.ipynb", tmp_path / "notebooks")
    return tmp_path


def papermill(args: list[str], cwd: Path, ok: bool = True) -> str:
    """Run papermill in `cwd`; its stderr."""
    done = subprocess.run([*PAPERMILL, *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert (done.returncode == 0) == ok, done.stderr[-3000:]
    return done.stderr


def naclip_cli(*args: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "naclip", *args], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_a_papermill_run_is_a_run(workbook):
    """papermill -p ... -p run mine: the notebook writes parameters.yaml and run.json; the list calls it complete."""
    papermill(["notebooks/kernel.ipynb", "out.ipynb", "-y", "{grid: [8, 8], run: mine}"], workbook)
    folder = workbook / "results" / "kernel" / "mine"
    assert yaml.safe_load((folder / "parameters.yaml").read_text())["grid"] == [8, 8]
    assert json.loads((folder / MARKER).read_text())["parameters"]["grid"] == [8, 8]
    listing = naclip_cli("workbook", "list", cwd=workbook / "notebooks")
    assert re.search(r"^  mine +complete$", listing, re.M), listing


@pytest.mark.parametrize(
    "flag, message",
    [
        (["-p", "sigmas", "3"], "papermill parameters: sigmas=3; kernel.ipynb expects a list (default [1.0, 2.0"),
        (["-p", "sigma", "3"], "papermill parameters: unknown parameter 'sigma' for study 'kernel'; did you mean"),
    ],
)
def test_papermill_parameters_are_checked(workbook, flag, message):
    stderr = papermill(["notebooks/kernel.ipynb", "out.ipynb", *flag], workbook, ok=False)
    assert message in stderr
    assert not (workbook / "results").exists()


def test_a_copied_notebook_writes_under_its_working_directory_and_says_so(tmp_path, monkeypatch):
    """cp notebooks/kernel.ipynb ~/mine && cd ~/mine && papermill ...: outputs in ~/mine/results, never ~/results."""
    monkeypatch.delenv(ROOT_ENV, raising=False)
    mine = tmp_path / "mine"
    mine.mkdir()
    shutil.copy(NOTEBOOKS / "kernel.ipynb", mine)
    papermill(["kernel.ipynb", "out.ipynb", "-y", "{grid: [8, 8]}"], mine)
    assert (mine / "results" / "kernel" / "samples" / MARKER).is_file()
    assert not (tmp_path / "results").exists()
    executed = nbformat.read(mine / "out.ipynb", as_version=4)
    first = next(o.text for cell in executed.cells if cell.cell_type == "code" for o in cell.outputs)
    assert first.startswith(f"outputs: {mine / 'results' / 'kernel' / 'samples'} (no workbook")


def test_a_notebook_run_by_hand_from_another_folder_lands_in_the_results_and_is_marked(workbook):
    """`papermill -f` with a shipped profile file (random weights) and `-p`, from a folder that is not the
    notebooks': the outputs land in the workbook's results, marked."""
    elsewhere = workbook / "data" / "photos"
    elsewhere.mkdir(parents=True)
    papermill(
        [
            str(workbook / "notebooks" / "demo.ipynb"),
            "out.ipynb",
            "-f",
            str(PARAMS / "smoke" / "demo.yaml"),
            "-p",
            "pamr_steps",
            "0",
            "-p",
            "run",
            "by-hand",
        ],
        elsewhere,
    )
    folder = workbook / "results" / "demo" / "by-hand"
    manifest = read_manifest(folder)
    assert manifest["random_weights"] and [f["name"] for f in manifest["figures"]] == ["overlay", "probabilities"]
    assert manifest["weights"] == ["naclip-tiny / random weights"]
    assert pd.read_csv(folder / "classes.csv").random_weights.all()
    executed = nbformat.read(elsewhere / "out.ipynb", as_version=4)
    texts = [o.get("text", "") for cell in executed.cells if cell.cell_type == "code" for o in cell.outputs]
    assert any(RANDOM_BANNER in t for t in texts)


def test_a_killed_run_resumes_with_only_what_was_missing(workbook):
    """Kill `naclip workbook run` once the first of two runs finished; the rerun does only the second."""
    for name, sigma in (("a", 1.0), ("b", 2.0)):
        path = workbook / "params" / "p" / "kernel" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"grid: [8, 8]\npatch: [3, 3]\nsigmas: [{sigma}]\n")
    first = workbook / "results" / "kernel" / "p-a" / MARKER
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "naclip",
            "workbook",
            "run",
            "kernel",
            "--profile",
            "p",
            "--notebooks",
            str(workbook / "notebooks"),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not first.is_file() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert first.is_file() and not (workbook / "results" / "kernel" / "p-b" / MARKER).is_file()

    log: list[str] = []
    report = regenerate(["kernel"], profile="p", workbook=Workbook.at(workbook / "notebooks"), log=log.append)
    assert report.ok and [r.name for r in report.skipped] == ["p-a"], log
    assert [r.name for r in report.executed] == ["p-b"]


def test_a_saved_notebook_shows_its_progress_bars_as_they_ended(tmp_path):
    """The text a saved notebook keeps for a bar (where the widget's state is not stored) is its last frame."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("from naclip.progress import tqdm\nfor _ in tqdm(range(3), desc='images'):\n    pass")
    ]
    nbformat.write(nb, tmp_path / "bars.ipynb")
    papermill(["bars.ipynb", "out.ipynb"], tmp_path)
    (cell,) = nbformat.read(tmp_path / "out.ipynb", as_version=4).cells
    texts = [o.data["text/plain"] for o in cell.outputs if o.output_type == "display_data"]
    assert len(texts) == 1 and texts[0].startswith("images: 100%") and "3/3" in texts[0], texts
