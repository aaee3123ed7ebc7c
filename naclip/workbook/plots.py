"""Every figure the workbook studies draw: labelled axes, legends, published numbers where a study has them.

Functions take tidy pandas tables (or arrays for images) and return a matplotlib Figure; saving is the
caller's job (`naclip.workbook.outputs.RunOutputs.figure`). `mark_random` watermarks a figure whose model
had random weights.

Palette: bars and lines take matplotlib's ``tab10`` colours in the order their levels first appear, so a
level keeps its colour in every panel and in the legend. Published numbers are marks in the colour of the
bar or line they belong to, edged in black: a diamond for a run without post-processing, a star for one
with PAMR. Scores (mIoU, IoU) have axes starting at 0. Label maps use `naclip.viz.palette` (PASCAL VOC's
bit-interleaved colours, shifted by one so class 0 shows too; ignored pixels white, said in the legend).
Heat maps have a colour bar: attention ``jet`` on one scale shared by every panel of a figure, the Gaussian
bias ``viridis`` and class probabilities ``magma`` (both on a fixed 0..1 scale).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

RANDOM_MARK = "RANDOM WEIGHTS — not a result"
PUBLISHED_STYLE = dict(color="white", markeredgecolor="black", markeredgewidth=1.2, linestyle="none", zorder=5)
# Published marks by post-processing: (marker, size, legend label).
PUBLISHED_MARKS = {False: ("D", 6, "published, no post-processing"), True: ("*", 11, "published, with PAMR")}


def _published_handles(published: pd.DataFrame | None, colour: str) -> list:
    """Legend entries for the kinds of published marks that `published` holds; `colour` says whose colour
    a mark takes."""
    if published is None or not len(published):
        return []
    kinds = sorted(set(published["pamr"])) if "pamr" in published else [False]
    return [
        plt.Line2D(
            [],
            [],
            marker=PUBLISHED_MARKS[k][0],
            markersize=PUBLISHED_MARKS[k][1],
            label=f"{PUBLISHED_MARKS[k][2]} ({colour})",
            **PUBLISHED_STYLE,
        )
        for k in kinds
    ]


def _plot_published(ax, xs: Sequence[float], rows: pd.DataFrame, y: str, colour: Any = "white") -> None:
    """Published values at `xs` in `colour` (their bar's or line's), a diamond or a star per row's ``pamr``."""
    pamr = rows["pamr"] if "pamr" in rows else pd.Series(False, index=rows.index)
    for x, value, with_pamr in zip(xs, rows[y], pamr, strict=True):
        marker, size, _ = PUBLISHED_MARKS[bool(with_pamr)]
        ax.plot([x], [value], marker=marker, markersize=size, **{**PUBLISHED_STYLE, "color": colour})


def footnote(fig: Figure, text: str, below: float = 0.0) -> None:
    """A note under the figure (what a reader must know to read it: samples, protocols), `below` inches lower."""
    if text:
        y = -0.01 - below / fig.get_figheight()
        fig.text(0.01, y, text, ha="left", va="top", fontsize=9, wrap=True, color="dimgrey")


