"""The explorer notebook's page, driven as a user would (without a browser: tests/browser/ has that), on the
tiny random model: every change redraws, a click shows each method's attention, random weights are marked."""

from __future__ import annotations

import io
import subprocess
import sys
import warnings
from pathlib import Path

import ipywidgets as widgets
import nbformat
import numpy as np
import pytest
from PIL import Image

from naclip.methods import METHODS
from naclip.viz import MARK_COLOUR
from naclip.workbook.explorer import Explorer, explorer_ui
from naclip.workbook.layout import discover

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def page():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        explorer = Explorer(model="naclip-tiny", pretrained=None, device="cpu")
    return explorer_ui(explorer)


def controls(page) -> dict:
    """The page's inputs by description, and its picture, result and attention rows."""
    found = {w.description: w for w in page.children[1].children + (page.children[2],)}
    methods, sliders = page.children[3].children
    found.update({methods.description: methods, **{s.description: s for s in sliders.children}})
    return {**found, "status": page.children[0], "results": page.children[6], "attention": page.children[7]}


def pictures(row: widgets.HBox) -> dict[str, Image.Image | str]:
    """Each panel of a row: its title and its image (or the message that replaced it)."""
    shown = {}
    for panel in row.children:
        title, body = panel.children
        name = title.value.removeprefix("<b>").removesuffix("</b>")
        shown[name] = Image.open(io.BytesIO(body.value)) if isinstance(body, widgets.Image) else body.value
    return shown


def test_every_registered_method_can_be_picked_and_each_change_redraws(page):
    c = controls(page)
    assert set(c["methods"].options) == set(METHODS)
    assert "RANDOM WEIGHTS" in c["status"].value
    first = pictures(c["results"])
    assert list(first) == ["clip", "naclip"]
    band = np.asarray(first["naclip"].convert("RGB"))[:10, :100].reshape(-1, 3)
    assert (band == MARK_COLOUR).all(1).mean() > 0.8  # every overlay carries the mark
    before = c["results"].children
    c["sigma"].value = 2.0
    assert c["results"].children is not before  # redrawn
    c["methods"].value = ("clip", "sclip", "naclip", "resclip")
    shown = pictures(c["results"])
    assert list(shown) == ["clip", "sclip", "naclip", "resclip"]
    assert "blocks" in shown["resclip"]  # ResCLIP needs blocks the 3-block tiny model lacks: said in its panel
    c["words"].value = " ; "
    assert "holds no class" in c["status"].value
    c["words"].value = "sky; horse"
    assert "holds no class" not in c["status"].value


def test_a_click_shows_each_methods_attention_from_that_patch_on_one_scale(page):
    c = controls(page)
    c["methods"].value = ("clip", "naclip")
    assert not c["attention"].children
    page.clicked({"relativeX": 80, "relativeY": 40, "boundingRectWidth": 320, "boundingRectHeight": 320})
    maps = pictures(c["attention"])
    assert list(maps) == ["clip", "naclip"] and all(isinstance(m, Image.Image) for m in maps.values())
    c["image"].value = list(c["image"].options)[-1]  # another image: the old attention goes
    assert not c["attention"].children


def test_the_explorer_notebook_runs_and_is_no_study(tmp_path):
    assert "explore" not in {s.name for s in discover(ROOT / "notebooks")}
    command = [sys.executable, "-m", "papermill", "--kernel", "python3", "--no-progress-bar"]
    command += [str(ROOT / "notebooks" / "explore.ipynb"), str(tmp_path / "out.ipynb")]
    command += ["-p", "model", "naclip-tiny", "-p", "pretrained", "None", "-p", "device", "cpu"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    cells = nbformat.read(tmp_path / "out.ipynb", as_version=4).cells
    views = [o for c in cells if c.cell_type == "code" for o in c.outputs if o.output_type == "execute_result"]
    assert views and "application/vnd.jupyter.widget-view+json" in views[-1].data
    assert not (tmp_path / "results").exists()  # it writes nothing
