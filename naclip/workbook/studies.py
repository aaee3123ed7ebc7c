"""The computations behind the workbook studies: runs of the method presets, variant lists, comparisons with the
published numbers, kernel and attention maps.

Notebooks only glue these together and plot; each function here has a test.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from naclip.attention import gaussian_bias, get_attention
from naclip.datasets import PRESETS, SegDataset, get_preset
from naclip.methods import METHODS, get_method
from naclip.methods.registry import PLUGINS, SEPARATOR, UNPUBLISHED, combine
from naclip.progress import tqdm
from naclip.settings import check_variant, coerce, owners_of, variant_keys
from naclip.workbook.published import BACKBONE, BENCHMARKS, IMAGES, ROWS

NO_AUTHORS_RUN = "NACLIP's protocol (no authors' run published)"
NOT_PUBLISHED = "no paper ran this variant"


def weights_label(model: str, pretrained: str | None) -> str:
    """``ViT-B-16 / openai``; random weights said in words (never ``None``)."""
    return f"{model} / {'random weights' if pretrained is None else pretrained}"


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
        pd.DataFrame(
            {
                "sigma": float(sigma),
                "row": rows.ravel(),
                "col": cols.ravel(),
                "distance": distance,
                "omega": patch_bias(grid, patch, sigma).ravel(),
            }
        )
        for sigma in sigmas
    ]
    return pd.concat(frames, ignore_index=True)


# -- runs of the method presets --------------------------------------------------------------------------


def protocol_label(method: str) -> str:
    """Whose protocol a method preset runs under: its authors', or NACLIP's where no authors' run is public; for
    a plug-in combination, who published it (or that nobody did)."""
    chosen = get_method(method)
    if chosen.combination:
        return chosen.combination
    return f"authors' protocol ({chosen.source})" if chosen.authors_protocol else NO_AUTHORS_RUN


def method_label(method: str) -> str:
    """A method's name for legends and tables, saying so where it borrows NACLIP's protocol or where nobody
    published the combination."""
    chosen = get_method(method)
    if chosen.unpublished:
        return f"{method}: {UNPUBLISHED}"
    return method if chosen.authors_protocol or chosen.combination else f"{method}: {NO_AUTHORS_RUN}"


# -- plug-ins on methods ---------------------------------------------------------------------------------


def plugin_combinations(bases: Sequence[str], plugins: Sequence[str]) -> pd.DataFrame:
    """One row per base method and plug-in: the combination's name (empty where the plug-in cannot apply to that
    base) and who published it, or why it cannot be made."""
    rows = []
    for base in bases:
        get_method(base)  # a typo is refused, not reported as a combination that cannot be made
        for plugin in plugins:
            PLUGINS.get(plugin)
            try:
                method = combine(f"{base}{SEPARATOR}{plugin}")
            except ValueError as error:
                rows.append(dict(base=base, plugin=plugin, method="", combination=f"cannot apply: {error}"))
            else:
                rows.append(dict(base=base, plugin=plugin, method=method.name, combination=method.combination))
    return pd.DataFrame(rows, columns=["base", "plugin", "method", "combination"])


def plugin_effect(results: pd.DataFrame, combinations: pd.DataFrame) -> pd.DataFrame:
    """mIoU of each base method without and with each plug-in, per benchmark, and the change.

    `results` are evaluator rows of the bases and of the combinations that could be made (`combinations`'
    ``method`` column); rows of combinations that could not are kept with no score, saying why.
    """
    score = results.set_index(["benchmark", "method"])["mIoU"]
    rows = []
    for benchmark in results["benchmark"].unique():
        for row in combinations.itertuples(index=False):
            without = score.get((benchmark, row.base), np.nan)
            with_plugin = score.get((benchmark, row.method), np.nan) if row.method else np.nan
            rows.append(
                dict(
                    benchmark=benchmark,
                    base=row.base,
                    plugin=row.plugin,
                    without=without,
                    with_plugin=with_plugin,
                    change=with_plugin - without,
                    combination=row.combination,
                )
            )
    return pd.DataFrame(rows)


def plugin_bars(effect: pd.DataFrame) -> pd.DataFrame:
    """`plugin_effect` rows as bars: per benchmark and base, one bar without plug-ins and one per plug-in that
    applies (``variant``: "without" or "+plugin", marked where nobody published the combination)."""
    bars = effect.drop_duplicates(["benchmark", "base"]).assign(variant="without", mIoU=lambda f: f["without"])
    applied = effect[effect["with_plugin"].notna()]
    marks = np.where(applied["combination"].str.startswith(UNPUBLISHED), " (unpublished)", "")
    applied = applied.assign(variant="+" + applied["plugin"] + marks, mIoU=applied["with_plugin"])
    columns = ["benchmark", "base", "variant", "mIoU"]
    return pd.concat([bars[columns], applied[columns]], ignore_index=True)


def evaluate_methods(
    methods: Sequence[str], benchmarks: Sequence[str], out: str | os.PathLike | None = None, **options: Any
) -> pd.DataFrame:
    """Each method preset as its authors ran it: one `evaluate` per method, since their protocols differ.

    `options` go to `naclip.evaluation.evaluate` (data_root, limit, model, pretrained, device, ...); with `out`,
    each method keeps its own resumable evaluation folder ``<out>/<method>``. The rows are concatenated;
    ``attrs["per_class"]`` holds every method's per-class rows.
    """
    from naclip.evaluation import evaluate

    for method in methods:
        get_method(method)  # refuse a typo before the first evaluation
    frames, per_class = [], []
    for method in methods:
        folder = None if out is None else Path(out) / method
        frame = evaluate(benchmarks, method=method, out=folder, **options)
        per_class.append(frame.attrs.pop("per_class").assign(method=method))
        frame.attrs = {}  # concat compares attrs; the provenance is in each evaluation folder
        frames.append(frame)
    result = pd.concat(frames, ignore_index=True)
    result.attrs = {"per_class": pd.concat(per_class, ignore_index=True)}
    return result


def label_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Evaluator rows with ``post-processing`` ("none" / "PAMR") and ``protocol`` (whose protocol ran) columns."""
    pamr = frame["pamr_steps"].astype(int) > 0
    labelled = frame.assign(
        **{"post-processing": np.where(pamr, "PAMR", "none"), "protocol": [protocol_label(m) for m in frame["method"]]}
    )
    labelled.attrs = {}  # the evaluator's per-class table stays with `frame`; concat cannot compare attrs
    return labelled