def mark_random(fig: Figure) -> None:
    """Watermark `fig` across its plots (not over tick labels, legend or notes) and prefix its title, so it
    cannot pass for a result."""
    boxes = [ax.get_position() for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
    boxes = boxes or [fig.transFigure.inverted().transform_bbox(fig.bbox)]
    left, right = min(b.x0 for b in boxes), max(b.x1 for b in boxes)
    bottom, top = min(b.y0 for b in boxes), max(b.y1 for b in boxes)
    width, height = (right - left) * fig.get_figwidth(), (top - bottom) * fig.get_figheight()  # inches
    size = float(np.clip(0.8 * width * 72 / (0.62 * len(RANDOM_MARK)), 10, 28))
    length = 0.62 * len(RANDOM_MARK) * size / 72  # the text's width, inches
    angle = float(np.degrees(np.arcsin(min(1.0, max(0.0, 0.8 * height - size / 72) / length))))
    fig.text(
        (left + right) / 2,
        (bottom + top) / 2,
        RANDOM_MARK,
        fontsize=size,
        color="red",
        alpha=0.25,
        rotation=min(20.0, angle),
        ha="center",
        va="center",
        weight="bold",
        zorder=100,
    )
    title = fig._suptitle.get_text() if fig._suptitle is not None else ""
    fig.suptitle(f"[{RANDOM_MARK}] {title}".strip(), color="red", weight="bold")


def _from_zero(ax, values: Sequence[float]) -> None:
    """A score axis starting at 0 (never below, even when every value is 0)."""
    finite = [float(v) for v in values if np.isfinite(v)]
    top = max([*finite, 0.0])
    ax.set_ylim(0, top * 1.12 if top > 0 else 1.0)


def _panels(
    count: int, width: float = 5.0, height: float = 3.8, columns: int = 4, sharey: bool = False
) -> tuple[Figure, list]:
    columns = min(columns, count)
    rows = -(-count // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False, sharey=sharey)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:count])


def _colours(levels: Sequence) -> dict:
    """One colour per level, in order: the same level gets the same colour in every panel and legend."""
    return dict(zip(levels, sns.color_palette("tab10", len(levels)), strict=True))


def metric_bars(
    data: pd.DataFrame,
    x: str,
    hue: str,
    y: str = "mIoU",
    col: str | None = None,
    published: pd.DataFrame | None = None,
    title: str = "",
    xlabel: str | None = None,
    ylabel: str = "mIoU (%)",
    labels: Mapping[str, str] | None = None,
    note: str = "",
) -> Figure:
    """Grouped bars of `y` by `x` and `hue` (one panel per `col` value), published values as black marks.

    `published` has the same `x`, `hue` (and `col`) columns, `y`, and optionally ``pamr`` (star rather than
    diamond); its values sit on the matching bars. `labels` renames hue levels in the legend; `note` goes
    under the figure.
    """
    labels = labels or {}
    with sns.axes_style("whitegrid"):
        panels = list(data[col].unique()) if col else [None]
        fig, axes = _panels(len(panels), width=max(6.0, 0.9 * data[x].nunique() + 2.5), sharey=True)
        hues = list(data[hue].unique())
        colours = _colours(hues)
        width = 0.8 / len(hues)
        for ax, panel in zip(axes, panels, strict=True):
            part = data if panel is None else data[data[col] == panel]
            ref = published if published is None or panel is None else published[published[col] == panel]
            xs = list(part[x].unique())
            for j, level in enumerate(hues):
                offset = (j - (len(hues) - 1) / 2) * width
                rows = part[part[hue] == level].set_index(x)[y]
                pos = [i + offset for i, v in enumerate(xs) if v in rows.index]
                values = [rows[v] for v in xs if v in rows.index]
                ax.bar(pos, values, width=width * 0.95, color=colours[level], label=str(level))
                if ref is not None and len(ref):
                    marks = ref[(ref[hue] == level) & ref[x].isin(xs)]
                    _plot_published(ax, [xs.index(v) + offset for v in marks[x]], marks, y, colours[level])
            ax.set_xticks(
                range(len(xs)),
                [str(v) for v in xs],
                rotation=30 if len(xs) > 4 else 0,
                ha="right" if len(xs) > 4 else "center",
            )
            ax.set_xlabel(xlabel or x)
            ax.set_ylabel(ylabel)
            if panel is not None:
                ax.set_title(f"{col} = {panel}")
        values = [*data[y], *([] if published is None else published[y])]
        for ax in axes:
            _from_zero(ax, values)
        handles = [Patch(color=colours[h], label=labels.get(h, str(h))) for h in hues]
        handles += _published_handles(published, f"colour: its {hue}")
        fig.suptitle(title)
        fig.tight_layout()
        _legend_below(fig, handles, hue)
        footnote(fig, note, below=_legend_height(fig, handles))
    return fig


def _legend_columns(fig: Figure, handles: list) -> int:
    longest = max((len(h.get_label()) for h in handles), default=1)
    return max(1, min(len(handles), int(fig.get_figwidth() * 72 / (6.5 * longest + 40))))


def _legend_height(fig: Figure, handles: list) -> float:
    """Inches the legend under the axes takes (so that a footnote goes below it)."""
    return (1 + -(-len(handles) // _legend_columns(fig, handles))) * 0.22 + 0.35


def _legend_below(fig: Figure, handles: list, title: str) -> None:
    """The legend under the axes, in as many columns as the figure's width holds: the plot keeps the width."""
    renderer = fig.canvas.get_renderer()  # the axes with their tick labels and axis label, rotated or not
    boxes = [ax.get_tightbbox(renderer).transformed(fig.transFigure.inverted()) for ax in fig.axes if ax.get_visible()]
    bottom = min(box.y0 for box in boxes)
    fig.legend(
        handles=handles,
        title=title,
        loc="upper center",
        bbox_to_anchor=(0.5, bottom - 0.05 / fig.get_figheight()),
        ncol=_legend_columns(fig, handles),
        frameon=False,
    )


def sweep_lines(
    data: pd.DataFrame,
    x: str,
    hue: str,
    y: str = "mIoU",
    style: str | None = None,
    default: float | None = None,
    published: pd.DataFrame | None = None,
    title: str = "",
    xlabel: str | None = None,
    ylabel: str = "mIoU (%)",
    note: str = "",
) -> Figure:
    """`y` against a swept parameter `x`, a line per `hue` (dash `style`); the default value as a dotted line.

    `published` (columns `hue`, `x`, `y`, optionally ``pamr``) is drawn as marks in the colour of their `hue`
    line: a diamond without post-processing, a star with PAMR.
    """
    with sns.axes_style("whitegrid"):
        fig, ax = plt.subplots(figsize=(7.5, 4.5))
        colours = _colours(list(data[hue].unique()))
        sns.lineplot(data=data, x=x, y=y, hue=hue, style=style, markers=True, dashes=True, palette=colours, ax=ax)
        if default is not None:
            ax.axvline(default, color="grey", linestyle=":", label=f"default {x} = {default:g}")
        if published is not None and len(published):
            for level, part in published.groupby(hue, sort=False):
                _plot_published(ax, list(part[x]), part, y, colour=colours.get(level, "black"))
        _from_zero(ax, [*data[y], *([] if published is None else published[y])])
        handles, names = ax.get_legend_handles_labels()
        extra = _published_handles(published, f"colour: {hue}")
        ax.legend(
            handles=[*handles, *extra],
            labels=[*names, *(h.get_label() for h in extra)],
            loc="center left",
            bbox_to_anchor=(1.0, 0.5),
            frameon=False,
        )
        ax.set_xlabel(xlabel or x)
        ax.set_ylabel(ylabel)
        fig.suptitle(title)
        fig.tight_layout()
        footnote(fig, note)
    return fig


def image_grid(
    rows: Sequence[Sequence[np.ndarray]],
    column_titles: Sequence[str],
    row_titles: Sequence[str] = (),
    legend: Mapping[str, Sequence[float]] | None = None,
    title: str = "",
    cell: float = 2.6,
    note: str = "",
    captions: Sequence[Sequence[str]] = (),
) -> Figure:
    """A grid of RGB images (rows x columns) with column and row titles, a caption under each image
    (`captions[row][column]`, e.g. its mIoU) and a legend of 0-255 RGB colours (each swatch edged, so that
    white shows).

    Titles and legend text grow with `cell` (inches per image), so they stay readable on large images.
    """
    count = len(column_titles)
    size = max(9.0, 3.4 * cell)
    fig, axes = plt.subplots(len(rows), count, figsize=(cell * count, cell * len(rows)), squeeze=False)
    for r, images in enumerate(rows):
        for c, image in enumerate(images):
            ax = axes[r, c]
            ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(column_titles[c], fontsize=size)
            if r < len(captions) and c < len(captions[r]) and captions[r][c]:
                ax.set_xlabel(captions[r][c], fontsize=0.85 * size)
        if r < len(row_titles):
            axes[r, 0].set_ylabel(row_titles[r], fontsize=0.9 * size)
    fig.suptitle(title, fontsize=1.1 * size)
    fig.tight_layout()
    lines = 0
    if legend:
        columns = max(1, min(len(legend), int(1.6 * count)))
        lines = -(-len(legend) // columns)
        handles = [
            Patch(facecolor=np.asarray(colour) / 255, edgecolor="grey", label=name) for name, colour in legend.items()
        ]
        fig.legend(
            handles=handles,
            loc="upper center",
            ncol=columns,
            frameon=False,
            bbox_to_anchor=(0.5, 0.0),
            fontsize=size,
            handlelength=1.5,
        )
    footnote(fig, note, below=lines * 1.6 * size / 72)
    return fig


def attention_maps(
    image: np.ndarray,
    patches: Sequence[tuple[int, int]],
    maps: Mapping[str, np.ndarray],
    grid: tuple[int, int],
    title: str = "",
) -> Figure:
    """For each chosen patch (row, col) of `grid`: the image with the patch boxed, then each method's map.

    `maps[method]` is (len(patches), h, w) attention weights; they are drawn over the image, stretched to it,
    all on one colour scale (0 to the largest weight of any map), so that panels compare.
    """
    methods = list(maps)
    top = max((float(np.max(m)) for m in maps.values() if np.size(m)), default=1.0) or 1.0
    fig, axes = plt.subplots(
        len(patches),
        1 + len(methods),
        figsize=(2.8 * (1 + len(methods)), 2.8 * len(patches)),
        squeeze=False,
        layout="constrained",
    )
    height, width = image.shape[:2]
    cell_h, cell_w = height / grid[0], width / grid[1]
    for r, (pr, pc) in enumerate(patches):
        axes[r, 0].imshow(image)
        axes[r, 0].add_patch(Rectangle((pc * cell_w, pr * cell_h), cell_w, cell_h, fill=False, color="red", lw=2))
        axes[r, 0].set_ylabel(f"patch ({pr}, {pc})")
        for c, method in enumerate(methods, 1):
            axes[r, c].imshow(image)
            shown = axes[r, c].imshow(
                maps[method][r],
                cmap="jet",
                alpha=0.55,
                extent=(0, width, height, 0),
                interpolation="nearest",
                vmin=0,
                vmax=top,
            )
            axes[r, c].add_patch(
                Rectangle((pc * cell_w, pr * cell_h), cell_w, cell_h, fill=False, color="white", lw=1.5)
            )
        for c, name in enumerate(["image (query patch boxed)", *methods]):
            axes[0, c].set_title(name, fontsize=10)
    if methods:
        fig.colorbar(shown, ax=axes[:, 1:], fraction=0.03, pad=0.02, label="attention weight (one scale for all)")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    return fig


def kernel_panels(biases: Mapping[float, np.ndarray], patch: tuple[int, int], title: str = "") -> Figure:
    """The Gaussian bias of one patch over the grid for several sigmas, plus its profile along the patch's row."""
    sigmas = list(biases)
    fig, axes = plt.subplots(
        1,
        len(sigmas) + 1,
        figsize=(3.0 * len(sigmas) + 5.5, 3.6),
        layout="constrained",
        gridspec_kw={"width_ratios": [1] * len(sigmas) + [1.8]},
    )
    for ax, sigma in zip(axes, sigmas, strict=False):
        shown = ax.imshow(biases[sigma], cmap="viridis", vmin=0, vmax=1)
        ax.plot(patch[1], patch[0], marker="x", color="red")
        ax.set_title(f"sigma = {sigma:g}")
        ax.set_xlabel("patch column")
    axes[0].set_ylabel("patch row")
    fig.colorbar(shown, ax=list(axes[:-1]), location="right", shrink=0.8, label="bias omega")
    profile = axes[-1]
    for sigma in sigmas:
        profile.plot(biases[sigma][patch[0]], marker=".", label=f"sigma = {sigma:g}")
    profile.axvline(patch[1], color="grey", linestyle=":", label="query patch")
    profile.set_xlabel("patch column (along the query patch's row)")
    profile.set_ylabel("bias omega")
    profile.set_title("profile")
    profile.legend(frameon=False, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    profile.grid(alpha=0.4)
    fig.suptitle(title)
    return fig


def probability_maps(probs: np.ndarray, names: Sequence[str], title: str = "", columns: int = 4) -> Figure:
    """One heat map per class of its per-pixel probability (C, H, W), on a shared 0..1 scale."""
    fig, axes = _panels(len(names), width=3.2, height=2.8, columns=columns)
    for ax, name, prob in zip(axes, names, probs, strict=True):
        shown = ax.imshow(prob, cmap="magma", vmin=0, vmax=1)
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(shown, ax=axes, fraction=0.02, pad=0.02, label="probability")
    fig.suptitle(title)
    return fig


def per_class_bars(
    per_class: pd.DataFrame,
    hue: str = "method",
    y: str = "IoU",
    labels: Mapping[str, str] | None = None,
    title: str = "",
    note: str = "",
) -> Figure:
    """Per-class scores as horizontal bars, a bar per `hue` level in each class's row, a panel per benchmark
    (classes in the benchmark's order); ``nan`` (a class neither in the ground truth nor predicted) is left
    empty and said in the class's label."""
    labels = labels or {}
    benchmarks = list(per_class["benchmark"].unique())
    hues = list(per_class[hue].unique())
    colours = _colours(hues)
    key = "class_index" if "class_index" in per_class else "class_name"
    classes = max(per_class.groupby("benchmark")[key].nunique())
    height = max(3.0, classes * (0.1 * len(hues) + 0.12) + 1.2)
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(1, len(benchmarks), figsize=(6.5 * len(benchmarks), height), squeeze=False)
        for ax, benchmark in zip(axes[0], benchmarks, strict=True):
            part = per_class[per_class["benchmark"] == benchmark]
            key = "class_index" if "class_index" in part else "class_name"  # a method's class file may rename one
            names = part.drop_duplicates(key).set_index(key)["class_name"]
            step = 0.8 / len(hues)
            for j, level in enumerate(hues):
                rows = part[part[hue] == level].set_index(key)[y]
                pos = [i + (j - (len(hues) - 1) / 2) * step for i in range(len(names))]
                ax.barh(pos, [rows.get(k, np.nan) for k in names.index], height=step * 0.95, color=colours[level])
            missing = {k for k in names.index if part.loc[part[key] == k, y].isna().all()}
            ticks = [f"{n} (absent)" if k in missing else n for k, n in names.items()]
            ax.set_yticks(range(len(names)), ticks)
            ax.invert_yaxis()
            ax.set_xlim(0, 100)
            ax.set_xlabel(f"{y} (%)")
            ax.set_title(benchmark)
        handles = [Patch(color=colours[h], label=labels.get(h, str(h))) for h in hues]
        fig.suptitle(title)
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / height))
        _legend_below(fig, handles, hue)
        footnote(fig, note, below=_legend_height(fig, handles))
    return fig
