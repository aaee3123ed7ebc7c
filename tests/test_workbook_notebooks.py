"""Every study notebook through papermill with the smoke profile, and an interrupted sweep resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import nbformat
import pandas as pd
import pytest
from PIL import Image

from naclip.workbook.outputs import RANDOM_BANNER, read_manifest
from naclip.workbook.regenerate import ROOT, regenerate
from naclip.workbook.runner import MARKER

SMOKE_RUN = "default"
# study -> run folder, {table: (columns it must have, rows)}, figures
EXPECTED = {
    "main": (SMOKE_RUN, {"results": ({"benchmark", "method", "post-processing", "mIoU", "aAcc", "mAcc",
                                      "attention", "arch", "pamr_steps", "n_images"}, 2 * 3 * 2),
                         "per_class": ({"benchmark", "variant", "class_name", "IoU"}, (21 + 20) * 3 * 2),
                         "comparison": ({"benchmark", "method", "mIoU", "published (NACLIP paper)",
                                         "published (NACLIP authors' code (v2))", "gap"}, 12 + 6)},
             ["main"]),
    "components": (SMOKE_RUN, {"results": ({"variant", "attention", "arch", "mIoU"}, 8),
                               "comparison": ({"variant", "gap"}, 16)}, ["components"]),
    "sigma": (SMOKE_RUN, {"results": ({"sigma", "post-processing", "mIoU"}, 6),
                          "comparison": ({"sigma", "gap"}, 12)}, ["sigma"]),
    "attention": (SMOKE_RUN, {"results": ({"attention", "mIoU"}, 6), "comparison": ({"attention", "gap"}, 12)},
                  ["attention"]),
    "architecture": (SMOKE_RUN, {"results": ({"attention", "arch", "mIoU"}, 6),
                                 "comparison": ({"attention", "arch", "gap"}, 12)}, ["architecture"]),
    "backbones": ("model=naclip-tiny_pretrained=None", {"results": ({"model", "method", "mIoU"}, 4),
                                                        "comparison": ({"method", "gap"}, 8)}, ["backbone"]),
    "qualitative": (SMOKE_RUN, {}, ["qualitative"]),
    "attention_maps": (SMOKE_RUN, {"attention_maps": ({"method", "query_row", "query_col", "row", "col",
                                                       "weight"}, 3 * 3 * 21 * 21)}, ["attention_maps"]),
    "kernel": (SMOKE_RUN, {"kernel": ({"sigma", "row", "col", "distance", "omega"}, 3 * 14 * 14)}, ["kernel"]),
    "demo": (SMOKE_RUN, {"classes": ({"class", "pixel_share", "mean_probability"}, 7)},
             ["overlay", "probabilities"]),
}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    results = tmp_path_factory.mktemp("smoke") / "results"
    report = regenerate(profile="smoke", results=results, log=lambda _: None)
    return report, results


def test_every_study_runs(smoke):
    report, _ = smoke
    assert report.ok, report.failed
    assert sorted(r.study.name for r in report.executed) == sorted(EXPECTED)


@pytest.mark.parametrize("study", sorted(EXPECTED))
def test_study_outputs(smoke, study):
    _, results = smoke
    run, tables, figures = EXPECTED[study]
    folder = results / study / run
    record = json.loads((folder / MARKER).read_text())
    assert record["profile"] == "smoke" and record["random_weights"] == (study != "kernel")
    manifest = read_manifest(folder)
    assert {t["name"] for t in manifest["tables"]} == set(tables)
    for name, (columns, rows) in tables.items():
        frame = pd.read_csv(folder / f"{name}.csv")
        assert columns <= set(frame.columns), (name, sorted(frame.columns))
        assert len(frame) == rows, name
        assert ("random_weights" in frame) == (study != "kernel")
    assert [f["name"] for f in manifest["figures"]] == figures
    for name in figures:
        with Image.open(folder / f"{name}.png") as image:
            image.verify()
            assert image.width > 200 and image.height > 150
        assert (folder / f"{name}.svg").read_text().lstrip().startswith("<?xml")
    executed = nbformat.read(folder / record["notebook"], as_version=4)
    outputs = [o for cell in executed.cells if cell.cell_type == "code" for o in cell.outputs]
    assert outputs and not [o for o in outputs if o.output_type == "error"]
    if study != "kernel":
        assert any(RANDOM_BANNER in o.get("text", "") for o in outputs)


def test_index_links_everything(smoke):
    _, results = smoke
    index = (results / "index.md").read_text()
    assert RANDOM_BANNER in index
    for study, (run, tables, figures) in EXPECTED.items():
        folder = f"{study}/{run}"
        record = json.loads((results / folder / MARKER).read_text())
        links = [f"{name}.csv" for name in tables] + [f"{n}.{e}" for n in figures for e in ("png", "svg")]
        for link in [*links, record["notebook"]]:
            assert f"]({folder}/{link})" in index, link
        assert f"`model={record['parameters'].get('model')}`" in index or study == "kernel"


def test_a_second_run_skips_everything(smoke):
    _, results = smoke
    report = regenerate(profile="smoke", results=results, log=lambda _: None)
    assert not report.executed and len(report.skipped) == len(EXPECTED)


def test_a_killed_sweep_resumes_with_only_what_was_missing(tmp_path):
    """Kill `naclip workbook run` after the first of three runs finished; the rerun does the other two."""
    study = tmp_path / "kernel_sweep.yaml"
    study.write_text(
        "notebook: 09_gaussian_kernel.ipynb\n"
        "parameters: {grid: [8, 8], patch: [3, 3], sigmas: [1.0]}\n"
        "grid: {sigmas: [[1.0], [2.0], [4.0]]}\n"
    )
    results = tmp_path / "results"
    first = results / "kernel_sweep" / "sigmas=1.0" / MARKER
    process = subprocess.Popen(
        [sys.executable, "-m", "naclip", "workbook", "run", str(study), "--profile", "paper", "--results",
         str(results)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not first.is_file() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert first.is_file()
    done = sorted(p.parent.name for p in (results / "kernel_sweep").glob(f"*/{MARKER}"))
    assert done[0] == "sigmas=1.0" and len(done) < 3

    log: list[str] = []
    report = regenerate([str(study)], profile="paper", results=results, log=log.append)
    assert report.ok
    assert [r.name for r in report.skipped] == done
    assert sorted(r.name for r in report.executed) == sorted({"sigmas=1.0", "sigmas=2.0", "sigmas=4.0"} -
                                                             set(done))
    assert len(list((results / "kernel_sweep").glob(f"*/{MARKER}"))) == 3
