"""The computations behind the workbook studies: method definitions, result tables, gaps to published numbers.

Notebooks only glue these together and plot; each function here has a test.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pandas as pd

from naclip.attention import gaussian_bias


def patch_bias(grid: tuple[int, int], patch: tuple[int, int], sigma: float) -> np.ndarray:
    """NACLIP's Gaussian bias from one patch (row, col) to every patch of an h x w grid, as an (h, w) map."""
    height, width = grid
    row, col = patch
    if not (0 <= row < height and 0 <= col < width):
        raise ValueError(f"patch {patch} is outside the {height} x {width} grid")
    omega = gaussian_bias(height, width, float(sigma))
    return omega[1 + row * width + col, 1:].reshape(height, width).numpy().copy()


def kernel_table(grid: tuple[int, int], patch: tuple[int, int], sigmas: Sequence[float]) -> pd.DataFrame:
    """Tidy bias values: one row per (sigma, patch row, patch col) with its distance to `patch` and omega."""
    rows, cols = np.indices(grid)
    distance = np.hypot(rows - patch[0], cols - patch[1]).ravel()
    frames = [
        pd.DataFrame({"sigma": float(sigma), "row": rows.ravel(), "col": cols.ravel(), "distance": distance,
                      "omega": patch_bias(grid, patch, sigma).ravel()})
        for sigma in sigmas
    ]
    return pd.concat(frames, ignore_index=True)


# The methods the paper compares, as settings of the last block (SPEC section 1).
METHODS: dict[str, dict[str, str]] = {
    "CLIP": {"attention": "vanilla", "arch": "vanilla"},
    "SCLIP": {"attention": "csa", "arch": "vanilla"},
    "ClearCLIP": {"attention": "qq", "arch": "reduced"},
    "NACLIP": {"attention": "naclip", "arch": "reduced"},
}


def method_variants(methods: Sequence[str], pamr_steps: int = 0) -> list[dict]:
    """Segmenter variants (overrides) for named methods of `METHODS`, each with `pamr_steps`."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; expected some of {list(METHODS)}")
    return [{**METHODS[m], "pamr_steps": int(pamr_steps)} for m in methods]


def qualitative_rows(
    segmenter, dataset, indices: Sequence[int], methods: Sequence[str]
) -> tuple[list[list[np.ndarray]], dict[str, np.ndarray]]:
    """Per image: the RGB image, its colourised ground truth, then each method's colourised prediction.

    Also returns the legend: the colour of every class shown in a ground truth or a prediction.
    `segmenter` has the dataset's classes set; the trunk runs once per image for all methods.
    """
    from naclip.preprocess import load_image
    from naclip.viz import colorize

    rows, shown = [], []
    variants = method_variants(methods, segmenter.method["pamr_steps"])
    for index in indices:
        image = load_image(dataset[index].image)
        predictions = segmenter.predict_variants(segmenter.prepare(image), image.shape[:2], variants)
        labels = [dataset.read_mask(index), *(p.labels for p in predictions)]
        shown += labels
        rows.append([image, *(colorize(lab, dataset.num_classes) for lab in labels)])
    return rows, legend(shown, dataset.class_names)


def legend(label_maps: Sequence[np.ndarray], names: Sequence[str]) -> dict[str, np.ndarray]:
    """The palette colour of every class that appears in any of `label_maps` (void 255 left out), by index."""
    from naclip.viz import palette

    present = sorted({int(c) for labels in label_maps for c in np.unique(labels) if c < len(names)})
    colours = palette(len(names))
    return {names[c]: colours[c] for c in present}


def patch_attention_maps(
    segmenter, image: np.ndarray, points: Sequence[tuple[float, float]], methods: Sequence[str]
) -> tuple[dict[str, np.ndarray], list[tuple[int, int]], tuple[int, int]]:
    """Last-block attention of the patches under `points` over the patch grid, per method.

    `points` are (y, x) fractions of the image height and width, so they mean the same place on any
    backbone's grid. Returns ({method: (len(points), h, w)} head-averaged weights, the patches (row, col),
    the grid (h, w)).
    """
    if any(not (0 <= y <= 1 and 0 <= x <= 1) for y, x in points):
        raise ValueError(f"points must be (y, x) fractions in [0, 1], got {list(points)}")
    maps, patches, grid = {}, [], (0, 0)
    for method in methods:
        weights = segmenter.patch_attention(image, attention=METHODS[method]["attention"])
        grid = tuple(weights.shape[1:])
        patches = [(min(int(y * grid[0]), grid[0] - 1), min(int(x * grid[1]), grid[1] - 1)) for y, x in points]
        maps[method] = np.stack([weights[row * grid[1] + col] for row, col in patches])
    return maps, patches, grid


def attention_table(
    maps: dict[str, np.ndarray], patches: Sequence[tuple[int, int]], grid: tuple[int, int]
) -> pd.DataFrame:
    """Tidy attention weights: one row per (method, query patch, key patch)."""
    rows, cols = (a.ravel() for a in np.indices(grid))
    frames = [
        pd.DataFrame({"method": method, "query_row": qr, "query_col": qc, "row": rows, "col": cols,
                      "weight": weights[n].ravel()})
        for method, weights in maps.items()
        for n, (qr, qc) in enumerate(patches)
    ]
    return pd.concat(frames, ignore_index=True)


def class_summary(probs: np.ndarray, labels: np.ndarray, names: Sequence[str]) -> pd.DataFrame:
    """Per class: the share of pixels labelled with it and its mean and max probability, largest area first."""
    counts = np.bincount(labels.ravel(), minlength=len(names))[: len(names)]
    return pd.DataFrame({
        "class": list(names),
        "pixel_share": counts / labels.size,
        "mean_probability": probs.reshape(len(names), -1).mean(1),
        "max_probability": probs.reshape(len(names), -1).max(1),
    }).sort_values(["pixel_share", "mean_probability"], ascending=False, ignore_index=True)


# -- evaluation studies ----------------------------------------------------------------------------------


def main_variants(methods: Sequence[str], pamr_steps: int) -> list[dict]:
    """Evaluator variants for the main table: each method without, then with PAMR (named ``<method> + PAMR``)."""
    without = [{"name": m, **v} for m, v in zip(methods, method_variants(methods, 0), strict=True)]
    with_pamr = [{"name": f"{m} + PAMR", **v} for m, v in zip(methods, method_variants(methods, pamr_steps),
                                                                strict=True)]
    return without + (with_pamr if pamr_steps > 0 else [])


def component_variants() -> list[dict]:
    """The 8 on/off combinations of NACLIP's components: Gaussian bias, key-key similarity, reduced block."""
    attention = {(False, False): "vanilla", (False, True): "kk", (True, False): "vanilla_gauss",
                 (True, True): "naclip"}
    variants = []
    for gauss, key_key, reduced in itertools.product((False, True), repeat=3):
        parts = [name for name, on in (("Gauss", gauss), ("KK", key_key), ("reduced", reduced)) if on]
        variants.append({"name": " + ".join(parts) or "none (CLIP)", "attention": attention[gauss, key_key],
                         "arch": "reduced" if reduced else "vanilla", "pamr_steps": 0})
    return variants


