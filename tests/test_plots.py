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
        "published, no post-processing (colour: its method)",
        "published, with PAMR (colour: its method)",
    ]
    assert "samples only" in _texts(fig)
    _saved(fig, tmp_path)


def test_published_marks_take_their_bars_colour_and_the_legend_leaves_the_plot_its_width(tmp_path):
    """Beside bars near zero a mark must say whose it is: it is filled with its method's colour."""
    data = pd.DataFrame({"benchmark": ["voc21"] * 3, "method": ["a", "b", "c"], "mIoU": [0.1, 0.0, 0.2]})
    published = pd.DataFrame({"benchmark": ["voc21"] * 2, "method": ["b", "c"], "mIoU": [80.0, 60.0]})
    labels = {m: f"{m}: a long label that once took two thirds of the figure's width" for m in "abc"}
    fig = plots.metric_bars(data, x="benchmark", hue="method", published=published, labels=labels)
    (ax,) = [ax for ax in fig.axes if ax.get_visible()]
    marks = {line.get_ydata()[0]: line.get_markerfacecolor()[:3] for line in ax.lines if line.get_marker() == "D"}
    colours = [c.patches[0].get_facecolor()[:3] for c in ax.containers]
    assert marks[80.0] == pytest.approx(colours[1]) and marks[60.0] == pytest.approx(colours[2])
    _saved(fig, tmp_path)
    legend = fig.legends[0].get_window_extent()
    plot = ax.get_window_extent()
    assert legend.y1 <= plot.y0 and plot.width > 0.6 * fig.bbox.width  # under the plot, not beside it


@pytest.mark.parametrize("kind", ["bars", "lines"])
def test_score_axes_start_at_zero_even_when_every_value_is_zero(kind):
    data = pd.DataFrame({"sigma": [1, 3], "benchmark": ["voc21"] * 2, "method": ["a", "b"], "mIoU": [0.0, 0.0]})
    if kind == "bars":
        fig = plots.metric_bars(data, x="benchmark", hue="method")
    else:
        fig = plots.sweep_lines(data, x="sigma", hue="benchmark")
    ax = next(ax for ax in fig.axes if ax.get_visible())
    assert ax.get_ylim()[0] == 0 and ax.get_ylim()[1] > 0


def test_the_watermark_stays_off_rotated_tick_labels(tmp_path):
    data = pd.DataFrame({"variant": [f"Gauss + KK + reduced {i}" for i in range(8)], "b": ["voc"] * 8, "mIoU": 0.5})
    fig = plots.metric_bars(data, x="variant", hue="b")
    plots.mark_random(fig)
    _saved(fig, tmp_path)
    renderer = fig.canvas.get_renderer()
    (mark,) = [t for t in fig.texts if t.get_text() == plots.RANDOM_MARK]
    box = mark.get_window_extent(renderer)
    ax = next(ax for ax in fig.axes if ax.get_visible())
    assert all(not box.overlaps(label.get_window_extent(renderer)) for label in ax.get_xticklabels())


def test_per_class_bars_a_panel_per_benchmark_a_bar_per_class_and_method(tmp_path):
    rows = [
        {"benchmark": b, "method": m, "class_index": k, "class_name": c, "IoU": (np.nan if c == "sofa" else 10.0 * i)}
        for b, classes in (("voc", ["cat", "dog", "sofa"]), ("ade", ["wall", "sky"]))
        for i, m in enumerate(["clip", "naclip"])
        for k, c in enumerate(classes)
    ]
    rows[4]["class_name"] = "doggy"  # naclip's own class file names class 1 otherwise: still one row
    fig = plots.per_class_bars(pd.DataFrame(rows), labels={"clip": "CLIP"}, title="per class")
    voc, ade = fig.axes
    assert (voc.get_title(), ade.get_title()) == ("voc", "ade") and voc.get_xlim() == (0, 100)
    assert len(voc.patches) == 3 * 2 and len(ade.patches) == 2 * 2
    assert [t.get_text() for t in voc.get_yticklabels()] == ["cat", "dog", "sofa (absent)"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["CLIP", "naclip"]
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
    captioned = plots.image_grid([[image, image]], ["image", "clip"], captions=[["", "mIoU 12.3"]])
    assert [ax.get_xlabel() for ax in captioned.axes] == ["", "mIoU 12.3"]
    _saved(fig, tmp_path)
    small = fig.legends[0].get_texts()[0].get_fontsize()
    large = plots.image_grid([[image]], ["image"], legend=legend, cell=6.0).legends[0].get_texts()[0]
    assert large.get_fontsize() > 1.5 * small


def test_attention_maps_kernel_and_probability_figures(tmp_path):
    image = np.full((64, 64, 3), 200, dtype=np.uint8)
    maps = {"CLIP": np.random.rand(2, 4, 4), "NACLIP": np.random.rand(2, 4, 4)}
    maps["NACLIP"][0, 0, 0] = 3.0  # one method's weights far larger: the panels must not each fill the scale
    fig = plots.attention_maps(image, [(0, 0), (3, 2)], maps, (4, 4))
    assert "patch (3, 2)" in _texts(fig) and "NACLIP" in _texts(fig)
    heat = [im for ax in fig.axes for im in ax.get_images() if im.get_cmap().name == "jet"]
    assert len(heat) == 4 and {im.get_clim() for im in heat} == {(0, 3.0)}  # one scale shared by all
    assert "one scale for all" in _texts(fig)
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