# -- variants on one trunk -------------------------------------------------------------------------------


def component_variants() -> list[dict]:
    """The 8 on/off combinations of NACLIP's components: Gaussian bias, key-key similarity, reduced block."""
    attention = {(False, False): "vanilla", (False, True): "kk", (True, False): "vanilla_gauss", (True, True): "naclip"}
    variants = []
    for gauss, key_key, reduced in itertools.product((False, True), repeat=3):
        parts = [name for name, on in (("Gauss", gauss), ("KK", key_key), ("reduced", reduced)) if on]
        variants.append(
            {
                "name": " + ".join(parts) or "none (CLIP)",
                "attention": attention[gauss, key_key],
                "arch": "reduced" if reduced else "vanilla",
                "pamr_steps": 0,
            }
        )
    return variants


def sweep_variants(key: str, values: Sequence, pamr_steps: int = 0, **fixed: Any) -> list[dict]:
    """One variant per value of `key` (e.g. sigma, attention), without and, if `pamr_steps`, with PAMR."""
    steps = [0, int(pamr_steps)] if pamr_steps else [0]
    return [
        {"name": f"{key}={value}" + (" + PAMR" if step else ""), **fixed, key: value, "pamr_steps": step}
        for step in steps
        for value in values
    ]


def grid_variants(attentions: Sequence[str], archs: Sequence[str]) -> list[dict]:
    """Every (attention, architecture) pair, without PAMR."""
    return [
        {"name": f"{att}/{arch}", "attention": att, "arch": arch, "pamr_steps": 0}
        for arch in archs
        for att in attentions
    ]


# -- comparison with the published numbers ---------------------------------------------------------------

# The settings a published run is matched on; the others (device, window batch, ...) never change a label.
_MATCHED = (
    "attention",
    "arch",
    "sigma",
    "logit_scale",
    "prob_threshold",
    "area_threshold",
    "pamr_steps",
    "pamr_dilations",
    "short_side",
    "long_side",
    "slide_crop",
    "slide_stride",
    "pad_windows",
    "pad_multiple",
)


def published_method(attention: str | None, arch: str | None, pamr: bool, head: str = "last_block") -> str | None:
    """The method preset whose head, last block and post-processing these are (None: no paper ran them).

    `attention` and `arch` are compared where the head has them (None: a head without them, as SC-CLIP's).
    """
    for method in METHODS.values():
        settings = method.settings()
        own = settings.params.to_dict()
        block = (own.get("attention"), own.get("arch"))
        if (method.head, *block, settings.pamr_steps > 0) == (head, attention, arch, pamr):
            return method.name
    return None