def sweep_variants(key: str, values: Sequence, pamr_steps: int = 0, **fixed) -> list[dict]:
    """One variant per value of `key` (e.g. sigma, attention), without and, if `pamr_steps`, with PAMR."""
    steps = [0, int(pamr_steps)] if pamr_steps else [0]
    return [
        {"name": f"{key}={value}" + (" + PAMR" if step else ""), **fixed, key: value, "pamr_steps": step}
        for step in steps
        for value in values
    ]


def grid_variants(attentions: Sequence[str], archs: Sequence[str]) -> list[dict]:
    """Every (attention, architecture) pair, without PAMR."""
    return [{"name": f"{att}/{arch}", "attention": att, "arch": arch, "pamr_steps": 0}
            for arch in archs for att in attentions]


def base_benchmark(name: str) -> str:
    """The published benchmark a sample stands in for (``voc21-sample`` -> ``voc21``)."""
    return name.removesuffix("-sample")


def tag_methods(frame: pd.DataFrame) -> pd.DataFrame:
    """Evaluator rows with `method` (its `METHODS` name, else ``attention/arch``), `pamr` (bool) and
    `post-processing` ("none" / "PAMR") columns."""
    names = {(v["attention"], v["arch"]): name for name, v in METHODS.items()}
    method = [names.get((a, r), f"{a}/{r}") for a, r in zip(frame["attention"], frame["arch"], strict=True)]
    pamr = frame["pamr_steps"].astype(int) > 0
    tagged = frame.assign(method=method, pamr=pamr, **{"post-processing": np.where(pamr, "PAMR", "none")})
    tagged.attrs = {}  # the evaluator's per-class table and provenance stay with `frame`; concat cannot compare them
    return tagged


def compare_published(frame: pd.DataFrame, extra: Sequence[str] = ()) -> pd.DataFrame:
    """Measured mIoU beside the published one: a column per source, and the gap (measured - published).

    `frame` is `tag_methods` output; `extra` columns (e.g. ``sigma``) are kept. Adds a benchmark ``avg``
    row per (method, pamr, extra), the mean over the benchmarks run; its published value is the paper's
    average only when all eight benchmarks were run. Sample benchmarks are matched with their full
    benchmark's published number.
    """
    from naclip.workbook.published import BENCHMARKS, published

    keys = ["method", "pamr", "post-processing", *extra]
    rows = frame[["benchmark", *keys, "mIoU"]].copy()
    means = rows.groupby(keys, as_index=False, sort=False)["mIoU"].mean().assign(benchmark="avg")
    rows = pd.concat([rows, means[rows.columns]], ignore_index=True)
    complete = set(map(base_benchmark, frame["benchmark"])) >= set(BENCHMARKS)
    rows["published_benchmark"] = [
        base_benchmark(b) if b != "avg" or complete else None for b in rows["benchmark"]
    ]
    reference = published().pivot_table(index=["method", "pamr", "benchmark"], columns="source", values="mIoU")
    reference.columns = [f"published ({source})" for source in reference.columns]
    merged = rows.merge(reference, how="left", left_on=["method", "pamr", "published_benchmark"],
                        right_index=True)
    merged["gap"] = merged["mIoU"] - merged[list(reference.columns)].bfill(axis=1).iloc[:, 0]
    return merged.drop(columns="published_benchmark")


def published_marks(comparison: pd.DataFrame) -> pd.DataFrame:
    """The `compare_published` rows that have a published number, with that number as `mIoU` (for plots)."""
    sources = [c for c in comparison.columns if c.startswith("published (")]
    value = comparison[sources].bfill(axis=1).iloc[:, 0]
    return comparison.assign(mIoU=value)[value.notna()].drop(columns=[*sources, "gap"])
