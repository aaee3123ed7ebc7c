"""The study computations: the published table, comparisons with it, variants, kernel maps, qualitative rows."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
import torch

from naclip.attention import QKV, get_attention
from naclip.datasets import open_benchmark
from naclip.methods import get_method
from naclip.workbook import studies
from naclip.workbook.published import BENCHMARKS, IMAGES, ROWS, published


def test_published_holds_every_row_keyed_by_preset_and_its_averages_match():
    table = published()
    assert [r.method for r in ROWS] == [
        "naclip",
        "naclip-nopamr",
        "sclip",
        "clearclip",
        "maskclip",
        "resclip",
        "scclip",
        "sfp",
        "dihclip",
        "pearl",
        "proxyclip",
        "trident",
    ]
    for row in ROWS:
        assert len(row.values) == len(BENCHMARKS)
        if not np.isnan(row.values).any():  # SFP's paper average comes without its per-benchmark numbers
            assert np.mean(row.values) == pytest.approx(row.average, abs=0.06), row.method
    assert table[(table.method == "naclip") & (table.benchmark == "voc21")].mIoU.item() == 64.07
    assert table[(table.method == "clearclip") & (table.benchmark == "cityscapes")].mIoU.item() == 30.0
    assert table[(table.method == "maskclip") & (table.benchmark == "avg")].mIoU.item() == 27.9
    assert set(table.columns) == {"method", "title", "pamr", "source", "benchmark", "mIoU"}
    assert [r.pamr for r in ROWS if r.pamr] == [True]  # only NACLIP's headline row has PAMR
    for row in ROWS[:5]:
        get_method(row.method)  # every preset that exists reruns its row


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
    components = studies.component_variants()
    assert len({(v["attention"], v["arch"]) for v in components}) == 8
    assert components[-1] == {"name": "Gauss + KK + reduced", "attention": "naclip", "arch": "reduced", "pamr_steps": 0}
    sweep = studies.sweep_variants("sigma", [1.0, 5.0], 10)
    assert [(v["sigma"], v["pamr_steps"]) for v in sweep] == [(1.0, 0), (5.0, 0), (1.0, 10), (5.0, 10)]
    assert [v["name"] for v in studies.grid_variants(["kk"], ["vanilla", "reduced"])] == ["kk/vanilla", "kk/reduced"]


def test_vanilla_gauss_is_query_key_plus_the_bias():
    q, k = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    omega = torch.rand(5, 5)
    expected = (q @ k.transpose(-2, -1) / math.sqrt(8) + omega).softmax(-1)
    torch.testing.assert_close(get_attention("vanilla_gauss").fn(QKV(q, k, k), omega), expected)
    assert get_attention("vanilla_gauss").neighbourhood


def rows(method: str, benchmarks=("voc21",), model="ViT-B-16", pretrained="openai", n_images=None, **changes):
    """Evaluator-like rows of `method` run as its authors ran it on `benchmarks`, with `changes` on top."""
    out = []
    for benchmark in benchmarks:
        protocol = benchmark.removesuffix("-sample")
        settings = get_method(method).settings(protocol, **changes).to_dict(("protocol", "method"))
        settings["pamr_dilations"] = ",".join(map(str, settings["pamr_dilations"]))
        out.append(
            {
                "benchmark": benchmark,
                "variant": "default",
                "method": method,
                "model": model,
                "pretrained": pretrained,
                "random_weights": pretrained is None,
                "mIoU": 50.0,
                "n_images": n_images or IMAGES.get(protocol, 14),
                **settings,
            }
        )
    return pd.DataFrame(out)


def compare(frame: pd.DataFrame, keys=("method",)) -> pd.DataFrame:
    return studies.compare_published(studies.label_rows(frame), list(keys))


def test_a_full_benchmark_run_as_published_gets_a_gap():
    table = compare(pd.concat([rows("sclip"), rows("naclip", ["ade20k"])], ignore_index=True))
    sclip = table[(table.method == "sclip") & (table.benchmark == "voc21")].iloc[0]
    assert sclip.published == 59.1 and sclip.gap == pytest.approx(50.0 - 59.1) and sclip.note == ""
    assert sclip.images == "1449 of 1449" and sclip.published_as == "sclip"
    naclip = table[(table.method == "naclip") & (table.benchmark == "ade20k")].iloc[0]
    assert naclip["post-processing"] == "PAMR" and naclip.published == 19.05 and naclip.gap == pytest.approx(30.95)


def test_samples_show_the_published_number_without_a_gap():
    table = compare(rows("naclip-nopamr", ["voc21-sample"], n_images=14))
    row = table[table.benchmark == "voc21-sample"].iloc[0]
    assert row.published == 58.9 and math.isnan(row.gap) and "sample: 14 of 1449 images" in row.note


def test_no_gap_for_random_weights_or_another_backbone():
    table = compare(pd.concat([rows("sclip", pretrained=None), rows("clearclip", model="ViT-L-14")]))
    assert table.gap.isna().all()
    rows_ = table[table.benchmark == "voc21"]
    notes = dict(zip(rows_.method, rows_.note, strict=True))
    assert notes["sclip"] == "random weights"
    assert "backbone ViT-L-14 / openai; published: ViT-B-16 / openai" in notes["clearclip"]


def test_clip_and_maskclip_say_they_borrow_naclips_protocol():
    table = compare(pd.concat([rows("clip"), rows("maskclip")]))
    assert (table.protocol == studies.NO_AUTHORS_RUN).all()
    clip = table[table.method == "clip"].iloc[0]
    assert math.isnan(clip.published) and clip.note == "no published number for clip"
    maskclip = table[(table.method == "maskclip") & (table.benchmark == "voc21")].iloc[0]
    assert maskclip.published == 38.8 and math.isnan(maskclip.gap) and studies.NO_AUTHORS_RUN in maskclip.note
    assert studies.method_label("maskclip") == f"maskclip: {studies.NO_AUTHORS_RUN}"
    assert studies.method_label("sclip") == "sclip"


def test_variants_no_paper_ran_are_labelled_without_a_published_number():
    frame = pd.concat(
        [
            rows("naclip-nopamr", attention="csa"),  # csa on the reduced block
            rows("naclip-nopamr", sigma=3.0),  # NACLIP's block at another sigma
            rows("naclip-nopamr", attention="qq"),  # ClearCLIP's block under NACLIP's protocol
            rows("naclip-nopamr", attention="naclip"),  # the published run itself
        ],
        ignore_index=True,
    ).assign(variant=["csa", "sigma3", "qq", "naclip"])
    table = compare(frame, ["variant"]).set_index(["variant", "benchmark"])
    assert table.loc[("csa", "voc21"), "note"] == studies.NOT_PUBLISHED
    assert table.loc[("sigma3", "voc21"), "note"].startswith(studies.NOT_PUBLISHED)
    assert "sigma 3.0 (published 5.0)" in table.loc[("sigma3", "voc21"), "note"]
    assert "logit_scale 40.0 (published 50.0)" in table.loc[("qq", "voc21"), "note"]
    assert "class names of naclip-nopamr" in table.loc[("qq", "voc21"), "note"]
    assert table.loc[[("csa", "voc21"), ("sigma3", "voc21"), ("qq", "voc21")], "published"].isna().all()
    assert table.loc[("naclip", "voc21"), "gap"] == pytest.approx(50.0 - 58.9)
    marks = studies.published_marks(compare(frame, ["variant"]))
    assert marks.variant.tolist() == ["naclip"] and not marks.pamr.item()


def test_the_average_has_the_published_one_only_over_all_eight_benchmarks():
    table = compare(pd.concat([rows("naclip", list(BENCHMARKS)), rows("sclip", ["voc21", "ade20k"])]))
    avg = table[table.benchmark == "avg"].set_index("method")
    assert avg.loc["naclip", "published"] == 42.46 and avg.loc["naclip", "gap"] == pytest.approx(50.0 - 42.46)
    assert (
        math.isnan(avg.loc["sclip", "published"]) and "published average is over all eight" in avg.loc["sclip", "note"]
    )
    overview = studies.overview(table, ["method"])
    assert list(overview.columns[:9].get_level_values(1)) == [*BENCHMARKS, "avg"]
    assert list(overview.index) == ["naclip", "sclip"]


def test_figure_note_says_what_a_reader_must_know():
    table = compare(
        pd.concat(
            [rows("maskclip", ["voc21-sample"], n_images=14, pretrained=None), rows("naclip-nopamr", attention="csa")]
        )
    )
    note = studies.figure_note(table)
    assert "Sample benchmarks" in note and f"maskclip: {studies.NO_AUTHORS_RUN}" in note
    assert "no paper ran" in note and "Random weights" in note
    assert studies.weights_label("m", None) == "m / random weights"


def test_class_summary_legend_and_attention_table():
    labels = np.array([[0, 0, 1], [1, 1, 1]])
    probs = np.stack([labels == 0, labels == 1, np.zeros_like(labels)]).astype(np.float32)
    summary = studies.class_summary(probs, labels, ["a", "b", "c"])
    assert summary["class"].tolist() == ["b", "a", "c"]
    assert summary.pixel_share.tolist() == pytest.approx([4 / 6, 2 / 6, 0])
    legend = studies.legend([labels, np.array([[255, 2]])], ["a", "b", "c"])
    assert list(legend) == ["a", "b", "c", studies.IGNORED_LABEL] and len(legend["c"]) == 3
    assert legend[studies.IGNORED_LABEL].tolist() == [255, 255, 255]  # white ground truth explained
    table = studies.attention_table({"clip": np.ones((2, 3, 4))}, [(0, 0), (2, 3)], (3, 4))
    assert len(table) == 24 and table.query_row.tolist()[-1] == 2


def test_methods_on_a_tiny_model(tiny):
    """Each preset evaluated with its own protocol, the qualitative rows and the attention maps."""
    backbone = dict(model="naclip-tiny", pretrained=None, device="cpu")
    frame = studies.evaluate_methods(["clip", "sclip"], ["voc20-sample"], limit=1, progress=False, **backbone)
    assert frame.method.tolist() == ["clip", "sclip"] and frame.random_weights.all()
    assert set(frame.attrs["per_class"].method) == {"clip", "sclip"}
    with pytest.raises(ValueError, match="did you mean 'sclip'"):
        studies.evaluate_methods(["sclp"], ["voc20-sample"])

    dataset = open_benchmark("voc20-sample")
    loaded = []
    rows_, legend, captions = studies.qualitative_rows(
        dataset, [0], ["clip", "naclip-nopamr"], on_load=loaded.append, **backbone
    )
    (row,) = rows_
    assert captions[0][:2] == ["", ""] and all(re.fullmatch(r"mIoU \d+\.\d", c) for c in captions[0][2:])
    assert len(row) == 4 and all(image.shape == (513, 513, 3) for image in row)
    assert len(loaded) == 2 and all(s.random_weights for s in loaded) and "aeroplane" in legend

    segmenter = tiny(slide_crop=0, pamr_steps=0, short_side=64)
    image = np.asarray(row[0])
    maps, patches, grid = studies.patch_attention_maps(segmenter, image, [(0.0, 0.0), (1.0, 0.5)], ["clip", "sclip"])
    assert grid == (4, 4) and patches == [(0, 0), (3, 2)] and maps["clip"].shape == (2, 4, 4)
    np.testing.assert_allclose(maps["clip"][1], segmenter.patch_attention(image, attention="vanilla")[3 * 4 + 2])
    with pytest.raises(ValueError, match="fractions"):
        studies.patch_attention_maps(segmenter, image, [(2.0, 0.0)], ["clip"])


@torch.no_grad()
def test_attention_maps_run_each_methods_preset_and_head(tiny):
    """NACLIP's map as before heads said their attention; ResCLIP's and SC-CLIP's are their heads' own,
    under their presets (the tiny model's blocks standing in for ViT-B/16's layer indices)."""
    from naclip.heads import HeadInput, get_head
    from naclip.preprocess import load_image
    from tests.conftest import VOC_IMAGE

    segmenter = tiny(slide_crop=0, short_side=112)  # 7 x 7 patches: SC-CLIP's LOF needs more than 30
    segmenter.set_classes(["background", "aeroplane", "person"])  # ResCLIP's first pass scores them
    image = load_image(VOC_IMAGE)
    layers = dict(resclip_rcs_layers=(0, 1), scclip_pre_layer=1, scclip_post_layer=0, scclip_fusion_layers=(0, 1))
    methods = ["naclip", "resclip", "scclip"]
    maps, patches, grid = studies.patch_attention_maps(segmenter, image, [(0.5, 0.5), (0.0, 1.0)], methods, **layers)
    assert grid == (7, 7) and patches == [(3, 3), (0, 6)]
    tensor = segmenter.prepare(image)[None]
    chosen = [3 * 7 + 3, 6]
    before = segmenter.encoder.attention_weights(segmenter.encoder.run_trunk(tensor), grid, "naclip", 5.0)
    np.testing.assert_array_equal(maps["naclip"], before[0].mean(0)[1:, 1:][chosen].reshape(2, 7, 7).numpy())
    queries = segmenter._query_features()[0]
    for method in ("resclip", "scclip"):
        settings = get_method(method).settings(**{k: v for k, v in layers.items() if k.startswith(method)})
        assert get_method(method).head == method
        head = get_head(method)
        trunk = segmenter.encoder.run_trunk(tensor, head.taps(settings))
        weights = head.attention(HeadInput(segmenter.encoder, trunk, grid, tensor, queries), settings)[0].mean(0)
        weights = weights[1:, 1:] if method == "resclip" else weights  # ResCLIP's has [CLS]; SC-CLIP's patches only
        np.testing.assert_allclose(maps[method], weights[chosen].reshape(2, 7, 7).numpy(), rtol=1e-6, atol=1e-8)
        assert not np.allclose(maps[method], maps["naclip"])
    with pytest.raises(ValueError, match="cannot vary within a run"):
        studies.patch_attention_maps(segmenter, image, [(0.5, 0.5)], ["naclip"], short_side=64)
    with pytest.raises(ValueError, match="unknown key 'scclip_beat'; did you mean 'scclip_beta'"):
        studies.patch_attention_maps(segmenter, image, [(0.5, 0.5)], ["naclip", "scclip"], scclip_beat=0.3)


def test_successors_are_told_apart_from_naclip_by_their_head():
    from naclip.workbook.studies import published_method

    assert published_method("naclip", "reduced", False) == "naclip-nopamr"
    assert published_method("naclip", "reduced", False, head="resclip") == "resclip"
    assert published_method(None, None, False, head="scclip") == "scclip"  # its head has no attention or arch


def test_plugin_effect_pairs_each_base_with_its_combinations():
    combinations = studies.plugin_combinations(["sclip", "scclip"], ["resclip"])
    assert list(combinations.method) == ["sclip+resclip", ""]
    assert combinations.combination[1].startswith("cannot apply: the resclip plug-in remakes")
    results = pd.DataFrame(
        {
            "benchmark": ["b1", "b1", "b1", "b2", "b2", "b2"],
            "method": ["sclip", "sclip+resclip", "scclip"] * 2,
            "mIoU": [30.0, 34.5, 40.0, 20.0, 19.0, 25.0],
        }
    )
    effect = studies.plugin_effect(results, combinations).set_index(["benchmark", "base"])
    assert effect.loc[("b1", "sclip"), ["without", "with_plugin", "change"]].tolist() == [30.0, 34.5, 4.5]
    assert effect.loc[("b2", "sclip"), "change"] == -1.0
    assert effect.loc[("b1", "scclip"), "without"] == 40.0 and np.isnan(effect.loc[("b1", "scclip"), "with_plugin"])
    bars = studies.plugin_bars(studies.plugin_effect(results, combinations))
    assert set(bars.variant) == {"without", "+resclip"}  # published in code: no mark
    assert len(bars) == 2 * 2 + 2  # a bar per base and benchmark without, one per applicable combination
    with pytest.raises(ValueError, match="did you mean 'sclip'"):
        studies.plugin_combinations(["sclp"], ["resclip"])
