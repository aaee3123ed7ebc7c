"""Figures: labelled axes, legends, published markers, the random-weights watermark, real image files."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from naclip.workbook import plots


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _texts(fig) -> str:
    return " ".join(t.get_text() for t in fig.findobj(plt.Text))


def _saved(fig, tmp_path) -> Image.Image:
    path = tmp_path / "figure.png"
    fig.savefig(path)
    image = Image.open(path)
    assert image.width > 100 and image.height > 100
    return image


def results() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "benchmark": ["voc21", "voc21", "ade20k", "ade20k"] * 2,
            "method": ["CLIP", "NACLIP"] * 4,
            "post-processing": ["none"] * 4 + ["PAMR"] * 4,
            "mIoU": [10.0, 50.0, 3.0, 15.0, 11.0, 55.0, 3.5, 16.0],
        }
    )


def test_metric_bars_labels_panels_legend_and_published_marks(tmp_path):
    published = pd.DataFrame(
        {
            "benchmark": ["voc21", "voc21"],
            "method": ["NACLIP", "NACLIP"],
            "post-processing": ["none", "PAMR"],
            "mIoU": [58.9, 64.07],
            "pamr": [False, True],
        }
    )
    fig = plots.metric_bars(
        results(),
        x="benchmark",
        hue="method",
        col="post-processing",
        published=published,
        title="Main",
        labels={"CLIP": "CLIP (borrowed protocol)"},
        note="samples only",
    )
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 2 and all(ax.get_ylabel() == "mIoU (%)" and ax.get_xlabel() == "benchmark" for ax in axes)
    assert [ax.get_title() for ax in axes] == ["post-processing = none", "post-processing = PAMR"]
    assert sum(len(ax.patches) for ax in axes) == 8
    (diamond,) = [line for line in axes[0].lines if line.get_marker() == "D"]
    (star,) = [line for line in axes[1].lines if line.get_marker() == "*"]
    assert diamond.get_ydata()[0] == pytest.approx(58.9) and star.get_ydata()[0] == pytest.approx(64.07)
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == [
        "CLIP (borrowed protocol)",
        "NACLIP",
        "published, no post-processing",
        "published, with PAMR",
    ]
    assert "samples only" in _texts(fig)
    _saved(fig, tmp_path)


def test_sweep_lines_marks_default_and_published(tmp_path):
    data = pd.DataFrame(
        {"sigma": [1, 3, 5] * 2, "benchmark": ["voc21"] * 3 + ["ade20k"] * 3, "mIoU": [50, 55, 58, 14, 16, 17]}
    )
    fig = plots.sweep_lines(
        data,
        x="sigma",
        hue="benchmark",
        default=5,
        published=pd.DataFrame(
            {"sigma": [5, 5], "benchmark": ["voc21", "ade20k"], "mIoU": [58.9, 19.05], "pamr": [False, True]}
        ),
    )
    (ax,) = fig.axes
    assert ax.get_xlabel() == "sigma" and ax.get_ylabel() == "mIoU (%)"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "voc21" in labels and "default sigma = 5" in labels
    assert "published, with PAMR (colour: benchmark)" in labels
    assert {line.get_marker() for line in ax.lines if line.get_linestyle() == "None"} >= {"D", "*"}
    _saved(fig, tmp_path)


def test_image_grid_titles_and_a_legend_that_grows_with_the_images(tmp_path):
    image = np.zeros((20, 30, 3), dtype=np.uint8)
    legend = {"sky": (128, 0, 0), "cat": (0, 128, 0)}
    fig = plots.image_grid(
        [[image, image], [image, image]],
        ["image", "ground truth"],
        ["a", "b"],
        legend=legend,
        title="grid",
        note="a note",
    )
    assert [ax.get_title() for ax in fig.axes[:2]] == ["image", "ground truth"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["sky", "cat"]
    assert "a note" in _texts(fig)
    _saved(fig, tmp_path)
    small = fig.legends[0].get_texts()[0].get_fontsize()
    large = plots.image_grid([[image]], ["image"], legend=legend, cell=6.0).legends[0].get_texts()[0]
    assert large.get_fontsize() > 1.5 * small


def test_attention_maps_kernel_and_probability_figures(tmp_path):
    image = np.full((64, 64, 3), 200, dtype=np.uint8)
    maps = {"CLIP": np.random.rand(2, 4, 4), "NACLIP": np.random.rand(2, 4, 4)}
    fig = plots.attention_maps(image, [(0, 0), (3, 2)], maps, (4, 4))
    assert "patch (3, 2)" in _texts(fig) and "NACLIP" in _texts(fig)
    _saved(fig, tmp_path)
    bias = {1.0: np.random.rand(5, 5), 3.0: np.random.rand(5, 5)}
    fig = plots.kernel_panels(bias, (2, 2), title="kernel")
    assert "sigma = 3" in _texts(fig) and fig.axes[-2].get_ylabel() == "bias omega"
    _saved(fig, tmp_path)
    fig = plots.probability_maps(np.random.rand(3, 8, 8), ["a", "b", "c"])
    assert {"a", "b", "c", "probability"} <= set(_texts(fig).split())
    _saved(fig, tmp_path)


def test_mark_random_watermarks_and_titles(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    fig.suptitle("Sigma")
    plots.mark_random(fig)
    assert fig._suptitle.get_text() == f"[{plots.RANDOM_MARK}] Sigma"
    assert sum(t.get_text() == plots.RANDOM_MARK for t in fig.texts) == 1
    _saved(fig, tmp_path)
