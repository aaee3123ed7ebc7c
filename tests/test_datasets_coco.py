"""COCO-Object / COCO-Stuff preparation: the id mappings, the conversion with its check, `naclip data`."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from naclip.cli import main
from naclip.datasets import open_benchmark
from naclip.datasets.coco import INVALID, TARGETS, convert, convert_mask
from tests.helpers_data import build_benchmark, write_image, write_mask

TABLE = TARGETS["coco_object"][0]


def test_mapping_keeps_80_things_in_order_folds_stuff_and_unlabelled_into_background():
    things = [v for v in range(91) if TABLE[v] != INVALID]
    assert len(things) == 80
    assert [int(TABLE[v]) for v in things] == list(range(1, 81))
    # raw value = COCO category id - 1: person (1) -> 1, bicycle (2) -> 2, stop sign (13) -> 12, toothbrush (90) -> 80
    assert (TABLE[0], TABLE[1], TABLE[12], TABLE[89]) == (1, 2, 12, 80)
    assert set(TABLE[91:182].tolist()) == {0}
    assert TABLE[255] == 0  # unlabelled is background, as the authors' cvt_coco_object.py makes it
    # ids no annotation uses (category 12 "street sign", 91) and values past the stuff range are undefined
    assert TABLE[11] == INVALID and TABLE[90] == INVALID and TABLE[182] == INVALID


def test_coco_stuff_numbers_the_171_used_ids_in_order():
    table = TARGETS["coco_stuff"][0]
    used = [v for v in range(255) if table[v] != INVALID]
    assert len(used) == 171 and [int(table[v]) for v in used] == list(range(171))
    assert (table[0], table[10], table[12], table[91], table[181], table[255]) == (0, 10, 11, 80, 170, 255)
    assert table[11] == INVALID


def test_convert_mask_rejects_values_that_are_not_coco_stuff_labels():
    np.testing.assert_array_equal(convert_mask(np.array([[0, 91, 255, 89]], np.uint8)), [[1, 0, 0, 80]])
    with pytest.raises(ValueError, match=r"m\.png: values \[11, 200\] are not COCO-Stuff labels"):
        convert_mask(np.array([[11, 200, 0]], np.uint8), "m.png")


def _coco_stuff(root):
    raw = np.array([[0, 1, 91, 181], [255, 89, 56, 120]], np.uint8)
    for name, values in [("000000000139", raw), ("000000000285", raw[::-1])]:
        write_image(root / "images/val2017" / f"{name}.jpg", size=raw.shape)
        write_mask(root / "annotations/val2017" / f"{name}.png", values)
        write_mask(root / "annotations/val2017" / f"{name}_labelTrainIds.png", np.zeros_like(values))
    return raw


def test_convert_writes_verified_masks_and_a_complete_root(tmp_path):
    raw = _coco_stuff(tmp_path / "src")
    counts = convert(tmp_path / "src", tmp_path / "dst", progress=False)
    assert counts == {"val2017": 2}
    written = sorted(p.name for p in (tmp_path / "dst/annotations/val2017").iterdir())
    assert written == ["000000000139_instanceTrainIds.png", "000000000285_instanceTrainIds.png"]
    mask = np.asarray(Image.open(tmp_path / "dst/annotations/val2017/000000000139_instanceTrainIds.png"))
    np.testing.assert_array_equal(mask, [[1, 2, 0, 0], [0, 80, 52, 0]])
    assert raw[1, 2] == 56  # category 57 (carrot) is the 52nd used thing id
    dataset = open_benchmark("coco_object", tmp_path / "dst")
    assert len(dataset) == 2 and dataset.read_mask(1).max() == 80


def test_convert_in_place_with_workers_and_errors(tmp_path):
    _coco_stuff(tmp_path)
    assert convert(tmp_path, tmp_path, workers=2, progress=False) == {"val2017": 2}
    assert len(open_benchmark("coco_object", tmp_path)) == 2
    assert convert(tmp_path, tmp_path, target="coco_stuff", progress=False) == {"val2017": 2}
    stuff = open_benchmark("coco_stuff", tmp_path)
    np.testing.assert_array_equal(stuff.read_mask(0), [[0, 1, 80, 170], [255, 79, 51, 109]])
    with pytest.raises(FileNotFoundError, match=r"missing .*annotations/train2017.*COCO-Stuff 164k layout"):
        convert(tmp_path, tmp_path, splits=["train2017"], progress=False)
    write_mask(tmp_path / "annotations/val2017/000000000139.png", np.full((2, 4), 25))
    with pytest.raises(ValueError, match=r"000000000139\.png: values \[25\]"):
        convert(tmp_path, tmp_path, progress=False)


def test_data_cli_coco_object_list_and_check(tmp_path, capsys):
    _coco_stuff(tmp_path / "src")
    assert main(["data", "coco-object", str(tmp_path / "src"), str(tmp_path / "dst")]) == 0
    assert "wrote and verified 2 masks" in capsys.readouterr().out

    assert main(["data", "list"]) == 0
    listing = capsys.readouterr().out
    for key in "voc21 voc20 context60 context59 coco_object coco_stuff cityscapes ade20k voc21-sample".split():
        assert f"\n{key} " in listing

    build_benchmark(tmp_path / "data", "ade20k", count=3)
    assert main(["data", "check", "ade20k", "--data-root", str(tmp_path / "data")]) == 0
    write_mask(tmp_path / "data/ade/ADEChallengeData2016/annotations/validation/img_001.png", np.full((2, 2), 1))
    assert main(["data", "check", "ade20k", "--data-root", str(tmp_path / "data")]) == 1
    out = capsys.readouterr().out
    assert "img_001.png: mask is 2x2" in out and "3 images" in out and "1 with problems" in out

    assert main(["data", "check", "cityscapes", "--data-root", str(tmp_path / "data")]) == 2
    assert "leftImg8bit/val" in capsys.readouterr().err


def test_data_check_warns_about_coco_object_masks_holding_255(tmp_path, capsys):
    """Masks made by an earlier version kept 255; the check says so and how to regenerate them."""
    raw = _coco_stuff(tmp_path)
    stale = TABLE[raw].astype(np.uint8)
    stale[raw == 255] = 255  # what the earlier conversion wrote
    write_mask(tmp_path / "annotations/val2017/000000000139_instanceTrainIds.png", stale)
    write_mask(tmp_path / "annotations/val2017/000000000285_instanceTrainIds.png", TABLE[raw[::-1]])
    assert main(["data", "check", "coco_object", "--data-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "warning: 1 of 2 COCO-Object masks hold 255 (unlabelled)" in out
    assert f"naclip data coco-object SRC {tmp_path}" in out

    assert main(["data", "coco-object", str(tmp_path), str(tmp_path)]) == 0
    assert main(["data", "check", "coco_object", "--data-root", str(tmp_path)]) == 0
    assert "warning" not in capsys.readouterr().out
    assert main(["data", "coco-stuff", str(tmp_path), str(tmp_path)]) == 0
    assert main(["data", "check", "coco_stuff", "--data-root", str(tmp_path)]) == 0  # COCO-Stuff keeps 255
    assert "warning" not in capsys.readouterr().out