def _value(row: pd.Series, key: str) -> Any:
    """A row's value, None where the column is missing or empty (a method without that parameter)."""
    value = row[key] if key in row.index else None
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else value


def _differences(row: pd.Series, method: str, protocol: str) -> list[str]:
    """How the settings and class names of `row` differ from `method` as published on `protocol`."""
    expected = get_method(method).settings(protocol)
    values = expected.to_dict()
    skip = {key for key in _MATCHED if key not in values}
    if "attention" in values and not get_attention(expected.attention).neighbourhood:
        skip.add("sigma")
    if expected.pamr_steps == 0:
        skip.add("pamr_dilations")
    if expected.slide_crop == 0:
        skip.add("slide_stride")
    found = [
        f"{key} {coerce(key, row[key])!s} (published {values[key]!s})"
        for key in _MATCHED
        if key not in skip and key in row.index and coerce(key, row[key]) != values[key]
    ]
    if "method" in row.index and get_method(row["method"]).class_file(protocol) != get_method(method).class_file(
        protocol
    ):
        found.append(f"class names of {row['method']} (published: {method}'s)")
    return found


def _compare_row(row: pd.Series) -> dict[str, Any]:
    """The published number `row` is compared with, whose it is, and why no gap is computed (empty: comparable)."""
    protocol = get_preset(row["benchmark"]).protocol if row["benchmark"] in PRESETS else ""
    head = get_method(row["method"]).head if "method" in row.index else "last_block"
    method = published_method(_value(row, "attention"), _value(row, "arch"), int(row["pamr_steps"]) > 0, head)
    entry = next((r for r in ROWS if r.method == method), None)
    match = {"protocol_key": protocol, "published": np.nan, "published_as": "", "source": ""}
    if method is None:
        return {**match, "reasons": [NOT_PUBLISHED]}
    if entry is None or protocol not in BENCHMARKS:
        return {**match, "reasons": [f"no published number for {method}"]}
    differences = _differences(row, method, protocol)
    if differences:
        return {**match, "reasons": [f"{NOT_PUBLISHED}: differs from {method} as published ({'; '.join(differences)})"]}
    reasons = [] if get_method(method).authors_protocol else [NO_AUTHORS_RUN]
    if pd.isna(row["pretrained"]):
        reasons.append("random weights")
    elif (row["model"], row["pretrained"]) != BACKBONE:
        reasons.append(
            f"backbone {weights_label(row['model'], row['pretrained'])}; published: {weights_label(*BACKBONE)}"
        )
    if int(row["n_images"]) != IMAGES[protocol]:
        reasons.append(f"sample: {int(row['n_images'])} of {IMAGES[protocol]} images")
    published = entry.values[list(BENCHMARKS).index(protocol)]
    return {**match, "published": published, "published_as": method, "source": entry.source, "reasons": reasons}


def _average(group: pd.DataFrame, keys: list[str]) -> dict[str, Any]:
    """The ``avg`` row of one group of benchmark rows; the published average only when all eight ran."""
    reasons = list(dict.fromkeys(r for rs in group["reasons"] for r in rs))
    methods = set(group["published_as"])
    complete = sorted(group["protocol_key"]) == sorted(BENCHMARKS) and len(methods) == 1
    entry = next((r for r in ROWS if r.method in methods), None) if complete else None
    if entry is None and group["published"].notna().any():
        reasons.append(f"average over {len(group)} benchmark(s); the published average is over all eight")
    return {
        **group.iloc[0][keys].to_dict(),
        "benchmark": "avg",
        "protocol_key": "",
        "n_images": int(group["n_images"].sum()),
        "mIoU": group["mIoU"].mean(),
        "published": entry.average if entry else np.nan,
        "published_as": entry.method if entry else "",
        "source": entry.source if entry else "",
        "reasons": reasons,
    }


