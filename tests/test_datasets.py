"""Benchmark readers and presets on synthetic copies of every layout, the folder dataset, the samples."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from naclip.datasets import BadSample, folder_dataset, get_preset, open_benchmark
from naclip.datasets.base import check_sample
from tests.helpers_data import SIZE, build_benchmark, build_folder, write_image, write_mask

# The protocol table of the specification: classes, short side, window, prob_thd, reduce_zero_label.
PROTOCOL = {
    "voc21": (21, True, False),
    "voc20": (20, False, True),
    "context60": (60, True, False),
    "context59": (59, False, True),
    "coco_object": (81, True, False),
    "coco_stuff": (171, False, False),
    "cityscapes": (19, False, False),
    "ade20k": (150, False, True),
}


@pytest.mark.parametrize("key", list(PROTOCOL))
def test_every_benchmark_reads_its_layout_with_its_label_conventions(tmp_path, key):
    stored = build_benchmark(tmp_path, key)
    dataset = open_benchmark(key, tmp_path)
    classes, background, reduce_zero = PROTOCOL[key]
    assert dataset.num_classes == classes
    assert dataset.reduce_zero_label is reduce_zero
    assert dataset.background is background and (dataset.class_names[0] == "background") is background
    assert dataset.protocol == key
    assert [item.name for item in dataset] == sorted(stored)
    for index, item in enumerate(dataset):
        assert item.image.is_file() and item.mask.is_file()
        raw = stored[item.name].astype(np.int64)
        expected = np.where(raw == 0, 255, np.where(raw == 255, 255, raw - 1)) if reduce_zero else raw
        np.testing.assert_array_equal(check_sample(dataset, index), expected)


def test_reduce_zero_label_maps_zero_to_ignore_and_shifts_classes(tmp_path):
    build_benchmark(tmp_path, "voc21")
    write_mask(
        tmp_path / "VOCdevkit/VOC2012/SegmentationClass/img_000.png", np.array([[0, 1, 20, 255]] * 6).repeat(2, axis=1)
    )
    voc21, voc20 = open_benchmark("voc21", tmp_path), open_benchmark("voc20", tmp_path)
    np.testing.assert_array_equal(voc21.read_mask(0)[0], [0, 0, 1, 1, 20, 20, 255, 255])
    np.testing.assert_array_equal(voc20.read_mask(0)[0], [255, 255, 0, 0, 19, 19, 255, 255])


def test_data_root_from_environment_or_pointing_at_the_benchmark_folder(tmp_path, monkeypatch):
    build_benchmark(tmp_path, "ade20k")
    monkeypatch.setenv("NACLIP_DATA", str(tmp_path))
    assert len(open_benchmark("ade20k")) == 2
    monkeypatch.delenv("NACLIP_DATA")
    assert len(open_benchmark("ade20k", tmp_path / "ade/ADEChallengeData2016")) == 2
    assert open_benchmark("ade", tmp_path).name == "ade20k"  # an alias


def test_embedded_samples_are_complete_and_valid():
    for key, count, classes in [("voc21-sample", 14, 21), ("voc20-sample", 14, 20), ("ade20k-sample", 3, 150)]:
        dataset = open_benchmark(key)
        assert (len(dataset), dataset.num_classes) == (count, classes)
        for index in range(len(dataset)):
            mask = check_sample(dataset, index)
            assert ((mask < classes) | (mask == 255)).all()
    assert open_benchmark("voc20-sample").protocol == "voc20"
    assert open_benchmark("ade20k-sample").reduce_zero_label


def test_unknown_benchmark_and_missing_data_root(tmp_path, monkeypatch):
    monkeypatch.delenv("NACLIP_DATA", raising=False)
    with pytest.raises(ValueError, match="unknown benchmark 'voc99'.*voc21"):
        get_preset("voc99")
    with pytest.raises(ValueError, match="NACLIP_DATA"):
        open_benchmark("voc21")
    with pytest.raises(FileNotFoundError) as error:
        open_benchmark("cityscapes", tmp_path)
    message = str(error.value)
    assert str(tmp_path / "cityscapes" / "leftImg8bit" / "val") in message
    assert "_gtFine_labelTrainIds.png" in message


def test_missing_mask_folder_split_file_and_empty_split(tmp_path):
    build_benchmark(tmp_path, "context60")
    base = tmp_path / "VOCdevkit/VOC2010"
    split = base / "ImageSets/SegmentationContext/val.txt"
    split.write_text("\n")
    with pytest.raises(ValueError, match="lists no images"):
        open_benchmark("context60", tmp_path)
    split.unlink()
    with pytest.raises(FileNotFoundError, match="missing split file .*val.txt"):
        open_benchmark("context60", tmp_path)
    (base / "SegmentationClassContext").rename(base / "elsewhere")
    with pytest.raises(FileNotFoundError, match="missing folder .*SegmentationClassContext"):
        open_benchmark("context60", tmp_path)


def test_scanned_split_without_images_is_an_error(tmp_path):
    (tmp_path / "coco_stuff164k/images/val2017").mkdir(parents=True)
    (tmp_path / "coco_stuff164k/annotations/val2017").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"no images matching \*\.jpg .*the split is empty"):
        open_benchmark("coco_stuff", tmp_path)


def test_bad_samples_name_the_file_and_what_was_expected(tmp_path):
    build_benchmark(tmp_path, "coco_object", count=5)
    base = tmp_path / "coco_stuff164k"
    masks = base / "annotations/val2017"
    (masks / "img_000_instanceTrainIds.png").unlink()
    write_mask(masks / "img_001_instanceTrainIds.png", np.zeros((SIZE[0] + 1, SIZE[1]), np.uint8))
    (masks / "img_002_instanceTrainIds.png").write_bytes(b"not a png")
    write_mask(masks / "img_003_instanceTrainIds.png", np.full(SIZE, 90, np.uint8))
    Image.fromarray(np.zeros((*SIZE, 3), np.uint8)).save(masks / "img_004_instanceTrainIds.png")
    dataset = open_benchmark("coco_object", tmp_path)
    expectations = [
        r"img_000\.jpg: image has no ground-truth mask; expected .*img_000_instanceTrainIds\.png",
        r"img_001_instanceTrainIds\.png: mask is 8x7 but its image .*img_001\.jpg is 8x6; expected the same size",
        r"img_002_instanceTrainIds\.png: cannot read mask",
        r"img_003_instanceTrainIds\.png: label values \[90\] are outside the 81 classes; expected 0\.\.80 or 255",
        r"img_004_instanceTrainIds\.png: mask has mode RGB; expected a single-channel label PNG",
    ]
    for index, pattern in enumerate(expectations):
        with pytest.raises(BadSample, match=pattern):
            check_sample(dataset, index)


def test_reduce_zero_label_error_speaks_in_stored_values(tmp_path):
    build_benchmark(tmp_path, "ade20k")
    write_mask(tmp_path / "ade/ADEChallengeData2016/annotations/validation/img_000.png", np.full(SIZE, 151))
    with pytest.raises(BadSample, match=r"values \[151\] .* expected 1\.\.150 \(0 is ignored"):
        check_sample(open_benchmark("ade20k", tmp_path), 0)


def test_unreadable_image_is_reported_by_name(tmp_path):
    build_benchmark(tmp_path, "voc21")
    (tmp_path / "VOCdevkit/VOC2012/JPEGImages/img_001.jpg").write_bytes(b"garbage")
    with pytest.raises(BadSample, match=r"img_001\.jpg: cannot read image"):
        check_sample(open_benchmark("voc21", tmp_path), 1)


def test_folder_dataset_detects_suffix_honours_split_ignore_and_reduce_zero(tmp_path):
    root = build_folder(tmp_path, count=3)
    dataset = folder_dataset(root / "images", root / "masks", root / "classes.txt")
    assert [item.name for item in dataset] == ["im0", "im1", "im2"]
    assert dataset.class_names == ["thing0", "thing1", "thing2"] and dataset.protocol is None
    (root / "split.txt").write_text("im2\n")
    only = folder_dataset(root / "images", root / "masks", root / "classes.txt", split=root / "split.txt")
    assert [item.name for item in only] == ["im2"]
    write_mask(root / "masks/im0.png", np.array([[0, 1, 3, 7]]))
    write_image(root / "images/im0.png", (1, 4))
    custom = folder_dataset(
        root / "images", root / "masks", root / "classes.txt", ignore_index=7, reduce_zero_label=True
    )
    np.testing.assert_array_equal(check_sample(custom, 0), [[7, 0, 2, 7]])
    with pytest.raises(FileNotFoundError, match="images folder not found"):
        folder_dataset(root / "nope", root / "masks", root / "classes.txt")
    with pytest.raises(ValueError, match="the split is empty"):
        (root / "empty").mkdir()
        folder_dataset(root / "empty", root / "masks", root / "classes.txt")


def test_limited_keeps_the_first_items_and_conventions(tmp_path):
    build_benchmark(tmp_path, "voc20", count=3)
    dataset = open_benchmark("voc20", tmp_path)
    first = dataset.limited(2)
    assert [i.name for i in first] == ["img_000", "img_001"] and first.reduce_zero_label
    assert dataset.limited(None) is dataset and dataset.limited(10) is dataset
    with pytest.raises(ValueError, match="limit must be at least 1"):
        dataset.limited(0)


def test_an_image_under_another_suffix_is_reported_not_as_a_missing_image(tmp_path, capsys):
    from naclip.cli import main
    from naclip.datasets.folder import NO_IMAGE, unpaired_masks

    root = build_folder(tmp_path, count=3, size=SIZE)
    (root / "images/im2.png").rename(root / "images/im2.PNG")
    write_mask(root / "masks/orphan.png", np.zeros(SIZE))
    dataset = folder_dataset(root / "images", root / "masks", root / "classes.txt", image_suffix=".png")
    assert [item.name for item in dataset] == ["im0", "im1"]
    assert unpaired_masks(dataset) == {
        root / "masks/im2.png": f"its image {root / 'images/im2.PNG'} is not read, only *.png images are "
        "(rename it im2.png)",
        root / "masks/orphan.png": NO_IMAGE,
    }
    flags = ["data", "check", "folder", "--images", str(root / "images"), "--masks", str(root / "masks")]
    assert main([*flags, "--classes", str(root / "classes.txt"), "--image-suffix", ".png"]) == 1
    out = capsys.readouterr().out
    assert f"{root / 'masks/im2.png'}: its image {root / 'images/im2.PNG'} is not read" in out
    assert f"{root / 'masks/orphan.png'}: mask without an image; it is never scored" in out
    assert "1 masks without an image, 1 images not read for their suffix" in out


def test_background_class_is_named_background():
    assert open_benchmark("voc21-sample").class_names[:2] == ["background", "aeroplane"]
    assert open_benchmark("voc20-sample").class_names[0] == "aeroplane"


def test_data_check_reads_a_folder_dataset_and_reports_every_problem(tmp_path, capsys):
    from naclip.cli import main

    root = build_folder(tmp_path, count=3, size=SIZE)
    flags = ["data", "check", "folder", "--images", str(root / "images"), "--masks", str(root / "masks")]
    flags += ["--classes", str(root / "classes.txt")]
    assert main(flags) == 0
    assert "folder: 3 images under" in capsys.readouterr().out
    write_mask(root / "masks/im1.png", np.full(SIZE, 9))
    write_image(root / "images/im2.png", (1, 8))
    write_mask(root / "masks/extra/orphan.png", np.zeros(SIZE))
    assert main(flags) == 1
    out = capsys.readouterr().out
    assert "im1.png: label values [9] are outside the 3 classes" in out
    assert "im2.png: image is 8x1 pixels; expected at least 2x2" in out
    assert f"{root / 'masks/extra/orphan.png'}: mask without an image" in out
    assert "2 with problems, 1 masks without an image, 0 images not read for their suffix" in out
    assert main(["data", "check", "folder", "--images", str(root / "images")]) == 2
    assert "needs --images DIR --masks DIR --classes FILE" in capsys.readouterr().err
