"""Runs that cannot be silently wrong: resume keys, missing PNGs, locks, bad sizes, empty runs, messages."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from naclip.cli import main
from naclip.datasets import BadSample, folder_dataset
from naclip.evaluation import evaluate
from naclip.evaluation.records import dataset_identity, run_key, weights_identity
from naclip.evaluation.runner import Interrupted, NothingScored
from naclip.io import LOCK_NAME, FolderBusy, folder_lock
from naclip.segmenter import Segmenter
from tests.helpers_data import build_folder, stop_after, write_image, write_mask

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

FAST = dict(model="naclip-tiny", pretrained=None, device="cpu", pamr_steps=0, short_side=32, slide_crop=0)
FAST.update(progress=False, workers=0)
FLAGS = "--model naclip-tiny --pretrained none --device cpu --pamr-steps 0 --short-side 32 --slide-crop 0"
FLAGS = [*FLAGS.split(), "--no-progress", "--workers", "0"]


def small(root, count=4):
    build_folder(root, count=count, size=(16, 20))
    return folder_dataset(root / "images", root / "masks", root / "classes.txt")


def folder_flags(root):
    return ["--benchmark", "folder", "--images", str(root / "images"), "--masks", str(root / "masks")] + [
        "--classes",
        str(root / "classes.txt"),
    ]


def test_a_class_file_edited_in_place_is_not_resumed_with_the_old_records(tmp_path, monkeypatch, capsys):
    dataset = small(tmp_path / "data")
    stop_after(monkeypatch, 3)
    with pytest.raises(Interrupted, match=r"3 of its 4 images are scored and kept in .*partial.*rerun the same"):
        evaluate(dataset, out=tmp_path / "out", **FAST)
    monkeypatch.undo()
    # Same number of classes, other names: the old key (the class count) would have reused 3 records.
    (tmp_path / "data" / "classes.txt").write_text("sky\nroad, street\ntree\n")
    edited = folder_dataset(tmp_path / "data/images", tmp_path / "data/masks", tmp_path / "data/classes.txt")
    resumed = evaluate(edited, out=tmp_path / "out", **FAST)
    fresh = evaluate(edited, **FAST)
    assert resumed.n_resumed[0] == 0 and resumed.mIoU[0] == fresh.mIoU[0]
    assert "class_lines differ) are not reused" in capsys.readouterr().err


def test_the_key_covers_seed_weights_files_and_label_conventions(tmp_path):
    dataset = small(tmp_path / "data", count=2)
    before = run_key(dataset_identity(dataset))
    write_mask(dataset.items[1].mask, np.zeros((16, 20)) + 1)  # a mask rewritten in place
    os.utime(dataset.items[1].mask, ns=(1, 1))
    assert run_key(dataset_identity(dataset)) != before
    ignored = folder_dataset(dataset.root, tmp_path / "data/masks", dataset.class_file, ignore_index=254)
    assert dataset_identity(ignored) != dataset_identity(dataset)
    checkpoint = tmp_path / "weights.pt"
    checkpoint.write_bytes(b"1234")
    first = weights_identity(str(checkpoint))
    checkpoint.write_bytes(b"12345")
    assert weights_identity(str(checkpoint)) != first and weights_identity("openai") == {"tag": "openai"}
    from naclip.evaluation.runner import make_variants, run_content

    contents = []
    for seed in (0, 1):
        segmenter = Segmenter(**{k: v for k, v in FAST.items() if k not in ("progress", "workers")}, seed=seed)
        segmenter.set_classes(dataset.class_file)
        contents.append(run_content(dataset, segmenter, make_variants(None)))
    assert run_key(contents[0]) != run_key(contents[1])
    assert {"versions", "dataset", "class_lines", "weights", "method", "variants"} <= set(contents[0])


def test_a_resumed_run_writes_every_prediction_png(tmp_path, monkeypatch):
    dataset = small(tmp_path / "data")
    preds = tmp_path / "preds"
    stop_after(monkeypatch, 2)  # a first attempt without --save-predictions
    with pytest.raises(Interrupted):
        evaluate(dataset, out=tmp_path / "out", **FAST)
    monkeypatch.undo()
    stop_after(monkeypatch, 1)
    with pytest.raises(Interrupted):
        evaluate(dataset, out=tmp_path / "out", save_predictions=preds, **FAST)
    monkeypatch.undo()
    written = sorted(p.name for p in preds.glob("*.png"))
    (preds / written[0]).unlink()  # lost after its record was written
    Image.new("P", (20, 16)).save(preds / "im3.png")  # a stale PNG that this run never logged
    frame = evaluate(dataset, out=tmp_path / "out", save_predictions=preds, **FAST)
    reference = evaluate(dataset, save_predictions=tmp_path / "reference", **FAST)
    assert frame.mIoU[0] == reference.mIoU[0] and frame.n_images[0] == 4
    for item in dataset:
        assert (preds / f"{item.name}.png").read_bytes() == (tmp_path / "reference" / f"{item.name}.png").read_bytes()


def test_a_fully_resumed_run_reports_no_speed(tmp_path, monkeypatch):
    dataset = small(tmp_path / "data", count=2)
    from naclip.evaluation import outputs

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(outputs, "write_results", killed)  # every image scored, killed before the tables
    with pytest.raises(KeyboardInterrupt):
        evaluate(dataset, out=tmp_path / "out", **FAST)
    monkeypatch.undo()
    frame = evaluate(dataset, out=tmp_path / "out", **FAST)
    assert frame.n_resumed[0] == 2 and np.isnan(frame.images_per_s[0])


def test_output_folders_are_locked_checked_and_cleaned_before_the_model_loads(tmp_path, monkeypatch, capsys):
    dataset = small(tmp_path / "data", count=2)
    out, preds = tmp_path / "out", tmp_path / "preds"
    out.mkdir()
    preds.mkdir()
    with folder_lock(out, "output folder"):
        with pytest.raises(FolderBusy, match=rf"output folder .*out' is in use by another run \(pid {os.getpid()} on"):
            evaluate(dataset, out=out, **FAST)
        assert main(["eval", *folder_flags(tmp_path / "data"), "--out", str(out), *FLAGS]) == 2
        assert f"pid {os.getpid()}" in capsys.readouterr().err
    with folder_lock(preds, "predictions folder"), pytest.raises(FolderBusy, match="predictions folder"):
        evaluate(dataset, out=out, save_predictions=preds, **FAST)

    def no_model(*args, **kwargs):
        raise AssertionError("the model loaded before the output paths were checked")

    monkeypatch.setattr(Segmenter, "__init__", no_model)
    (tmp_path / "file").write_text("x")
    monkeypatch.chdir(tmp_path)  # the default --out, results/folder, is made here and removed with the refusal
    for flag in ["--out", "--save-predictions"]:
        for path, message in [(tmp_path / "file", "is a file"), (tmp_path / "file" / "sub", "cannot be created")]:
            assert main(["eval", *folder_flags(tmp_path / "data"), flag, str(path), *FLAGS]) == 2
            err = capsys.readouterr().err
            assert message in err and str(path) in err and len(err.strip().splitlines()) == 1
            assert not (tmp_path / "results").exists()
    monkeypatch.undo()

    (out / LOCK_NAME).write_text("999999999 elsewhere\n")  # left by a killed run: taken over
    leftovers = [out / ".summary.csv.x1.tmp", out / ".provenance.json.x2.tmp", preds / ".im0.png.x3.tmp"]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"torn")
    evaluate(dataset, out=out, save_predictions=preds, **FAST)
    assert sorted(p.name for p in out.rglob("*")) == ["per_class.csv", "provenance.json", "summary.csv"]
    assert sorted(p.name for p in preds.rglob("*")) == ["im0.png", "im1.png"]


def test_images_too_small_for_the_model_are_named_and_skippable(tmp_path):
    dataset = small(tmp_path / "data", count=2)
    reference = evaluate(dataset, **FAST)
    write_image(tmp_path / "data/images/line.png", (1, 9))
    write_mask(tmp_path / "data/masks/line.png", np.zeros((1, 9)))
    with pytest.raises(BadSample, match=r"line\.png: image is 9x1 pixels; expected at least 2x2 .*--skip-bad"):
        evaluate(small(tmp_path / "data", count=2), **FAST)
    (tmp_path / "data/images/line.png").unlink()
    (tmp_path / "data/masks/line.png").unlink()
    write_image(tmp_path / "data/images/strip.png", (3, 3000))  # 3 px high: 2 px after the resize, < a 16 px patch
    write_mask(tmp_path / "data/masks/strip.png", np.zeros((3, 3000)))
    message = r"strip\.png: image is 3000x3 pixels, resized to 2048x2 .*at least 23 pixels for a long side of 3000"
    with pytest.raises(BadSample, match=message):
        evaluate(small(tmp_path / "data", count=2), **FAST)
    frame = evaluate(small(tmp_path / "data", count=2), skip_bad=True, **FAST)
    assert (frame.n_images[0], frame.n_skipped[0], frame.mIoU[0]) == (2, 1, reference.mIoU[0])
    with pytest.raises(ValueError, match="slide_crop=8 is smaller than the 16-pixel patch"):
        evaluate(dataset, **{**FAST, "slide_crop": 8, "slide_stride": 8})


def test_runs_that_score_nothing_fail_and_say_why(tmp_path, capsys):
    root = tmp_path / "data"
    dataset = small(root, count=2)
    for item in dataset:
        item.image.write_bytes(b"broken")
    with pytest.raises(NothingScored, match=r"none of its 2 images could be scored \(2 skipped as bad; first: .*im0"):
        evaluate(dataset, skip_bad=True, **FAST)
    assert main(["eval", *folder_flags(root), "--skip-bad", "--out", str(tmp_path / "out"), *FLAGS]) == 2
    assert "none of its 2 images could be scored" in capsys.readouterr().err
    dataset = small(tmp_path / "void", count=2)
    for item in dataset:
        write_mask(item.mask, np.full((16, 20), 255))
    with pytest.raises(NothingScored, match="hold no labelled pixel"):
        evaluate(dataset, **FAST)


def test_masks_without_images_are_reported(tmp_path, capsys):
    dataset = small(tmp_path / "data", count=2)
    write_mask(tmp_path / "data/masks/sub/orphan.png", np.zeros((16, 20)))
    frame = evaluate(dataset, out=tmp_path / "out", **FAST)
    assert "folder: 1 mask(s) have no image and are not scored" in capsys.readouterr().out
    provenance = json.loads((tmp_path / "out/provenance.json").read_text())
    assert provenance["runs"][0]["unpaired_masks"] == [str(tmp_path / "data/masks/sub/orphan.png")]
    assert frame.n_images[0] == 2
    data = tmp_path / "data"
    (data / "images/im1.png").rename(data / "images/im1.PNG")
    dataset = folder_dataset(data / "images", data / "masks", data / "classes.txt", image_suffix=".png")
    frame = evaluate(dataset, out=tmp_path / "out2", **FAST)
    out = capsys.readouterr().out
    assert frame.n_images[0] == 1 and "folder: 1 mask(s) have no image and are not scored" in out
    image = data / "images/im1.PNG"
    assert (
        f"folder: 1 image(s) are not read for their suffix, their masks not scored, e.g. "
        f"{tmp_path / 'data/masks/im1.png'}: its image {image} is not read, only *.png images are (rename it im1.png)"
    ) in out


def test_ignore_index_is_one_value_and_never_a_class(tmp_path):
    root = tmp_path / "data"
    build_folder(root, count=2, size=(16, 20))  # masks hold 255
    with pytest.raises(ValueError, match=r"ignore index 1 is class 1 \('thing1'\).*expected a value from 3 to 65535"):
        folder_dataset(root / "images", root / "masks", root / "classes.txt", ignore_index=1)
    dataset = folder_dataset(root / "images", root / "masks", root / "classes.txt", ignore_index=7)
    with pytest.raises(BadSample, match=r"im0\.png: label values \[255\] .*expected 0\.\.2 or 7 \(ignored\)"):
        evaluate(dataset, **FAST)


def test_cli_errors_are_one_line(tmp_path, capsys, monkeypatch):
    dataset = small(tmp_path / "data", count=2)
    base = ["eval", *folder_flags(tmp_path / "data"), "--out", str(tmp_path / "out"), *FLAGS]
    with pytest.raises(SystemExit) as exited:
        main([*base, "--dtype", "float99"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "argument --dtype: invalid choice: 'float99'" in err
    assert len(err.splitlines()) == 1 and err.strip().endswith("(see naclip eval --help)")
    with pytest.raises(ValueError, match="dtype='float99' is not known; expected one of float32"):
        evaluate(dataset, **{**FAST, "dtype": "float99"})
    assert main([*base, "--variant", "sigma=[3"]) == 2
    err = capsys.readouterr().err
    assert "--variant 'sigma=[3': the value of 'sigma' ('[3') is not a YAML scalar" in err
    assert len(err.splitlines()) == 1
    (tmp_path / "data/classes.txt").write_bytes("caf\xe9\nb\nc\n".encode("latin-1"))
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "classes.txt' is not UTF-8 text" in err and len(err.splitlines()) == 1
    build_folder(tmp_path / "data", count=2, size=(16, 20))
    stop_after(monkeypatch, 1)
    assert main(base) == 130
    err = capsys.readouterr().err
    assert err.startswith("naclip eval: interrupted during folder: 1 of its 2 images are scored and kept in ")
    assert "rerun the same command to resume" in err and len(err.splitlines()) == 1
    monkeypatch.undo()
    assert main(base) == 0
    assert pd.read_csv(tmp_path / "out/summary.csv").n_resumed[0] == 1
