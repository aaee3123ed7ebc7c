"""The evaluation runner with the tiny random model: outputs, variants, bad input, resume, CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from naclip.cli import main
from naclip.datasets import BadSample, folder_dataset, open_benchmark
from naclip.evaluation import evaluate
from naclip.segmenter import Segmenter
from tests.helpers_data import build_folder, write_mask

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TINY = dict(
    model="naclip-tiny",
    pretrained=None,
    device="cpu",
    pamr_steps=0,
    short_side=64,
    slide_crop=0,
    progress=False,
    workers=0,
)
TINY_FLAGS = ["--model", "naclip-tiny", "--pretrained", "none", "--device", "cpu", "--no-progress"]


def folder(root, **kwargs):
    build_folder(root, **kwargs)
    return folder_dataset(root / "images", root / "masks", root / "classes.txt")


def independent_miou(pred_dir, dataset) -> float:
    """mIoU straight from the prediction PNGs and the stored masks, sharing no code with the runner."""
    classes = dataset.num_classes
    inter, union = np.zeros(classes), np.zeros(classes)
    for item in dataset:
        pred = np.asarray(Image.open(pred_dir / f"{item.name}.png")).astype(np.int64)
        gt = np.asarray(Image.open(item.mask)).astype(np.int64)
        if dataset.reduce_zero_label:
            gt = np.where(gt == 0, 255, np.where(gt == 255, 255, gt - 1))
        valid = gt != 255
        for c in range(classes):
            inter[c] += np.sum((pred == c) & (gt == c) & valid)
            union[c] += np.sum(((pred == c) | (gt == c)) & valid)
    present = union > 0
    return float(np.mean(inter[present] / union[present]) * 100)


def test_cli_on_embedded_samples_matches_miou_recomputed_from_saved_predictions(tmp_path, capsys):
    out, preds = tmp_path / "out", tmp_path / "preds"
    flags = "eval --benchmark voc21-sample voc20-sample --limit 2 --pamr-steps 0 --short-side 224 --workers 1".split()
    code = main([*flags, "--out", str(out), "--save-predictions", str(preds), *TINY_FLAGS])
    assert code == 0
    printed = capsys.readouterr().out
    assert "voc21-sample" in printed and "RANDOM weights" in printed
    # mmseg's per-class table, then the summary
    assert "per-class results: voc21-sample\n+------" in printed and "\n| Class " in printed
    assert re.search(r"^\| aeroplane +\| +(\d+\.\d\d|nan) \| +(\d+\.\d\d|nan) \|$", printed, re.M)
    assert printed.index("per-class results: voc20-sample") < printed.index("mIoU")
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.benchmark) == ["voc21-sample", "voc20-sample"]
    # presets apply unless a flag overrides them
    assert list(summary.prob_threshold) == [0.1, 0.0] and list(summary.slide_crop) == [0, 0]
    assert list(summary.short_side) == [224, 224]
    assert list(summary.pamr_steps) == [0, 0] and list(summary.n_images) == [2, 2]
    for key, row in zip(["voc21-sample", "voc20-sample"], summary.itertuples()):
        dataset = open_benchmark(key).limited(2)
        assert row.mIoU == pytest.approx(independent_miou(preds / key, dataset), abs=1e-9)
    per_class = pd.read_csv(out / "per_class.csv")
    assert len(per_class) == 21 + 20 and set(per_class.columns) >= {"class_name", "IoU", "Acc", "gt_pixels"}
    assert per_class.random_weights.all() and summary.random_weights.all()  # both tables say so
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["random_weights"] is True and provenance["command"]
    assert {"naclip_version", "git_commit", "torch", "open_clip", "device"} <= set(provenance)
    assert sorted(p.name for p in out.iterdir()) == ["per_class.csv", "provenance.json", "summary.csv"]
    assert main([*flags, "--out", str(out), "--quiet", *TINY_FLAGS]) == 0
    quiet = capsys.readouterr().out
    assert "per-class results" not in quiet and "voc20-sample" in quiet


def test_variants_share_the_trunk_and_equal_separate_runs(tmp_path):
    dataset = folder(tmp_path, count=2)
    variants = [{}, {"name": "thd", "prob_threshold": 0.5}, {"sigma": 2, "pamr_steps": 1, "pamr_dilations": "1,2"}]
    frame = evaluate(dataset, variants, **TINY)
    assert list(frame.variant) == ["default", "thd", "sigma=2,pamr_steps=1,pamr_dilations=1,2"]
    assert list(frame.prob_threshold) == [0.0, 0.5, 0.0] and list(frame.sigma) == [5.0, 5.0, 2.0]
    assert list(frame.pamr_dilations) == ["8,16", "8,16", "1,2"]
    columns = "mIoU aAcc mAcc seconds images_per_s n_images model pretrained attention arch sigma pamr_steps"
    columns += " pamr_dilations prob_threshold logit_scale slide_crop slide_stride short_side long_side device dtype"
    assert set(columns.split()) <= set(frame.columns)
    alone = evaluate(dataset, prob_threshold=0.5, **TINY)
    assert alone.mIoU[0] == frame.mIoU[1] and alone.aAcc[0] == frame.aAcc[1]
    per_class = frame.attrs["per_class"]
    assert len(per_class) == 3 * 3 and set(per_class.variant) == set(frame.variant)
    with pytest.raises(ValueError, match="cannot vary within a run"):
        evaluate(dataset, [{"short_side": 32}], **TINY)


def test_bad_images_are_errors_naming_them_unless_skipped(tmp_path, capsys):
    build_folder(tmp_path, count=4)
    (tmp_path / "split.txt").write_text("im0\nim1\nim2\nim3\nghost\n")
    dataset = folder_dataset(
        tmp_path / "images", tmp_path / "masks", tmp_path / "classes.txt", split=tmp_path / "split.txt"
    )
    write_mask(tmp_path / "masks/im2.png", np.zeros((5, 5)))
    with pytest.raises(BadSample, match=r"masks/im2\.png: mask is 5x5 but its image .*--skip-bad"):
        evaluate(dataset, **TINY)
    (tmp_path / "images/im1.png").write_bytes(b"not an image")
    with pytest.raises(BadSample, match=r"images/im1\.png: cannot read image"):
        evaluate(dataset, **TINY)
    frame = evaluate(dataset, skip_bad=True, out=tmp_path / "out", **TINY)
    assert (frame.n_images[0], frame.n_skipped[0]) == (2, 3)
    skipped = frame.attrs["provenance"]["runs"][0]["skipped"]
    assert [Path(entry["image"]).name for entry in skipped] == ["im1.png", "im2.png", "ghost.png"]
    assert "image not found" in skipped[2]["reason"]
    assert "skipped 3 bad image(s)" in capsys.readouterr().out


def test_cli_prints_clear_errors_and_leaves_no_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("NACLIP_DATA", raising=False)
    monkeypatch.chdir(tmp_path)  # the default --out is results/<benchmarks> under the working directory
    assert main(["eval", "--benchmark", "voc21-smaple", *TINY_FLAGS]) == 2
    assert "voc21-sample" in capsys.readouterr().err
    assert main(["eval", "--benchmark", "ade20k", *TINY_FLAGS]) == 2
    assert "NACLIP_DATA" in capsys.readouterr().err
    assert main(["eval", "--benchmark", "folder", *TINY_FLAGS]) == 2
    assert "--images DIR --masks DIR --classes FILE" in capsys.readouterr().err
    (tmp_path / "images").mkdir()
    args = ["--images", str(tmp_path / "images"), "--masks", str(tmp_path), "--classes", str(tmp_path / "c")]
    assert main(["eval", "--benchmark", "folder", *args, *TINY_FLAGS]) == 2
    assert "the split is empty" in capsys.readouterr().err
    assert main(["eval", "--benchmark", "voc21-sample", "--variant", "sigma", *TINY_FLAGS]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()  # a failed command leaves no empty folder behind
    kept = tmp_path / "mine"
    kept.mkdir()  # a folder that was there before is never removed
    assert main(["eval", "--benchmark", "ade20k", "--out", str(kept), *TINY_FLAGS]) == 2
    assert kept.is_dir()


def test_interrupted_run_resumes_to_the_same_numbers(tmp_path, monkeypatch):
    dataset = folder(tmp_path / "data", count=5)
    full = evaluate(dataset, [{}, {"prob_threshold": 0.6}], out=tmp_path / "full", **TINY)

    original, calls = Segmenter.predict_variants, []

    def fail_after_three(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("interrupted")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Segmenter, "predict_variants", fail_after_three)
    with pytest.raises(RuntimeError, match="interrupted"):
        evaluate(dataset, [{}, {"prob_threshold": 0.6}], out=tmp_path / "run", **TINY)
    monkeypatch.setattr(Segmenter, "predict_variants", original)
    assert not (tmp_path / "run" / "summary.csv").exists()
    records = list((tmp_path / "run" / "partial").glob("*/scores-*.npy"))
    assert len(records) == 1
    with open(records[0], "ab") as handle:  # a record torn by the interruption is dropped
        handle.write(b"\x93NUMPY torn")

    resumed = evaluate(dataset, [{}, {"prob_threshold": 0.6}], out=tmp_path / "run", **TINY)
    assert list(resumed.n_resumed) == [3, 3] and list(resumed.n_images) == [5, 5]
    for column in ["mIoU", "aAcc", "mAcc"]:
        assert list(resumed[column]) == list(full[column])
    pd.testing.assert_frame_equal(resumed.attrs["per_class"], full.attrs["per_class"])
    assert not (tmp_path / "run" / "partial").exists()  # a finished run leaves no partial results

    again = evaluate(dataset, out=tmp_path / "run", resume=False, **TINY)
    assert again.n_resumed[0] == 0 and again.mIoU[0] == full.mIoU[0]


def test_variant_flags_parse_lists_and_names():
    from naclip.evaluation.cli import parse_variant

    assert parse_variant("sigma=3,attention=kk,pamr_dilations=4,8") == {
        "sigma": 3,
        "attention": "kk",
        "pamr_dilations": "4,8",
    }
    assert parse_variant("name=my run,pamr-steps=0") == {"name": "my run", "pamr_steps": 0}
