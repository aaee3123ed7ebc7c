"""The study computations: variants, the published table, comparisons, kernel maps, qualitative rows."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from naclip.attention import get_attention
from naclip.datasets import open_benchmark
from naclip.workbook import studies
from naclip.workbook.published import BENCHMARKS, published


def test_published_table_is_tidy_and_its_averages_match():
    table = published()
    assert set(table.columns) == {"method", "pamr", "source", "benchmark", "mIoU"}
    for (_, _, _), group in table.groupby(["method", "pamr", "source"]):
        values = group[group.benchmark != "avg"].mIoU
        if len(values) == len(BENCHMARKS):
            assert values.mean() == pytest.approx(group[group.benchmark == "avg"].mIoU.item(), abs=0.06)
    row = table[(table.method == "NACLIP") & table.pamr & (table.benchmark == "voc21")]
    assert row.mIoU.item() == 64.07 and "authors' code" in row.source.item()
    assert table[table.method == "ClearCLIP"].benchmark.tolist() == ["avg"]


def test_patch_bias_is_the_closed_form_and_the_table_is_tidy():
    bias = studies.patch_bias((4, 6), (1, 2), 2.0)
    rows, cols = np.indices((4, 6))
    expected = np.exp(-((rows - 1) ** 2 + (cols - 2) ** 2) / (2 * 2.0**2))
    np.testing.assert_allclose(bias, expected, rtol=1e-6)
    assert bias[1, 2] == 1.0
    table = studies.kernel_table((4, 6), (1, 2), [1.0, 2.0])
    assert len(table) == 48 and set(table.columns) == {"sigma", "row", "col", "distance", "omega"}
    assert table[(table.sigma == 2.0) & (table.distance == 0)].omega.item() == 1.0
    with pytest.raises(ValueError, match="outside"):
        studies.patch_bias((4, 6), (4, 0), 1.0)


def test_variants_for_each_study():
    main = studies.main_variants(["CLIP", "NACLIP"], 10)
    assert [v["name"] for v in main] == ["CLIP", "NACLIP", "CLIP + PAMR", "NACLIP + PAMR"]
    assert main[3] == {"name": "NACLIP + PAMR", "attention": "naclip", "arch": "reduced", "pamr_steps": 10}
    assert len(studies.main_variants(["SCLIP"], 0)) == 1
    with pytest.raises(ValueError, match="unknown methods"):
        studies.method_variants(["SAM"])

    components = studies.component_variants()
    assert len({(v["attention"], v["arch"]) for v in components}) == 8
    assert components[-1] == {"name": "Gauss + KK + reduced", "attention": "naclip", "arch": "reduced",
                              "pamr_steps": 0}

    sweep = studies.sweep_variants("sigma", [1.0, 5.0], 10, attention="naclip")
    assert [(v["sigma"], v["pamr_steps"]) for v in sweep] == [(1.0, 0), (5.0, 0), (1.0, 10), (5.0, 10)]
    assert [v["name"] for v in studies.grid_variants(["kk"], ["vanilla", "reduced"])] == ["kk/vanilla", "kk/reduced"]


def test_vanilla_gauss_is_query_key_plus_the_bias():
    q, k = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    omega = torch.rand(5, 5)
    expected = (q @ k.transpose(-2, -1) / math.sqrt(8) + omega).softmax(-1)
    torch.testing.assert_close(get_attention("vanilla_gauss").fn(q, k, omega), expected)
    assert get_attention("vanilla_gauss").neighbourhood


def evaluator_rows() -> pd.DataFrame:
    return pd.DataFrame({
        "benchmark": ["voc21-sample"] * 3 + ["ade20k"] * 3,
        "attention": ["naclip", "naclip", "kk"] * 2,
        "arch": ["reduced", "reduced", "vanilla"] * 2,
        "pamr_steps": [0, 10, 0] * 2,
        "mIoU": [50.0, 60.0, 5.0, 10.0, 20.0, 1.0],
    })


def test_tag_methods_and_compare_published():
    tagged = studies.tag_methods(evaluator_rows())
    assert tagged.method.tolist()[:3] == ["NACLIP", "NACLIP", "kk/vanilla"]
    assert tagged["post-processing"].tolist()[:2] == ["none", "PAMR"]
    comparison = studies.compare_published(tagged)
    sources = ["published (NACLIP authors' code (v2))", "published (NACLIP paper)"]
    assert set(sources) <= set(comparison.columns)
    row = comparison[(comparison.benchmark == "voc21-sample") & ~comparison.pamr & (comparison.method == "NACLIP")]
    assert row["published (NACLIP paper)"].item() == 58.9 and row.gap.item() == pytest.approx(50.0 - 58.9)
    row = comparison[(comparison.benchmark == "ade20k") & comparison.pamr]
    assert row[sources[0]].item() == 19.05 and row.gap.item() == pytest.approx(20.0 - 19.05)
    assert comparison[comparison.method == "kk/vanilla"].gap.isna().all()
    avg = comparison[(comparison.benchmark == "avg") & ~comparison.pamr & (comparison.method == "NACLIP")]
    assert avg.mIoU.item() == 30.0 and math.isnan(avg.gap.item())  # two benchmarks: no published average
    marks = studies.published_marks(comparison)
    assert len(marks) == 4 and set(marks.mIoU) == {58.9, 64.07, 17.4, 19.05}


def test_compare_published_average_when_all_benchmarks_ran():
    frame = pd.DataFrame({"benchmark": list(BENCHMARKS), "attention": "csa", "arch": "vanilla", "pamr_steps": 0,
                          "mIoU": 38.0, "sigma": 5.0})
    comparison = studies.compare_published(studies.tag_methods(frame), extra=["sigma"])
    avg = comparison[comparison.benchmark == "avg"]
    assert avg.sigma.item() == 5.0 and avg.gap.item() == pytest.approx(38.0 - 38.2)


def test_class_summary_legend_and_attention_table():
    labels = np.array([[0, 0, 1], [1, 1, 1]])
    probs = np.stack([labels == 0, labels == 1, np.zeros_like(labels)]).astype(np.float32)
    summary = studies.class_summary(probs, labels, ["a", "b", "c"])
    assert summary["class"].tolist() == ["b", "a", "c"]
    assert summary.pixel_share.tolist() == pytest.approx([4 / 6, 2 / 6, 0])
    legend = studies.legend([labels, np.array([[255, 2]])], ["a", "b", "c"])
    assert list(legend) == ["a", "b", "c"] and len(legend["c"]) == 3
    table = studies.attention_table({"CLIP": np.ones((2, 3, 4))}, [(0, 0), (2, 3)], (3, 4))
    assert len(table) == 24 and table.query_row.tolist()[-1] == 2


def test_qualitative_rows_and_attention_maps_on_a_tiny_model(tiny):
    dataset = open_benchmark("voc21-sample")
    segmenter = tiny(slide_crop=0, pamr_steps=0, short_side=64)
    segmenter.set_classes(dataset.class_file)
    rows, legend = studies.qualitative_rows(segmenter, dataset, [0], ["CLIP", "NACLIP"])
    (row,) = rows
    assert len(row) == 4 and all(image.shape == (513, 513, 3) for image in row)
    assert "aeroplane" in legend  # from the ground truth
    image = np.asarray(row[0])
    maps, patches, grid = studies.patch_attention_maps(segmenter, image, [(0.0, 0.0), (1.0, 0.5)], ["CLIP", "SCLIP"])
    assert grid == (4, 4) and patches == [(0, 0), (3, 2)]
    assert maps["CLIP"].shape == (2, 4, 4)
    sums = maps["CLIP"].sum(axis=(1, 2))  # softmax rows without the [CLS] column
    assert np.all((sums > 0) & (sums <= 1 + 1e-5))
    np.testing.assert_allclose(maps["CLIP"][1], segmenter.patch_attention(image, attention="vanilla")[3 * 4 + 2])
    with pytest.raises(ValueError, match="fractions"):
        studies.patch_attention_maps(segmenter, image, [(2.0, 0.0)], ["CLIP"])