def compare_published(frame: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Measured mIoU beside the published one, with the gap (measured - published) only where comparable.

    `frame` is `label_rows` output; `keys` are the columns that tell its rows apart (e.g. ``["method"]`` or
    ``["sigma"]``; ``post-processing`` and ``protocol`` are always kept). A row is matched with the published
    method of the same last block and post-processing; the gap is left empty, and ``note`` says why, when the
    run is not what was published: a variant no paper ran, other settings or class names, NACLIP's protocol
    standing in for the authors', another backbone or random weights, or a sample of a benchmark (published
    numbers cover the full validation set). An ``avg`` row per group averages the benchmarks run; it has the
    published average only when all eight benchmarks ran.
    """
    keys = list(dict.fromkeys([*keys, "post-processing", "protocol"]))
    table = pd.DataFrame(
        [
            {
                **{k: row[k] for k in keys},
                "benchmark": row["benchmark"],
                "n_images": int(row["n_images"]),
                "mIoU": row["mIoU"],
                **_compare_row(row),
            }
            for _, row in frame.iterrows()
        ]
    )
    averages = [_average(group, keys) for _, group in table.groupby(keys, sort=False, dropna=False)]
    table = pd.concat([table, pd.DataFrame(averages)], ignore_index=True)
    comparable = (table["reasons"].map(len) == 0) & table["published"].notna()
    table["gap"] = (table["mIoU"] - table["published"]).where(comparable)
    table["note"] = table["reasons"].map("; ".join)
    table["images"] = [
        f"{n} of {IMAGES[p]}" if p in IMAGES else str(n)
        for n, p in zip(table["n_images"], table["protocol_key"], strict=True)
    ]
    return table[["benchmark", *keys, "images", "mIoU", "published", "gap", "published_as", "source", "note"]]


def overview(
    comparison: pd.DataFrame, index: Sequence[str], values: Sequence[str] = ("mIoU", "published", "gap")
) -> pd.DataFrame:
    """`compare_published` output as one row per `index` and a column per (value, benchmark), benchmarks in the
    order run and ``avg`` last."""
    benchmarks = list(dict.fromkeys(comparison["benchmark"]))
    table = comparison.set_index([*index, "benchmark"])[list(values)].unstack("benchmark")
    order = list(dict.fromkeys(map(tuple, comparison[list(index)].to_numpy())))
    table = table.reindex(pd.MultiIndex.from_tuples(order, names=index) if len(index) > 1 else [o[0] for o in order])
    return table.reindex(columns=[(v, b) for v in values for b in benchmarks]).round(2)


def figure_note(comparison: pd.DataFrame) -> str:
    """What a reader of a figure drawn from `comparison` must know: samples, borrowed protocols, unpublished
    variants."""
    notes = comparison["note"]
    parts = []
    if notes.str.contains("sample:").any():
        parts.append(
            "Sample benchmarks hold a handful of images: the published marks are on the full validation "
            "sets, shown beside them, not compared."
        )
    if "method" in comparison:
        borrowed = comparison.loc[comparison["protocol"] == NO_AUTHORS_RUN, "method"].unique()
        if len(borrowed):
            parts.append(f"{', '.join(borrowed)}: {NO_AUTHORS_RUN}.")
    if notes.str.startswith(NOT_PUBLISHED).any():
        parts.append("No mark: no paper ran that variant with these settings.")
    if notes.str.contains("random weights").any():
        parts.append("Random weights: every number is noise.")
    return " ".join(parts)


def published_marks(comparison: pd.DataFrame) -> pd.DataFrame:
    """The `compare_published` rows that have a published number, with that number as `mIoU` and a `pamr` flag
    (the published run's post-processing), for the marks on a figure."""
    marks = comparison[comparison["published"].notna()].copy()
    pamr = {r.method: r.pamr for r in ROWS}
    marks["pamr"] = marks["published_as"].map(pamr)
    return marks.assign(mIoU=marks["published"]).drop(columns=["published", "gap"])


# -- images ----------------------------------------------------------------------------------------------


def qualitative_rows(
    dataset: SegDataset,
    indices: Sequence[int],
    methods: Sequence[str],
    on_load: Callable[[Any], None] | None = None,
    **backbone: Any,
) -> tuple[list[list[np.ndarray]], dict[str, np.ndarray], list[list[str]]]:
    """Per image: the RGB image, its colourised ground truth, then each method's colourised prediction.

    Each method runs as its authors ran it on the dataset's benchmark (`Segmenter.for_benchmark`, with
    `backbone` options: model, pretrained, device); `on_load` is called with each segmenter once loaded (e.g.
    `RunOutputs.loaded`). Also returns the legend (the colour of every class shown, and white for the
    ignored pixels of the ground truth) and a caption per image: each prediction's mIoU on that image.
    """
    from naclip import Segmenter
    from naclip.metric import confusion, scores
    from naclip.preprocess import load_image
    from naclip.viz import colorize

    images = [load_image(dataset[i].image) for i in indices]
    labels = [[dataset.read_mask(i)] for i in indices]
    for method in tqdm(methods, desc="methods", unit="method"):
        segmenter = Segmenter.for_benchmark(dataset.name, method=method, **backbone)
        if on_load is not None:
            on_load(segmenter)
        for row, image in zip(labels, images, strict=True):
            row.append(segmenter.predict(image).labels)
    rows = [
        [image, *(colorize(lab, dataset.num_classes) for lab in row)] for image, row in zip(images, labels, strict=True)
    ]
    captions = []
    for truth, *predictions in labels:
        mious = [scores(confusion(p, truth, dataset.num_classes, dataset.ignore_index)).miou for p in predictions]
        captions.append(["", "", *(f"mIoU {100 * m:.1f}" for m in mious)])
    return rows, legend([lab for row in labels for lab in row], dataset.class_names), captions


def per_class_iou(per_class: pd.DataFrame, hue: str = "method") -> pd.DataFrame:
    """The evaluator's per-class rows as one table: a row per benchmark and class (in the benchmark's order),
    a column of IoU (%) per `hue` level (as the field's papers print per-class results)."""
    keys = ["benchmark", "class_index"]
    scores = per_class.pivot(index=keys, columns=hue, values="IoU")[list(per_class[hue].unique())].reset_index()
    scores.columns.name = None
    rows = per_class[[*keys, "class_name"]].drop_duplicates(keys)  # a method's own class file may rename one
    return rows.merge(scores, on=keys, how="left").drop(columns="class_index")


IGNORED_LABEL = "ignored (not scored)"


def legend(label_maps: Sequence[np.ndarray], names: Sequence[str]) -> dict[str, np.ndarray]:
    """The palette colour of every class that appears in any of `label_maps`, by index, then white for the
    void label (255, ignored in scoring) when any map holds it."""
    from naclip.viz import IGNORE_COLOUR, palette

    values = {int(c) for labels in label_maps for c in np.unique(labels)}
    colours = palette(len(names))
    shown = {names[c]: colours[c] for c in sorted(v for v in values if v < len(names))}
    if 255 in values:
        shown[IGNORED_LABEL] = np.array(IGNORE_COLOUR, dtype=np.uint8)
    return shown


def patch_attention_maps(
    segmenter,
    image: np.ndarray,
    points: Sequence[tuple[float, float]],
    methods: Sequence[str],
    **overrides: Any,
) -> tuple[dict[str, np.ndarray], list[tuple[int, int]], tuple[int, int]]:
    """Last-layer attention of the patches under `points` over the patch grid, per method preset.

    `points` are (y, x) fractions of the image height and width, so they mean the same place on any
    backbone's grid. Each method runs its preset's method settings (default protocol) and head, with
    method-group `overrides` on top (a method's own parameter only on the methods that have it; one that no
    registered method has is refused), on
    `segmenter`'s backbone and image size (`Segmenter.patch_attention`; ResCLIP's first pass scores the
    segmenter's classes). Returns
    ({method: (len(points), h, w)} head-averaged weights, the patches (row, col), the grid (h, w)).
    """
    if any(not (0 <= y <= 1 and 0 <= x <= 1) for y, x in points):
        raise ValueError(f"points must be (y, x) fractions in [0, 1], got {list(points)}")
    mine = {method: {k: v for k, v in overrides.items() if k in variant_keys(method)} for method in methods}
    for key in overrides:
        if not owners_of(key):  # a key of no method at all: a typo, or a setting that cannot vary
            check_variant({key: overrides[key]}, methods[0] if methods else "naclip")
    maps, patches, grid = {}, [], (0, 0)
    for method in methods:
        settings = get_method(method).settings(**mine[method])
        weights = segmenter.patch_attention(image, **settings.to_dict(("method",)))
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
        pd.DataFrame(
            {"method": method, "query_row": qr, "query_col": qc, "row": rows, "col": cols, "weight": weights[n].ravel()}
        )
        for method, weights in maps.items()
        for n, (qr, qc) in enumerate(patches)
    ]
    return pd.concat(frames, ignore_index=True)


def class_summary(probs: np.ndarray, labels: np.ndarray, names: Sequence[str]) -> pd.DataFrame:
    """Per class: the share of pixels labelled with it and its mean and max probability, largest area first."""
    counts = np.bincount(labels.ravel(), minlength=len(names))[: len(names)]
    return pd.DataFrame(
        {
            "class": list(names),
            "pixel_share": counts / labels.size,
            "mean_probability": probs.reshape(len(names), -1).mean(1),
            "max_probability": probs.reshape(len(names), -1).max(1),
        }
    ).sort_values(["pixel_share", "mean_probability"], ascending=False, ignore_index=True)
