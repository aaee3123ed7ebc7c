"""Two ways to compare (the authors' protocols and the shared one), plain class names, the large-vocabulary
benchmarks, labels by chunks of queries, the cost columns, the published-numbers file and the field's table."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

import naclip.segmenter as segmenter_module
from naclip.benchmarks import BENCHMARKS, CLASSES_DIR, SHARED, TABLE, get_benchmark, shared_settings
from naclip.cli import main
from naclip.cost import counted_gflops
from naclip.datasets import open_benchmark
from naclip.evaluation import evaluate
from naclip.methods import METHODS
from naclip.metric import confusion
from naclip.segmenter import Segmenter
from naclip.settings import Settings
from naclip.text import parse_classes, read_class_file
from naclip.workbook import field
from naclip.workbook.published import DATA_FILE, REPORTS, ROWS, Report
from tests.conftest import VOC_IMAGE

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
TINY = dict(model="naclip-tiny", pretrained=None, device="cpu")


# -- the shared protocol ------------------------------------------------------------------------------------


@pytest.mark.parametrize("benchmark", BENCHMARKS.names())
def test_the_shared_protocol_gives_every_method_the_same_protocol_fields_and_keeps_its_own_parameters(benchmark):
    seen = set()
    for method in METHODS.values():
        shared, authors = method.settings(benchmark, "shared"), method.settings(benchmark)
        seen.add(tuple(getattr(shared, name) for name in SHARED))
        assert {name: getattr(shared, name) for name in SHARED} == shared_settings(benchmark)
        assert shared.params == authors.params, method.name  # attention, arch, sigma, resclip_*, ...: its own
        assert method.class_file(benchmark, "shared") is None  # the benchmark's own class file
        untouched = {k: v for k, v in authors.to_dict().items() if k not in SHARED}
        assert {k: v for k, v in shared.to_dict().items() if k not in SHARED} == untouched
    assert len(seen) == 1


def test_the_shared_values_on_the_benchmarks():
    assert shared_settings("voc21") == {
        "short_side": 336,
        "long_side": 2048,
        "slide_crop": 224,
        "slide_stride": 112,
        "pad_windows": False,
        "logit_scale": 40.0,
        "prob_threshold": 0.1,
        "area_threshold": 0.0,
        "pamr_steps": 0,
        "pamr_dilations": (8, 16),
    }
    assert shared_settings("cityscapes")["short_side"] == 560 and shared_settings("cityscapes")["prob_threshold"] == 0
    assert shared_settings("ade847")["short_side"] == 448
    assert all(spec.reason for spec in SHARED.values())


@pytest.mark.parametrize("benchmark", [*BENCHMARKS.names(), None])
def test_the_authors_protocol_is_unchanged(benchmark):
    for method in METHODS.values():
        protocol = method.protocol(benchmark)
        expected = Settings(method=method.name).replace(**{**method.defaults, **protocol.settings})
        assert method.settings(benchmark) == expected == method.settings(benchmark, "authors")
        own = CLASSES_DIR / protocol.class_file if protocol.class_file else None
        assert method.class_file(benchmark) == own == method.class_file(benchmark, "authors")


def test_an_unknown_protocol_or_class_names_are_refused():
    with pytest.raises(ValueError, match="expected one of authors, shared"):
        METHODS.get("naclip").settings("voc21", "mine")
    with pytest.raises(ValueError, match="expected one of synonyms, plain"):
        Segmenter.for_benchmark("voc21", class_names="short", **TINY)


def test_for_benchmark_under_the_shared_protocol_takes_the_benchmarks_class_file_and_overrides_on_top():
    segmenter = Segmenter.for_benchmark("voc21", method="clearclip", protocol="shared", sigma=3, **TINY)
    assert segmenter.protocol == "shared"
    assert segmenter.classes.lines == read_class_file(CLASSES_DIR / "voc21.txt").lines  # not ClearCLIP's own
    assert (segmenter.settings.short_side, segmenter.settings.logit_scale, segmenter.settings.slide_crop) == (
        336,
        40.0,
        224,
    )
    assert segmenter.settings.attention == "qq" and segmenter.settings.sigma == 3  # its own, then the override
    authors = Segmenter.for_benchmark("voc21", method="clearclip", **TINY)
    assert authors.classes.lines == read_class_file(CLASSES_DIR / "clearclip" / "voc21.txt").lines


# -- class names ----------------------------------------------------------------------------------------------


def test_plain_names_are_one_name_per_class_with_background_as_one_word():
    lines = (CLASSES_DIR / "voc21.txt").read_text().splitlines()
    expected = ["background", *(line.split(",")[0].strip() for line in lines[1:])]
    segmenter = Segmenter.for_benchmark("voc21", class_names="plain", **TINY)
    assert list(segmenter.classes.lines) == expected and list(segmenter.classes.queries) == expected
    assert segmenter.class_names_kind == "plain"
    ade = Segmenter.for_benchmark("ade20k", class_names="plain", **TINY)  # no background: the first names
    assert list(ade.classes.queries) == [
        line.split(",")[0].strip() for line in read_class_file(CLASSES_DIR / "ade20k.txt").lines
    ]
    given = Segmenter.for_benchmark(None, classes=["sky, cloud", "dog, puppy"], class_names="plain", **TINY)
    assert list(given.classes.queries) == ["sky", "dog"]


def test_a_name_shared_by_classes_goes_to_the_class_of_that_one_name():
    classes = parse_classes(["pot, flowerpot", "bag", "bag, handbag, purse", "pot", "screen, crt screen", "screen, tv"])
    assert classes.names == ["flowerpot", "bag", "handbag", "pot", "crt screen", "tv"]
    assert classes.plain() == classes.names
    with pytest.raises(ValueError, match="duplicate class names"):
        parse_classes(["bag", "bag"])
    ade847 = read_class_file(CLASSES_DIR / "ade847.txt")
    assert len(ade847) == 847 and len(set(ade847.names)) == 847 and len(ade847.queries) == 1281


# -- the large-vocabulary benchmarks ----------------------------------------------------------------------------


def _write_tif(path, values):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint16)).save(path, "TIFF")


def _write_jpg(path, size, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)


def test_the_ade847_reader_reads_16_bit_tiff_masks_with_65535_unlabelled(tmp_path):
    root = tmp_path / "ADE20K_2021_17_01"
    masks = {}
    for number, name in enumerate(["ADE_val_00000001", "ADE_val_00000002"]):
        values = np.array([[0, 255, 846], [65535, 300, 12]])[:, :, None].repeat(2, 2).reshape(2, 6) + 0 * number
        masks[name] = values
        _write_jpg(root / "images_detectron2" / "validation" / f"{name}.jpg", values.shape, number)
        _write_tif(root / "annotations_detectron2" / "validation" / f"{name}.tif", values)
    dataset = open_benchmark("ade847", tmp_path)
    assert dataset.root == root and [item.name for item in dataset] == sorted(masks)
    assert dataset.num_classes == 847 and dataset.ignore_index == 65535 and not dataset.reduce_zero_label
    assert dataset.class_names[846] == "adding machine"
    mask = dataset.read_mask(0)
    assert (mask == masks["ADE_val_00000001"]).all()  # 255 is a class here, 65535 the unlabelled value
    matrix = confusion(np.full(mask.shape, 255), mask, 847, dataset.ignore_index)
    assert matrix.sum() == 10 and matrix[255, 255] == 2  # the two 65535 pixels are not counted


def test_the_context459_reader_takes_the_context_split_and_the_pc459_masks(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2010"
    (root / "ImageSets" / "SegmentationContext").mkdir(parents=True)
    (root / "ImageSets" / "SegmentationContext" / "val.txt").write_text("2008_000002\n2008_000003\n")
    for number, name in enumerate(["2008_000002", "2008_000003", "2008_000004"]):  # the last is not in the split
        values = np.array([[0, 458, 457], [100, 255, 1]]) + 0 * number
        _write_jpg(root / "JPEGImages" / f"{name}.jpg", values.shape, number)
        _write_tif(root / "annotations_detectron2" / "pc459_val" / f"{name}.tif", values)
    dataset = open_benchmark("pc459", tmp_path)
    assert [item.name for item in dataset] == ["2008_000002", "2008_000003"]
    assert dataset.num_classes == 459 and dataset.class_names[458] == "wool" and dataset.class_names[0] == "accordion"
    assert (dataset.read_mask(1) == np.array([[0, 458, 457], [100, 255, 1]])).all()
    assert get_benchmark("context459").images == 5105 and get_benchmark("ade847").images == 2000


# -- labels by chunks of queries --------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [dict(pamr_steps=3, slide_crop=32, slide_stride=16), dict(prob_threshold=0.06)])
def test_labels_by_chunks_of_queries_equal_labels_of_all_queries_at_once(monkeypatch, overrides):
    names = ["sky, cloud", "grass, lawn, meadow", "dog", "cat, kitten", "road", "tree, bush", "car", "wall, fence"]
    segmenter = Segmenter(short_side=48, **overrides, **TINY)
    segmenter.set_classes(names)
    tensor = segmenter.prepare(np.asarray(Image.open(VOC_IMAGE).convert("RGB").resize((80, 60))))
    whole = segmenter.predict_variants(tensor, (60, 80), [{}], probs=True)[0]
    monkeypatch.setattr(segmenter_module, "SCORE_BYTES", 3 * 60 * 80 * 4)  # 3 of the 14 queries at a time
    calls = []
    original = segmenter._refined
    monkeypatch.setattr(
        segmenter, "_refined", lambda logits, *rest: calls.append(len(logits)) or original(logits, *rest)
    )
    chunked = segmenter.predict_variants(tensor, (60, 80), [{}], probs=False)[0]
    assert calls == [3, 3, 3, 3, 2] and chunked.probs is None
    assert (chunked.labels == whole.labels).all()
    expected = whole.probs.argmax(0)  # plainly: each class its best synonym, then the threshold
    expected[whole.probs.max(0) < segmenter.settings.prob_threshold] = 0
    assert (chunked.labels == expected).all()


# -- costs ------------------------------------------------------------------------------------------------------


def test_gflops_are_counted_by_torch():
    a, b = torch.randn(30, 40), torch.randn(40, 50)
    product, gflops = counted_gflops(lambda: a @ b)
    assert gflops == 2 * 30 * 40 * 50 / 1e9 and torch.equal(product, a @ b)


def test_eval_reports_its_costs_protocol_and_class_names(tmp_path, capsys):
    out = tmp_path / "out"
    flags = ["--model", "naclip-tiny", "--pretrained", "none", "--device", "cpu", "--no-progress", "--quiet"]
    main(["eval", "--benchmark", "voc20-sample", "--limit", "2", "--pamr-steps", "0", "--out", str(out),
          "--protocol", "shared", "--class-names", "plain", *flags])  # fmt: skip
    printed = capsys.readouterr().out
    assert "protocol: shared, class names: plain" in printed and "gflops" in printed
    summary = pd.read_csv(out / "summary.csv")
    row = summary.iloc[0]
    assert (row.protocol, row.class_names, row.slide_crop, row.short_side) == ("shared", "plain", 224, 336)
    assert row.s_per_image == pytest.approx(row.seconds / 2) and row.peak_memory_mib > 0
    provenance = json.loads((out / "provenance.json").read_text())
    assert (provenance["protocol"], provenance["class_names"]) == ("shared", "plain")
    # GFLOPs: one prediction of the first image, counted while it was made; the same counted here directly
    dataset = open_benchmark("voc20-sample")
    segmenter = Segmenter.for_benchmark("voc20", protocol="shared", class_names="plain", pamr_steps=0, **TINY)
    image = np.asarray(Image.open(dataset[0].image).convert("RGB"))
    segmenter.predict(image)  # the text embedded first, as the evaluator does
    _, gflops = counted_gflops(lambda: segmenter.predict(image))
    assert row.gflops == pytest.approx(gflops) and gflops > 0


def test_data_list_shows_the_shared_protocol_with_its_reasons(capsys):
    main(["data", "list", "--protocol", "shared", "--method", "clearclip"])
    printed = capsys.readouterr().out
    for name, spec in SHARED.items():
        assert f"  {name} = {spec.value}" in printed and spec.reason in printed
    voc21 = next(line for line in printed.splitlines() if line.startswith("voc21 "))
    assert voc21.split()[:6] == ["voc21", "voc21.txt", "336", "224/112", "40", "0.1"]


# -- published numbers and the field's table --------------------------------------------------------------------


def test_every_published_number_has_a_source():
    data = yaml.safe_load(DATA_FILE.read_text())
    count = 0
    for method, entry in data.items():
        for report in entry["reports"]:
            numbers = [v for v in [*report["values"], report["average"]] if v is not None]
            assert report["source"].strip() and report["by"].strip(), method
            assert all(0 <= v <= 100 for v in numbers), method
            count += len(numbers)
    assert count == sum(np.isfinite([*r.values, r.average]).sum() for r in REPORTS)
    assert len({r.method for r in ROWS}) == len(ROWS)  # one primary row per method


def test_the_recomputed_average_and_its_flag():
    values = (60.0, 30.0, 30.0, 80.0, 35.0, 25.0, 35.0, 17.0)
    plain_mean = (60 + 30 + 30 + 80 + 35 + 25 + 35 + 17) / 8  # 39.0
    near = Report("x", "x", False, "paper", "x", "x", values, 39.05)
    far = Report("x", "x", False, "paper", "x", "x", values, 39.2)
    assert near.recomputed == pytest.approx(plain_mean) and not near.average_differs and far.average_differs
    partial = Report("x", "x", False, "paper", "x", "x", (math.nan, *values[1:]), 39.0)
    assert math.isnan(partial.recomputed) and not partial.average_differs
    trident = next(r for r in REPORTS if r.method == "trident")
    assert trident.recomputed == pytest.approx((67.1 + 38.6 + 41.1 + 84.5 + 42.2 + 28.3 + 42.9 + 21.9) / 8)


def _results(method: str, protocol: str, scores: dict[str, float]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"method": method, "protocol": protocol, "benchmark": key, "mIoU": miou, "n_images": 1, "s_per_image": 2.0,
             "images_per_s": 0.5, "peak_memory_mib": 100.0 + i, "gflops": 10.0, "peak_memory_kind": "x"}
            for i, (key, miou) in enumerate(scores.items())
        ]
    )  # fmt: skip


def test_the_field_table_puts_each_run_beside_what_was_printed():
    eight = {key: float(i) for i, key in enumerate(TABLE)}
    results = pd.concat([_results("sclip", "authors", eight), _results("sclip", "shared", {"voc20-sample": 50.0})])
    table = field.field_table(results).set_index("row")
    assert list(table.index) == ["measured, authors' protocol", "measured, shared protocol", "paper", "README",
                                 "re-run by PEARL"]  # fmt: skip
    assert table.loc["measured, authors' protocol", "avg (recomputed)"] == pytest.approx(sum(range(8)) / 8)
    assert table.loc["measured, authors' protocol", "peak_memory_mib"] == 107.0
    assert table.loc["measured, shared protocol", "voc20"] == 50.0
    assert math.isnan(table.loc["measured, shared protocol", "avg (recomputed)"])  # one of eight
    assert table.loc["README", "voc21"] == 59.63 and math.isnan(table.loc["README", "avg (printed)"])
    assert table.loc["paper", "avg (recomputed)"] == pytest.approx(38.15) and not table.loc["paper", "avg differs"]
    # no paper row: the README's is shown (NACLIP's headline numbers are its README's)
    assert field.field_table(_results("naclip", "authors", eight)).row.tolist()[1] == "README"


def test_the_field_study_runs_every_registered_method_by_default():
    assert field.registered_methods(None) == list(METHODS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = field.evaluate_field(
            ["naclip-nopamr"], ["voc20-sample"], ["authors", "shared"], limit=1, progress=False, workers=0, **TINY
        )
    assert list(frame.protocol) == ["authors", "shared"] and list(frame.slide_crop) == [0, 224]
    counts = field.shared_fields(frame, list(SHARED))
    assert counts.set_index("protocol").loc["shared", list(SHARED)].eq(1).all()


def test_evaluate_refuses_an_unknown_protocol():
    with pytest.raises(ValueError, match="expected one of authors, shared"):
        evaluate("voc20-sample", protocol="ours", **TINY)
