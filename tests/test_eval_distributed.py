"""`torchrun --nproc-per-node 2 -m naclip eval` on CPU (gloo) gives exactly the single-process result,
also when it resumes a run that a single process started."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from naclip.datasets import folder_dataset
from naclip.evaluation import evaluate
from naclip.segmenter import Segmenter
from tests.helpers_data import build_folder

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
ROOT = Path(__file__).resolve().parents[1]


def test_two_processes_resuming_an_interrupted_run_equal_one(tmp_path, monkeypatch):
    data = build_folder(tmp_path / "data", count=7)
    dataset = folder_dataset(data / "images", data / "masks", data / "classes.txt")
    variants = [{"sigma": 5}, {"prob_threshold": 0.6}]
    options = dict(model="naclip-tiny", pretrained=None, device="cpu", pamr_steps=0, short_side=64, slide_crop=0)
    options.update(progress=False, workers=0)
    one = evaluate(dataset, variants, **options)

    # A single process scores 2 images, then stops; two processes finish the run from its records.
    original = Segmenter.predict_variants
    calls = iter(range(100))

    def stop_after_two(self, *args, **kwargs):
        if next(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Segmenter, "predict_variants", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        evaluate(dataset, variants, out=tmp_path / "two", save_predictions=tmp_path / "pred", **options)
    monkeypatch.undo()

    flags = (
        "--model naclip-tiny --pretrained none --device cpu --pamr-steps 0 --short-side 64 --slide-crop 0 "
        "--no-progress --workers 0 --variant sigma=5 --variant prob_threshold=0.6"
    ).split()
    folder = ["--benchmark", "folder", "--images", data / "images", "--masks", data / "masks"]
    folder += ["--classes", data / "classes.txt", "--out", tmp_path / "two", "--save-predictions", tmp_path / "pred"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command = [*launcher, "-m", "naclip", "eval", *map(str, folder), *flags]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    two = pd.read_csv(tmp_path / "two" / "summary.csv")
    assert list(two.world_size) == [2, 2] and list(two.n_images) == [7, 7] and list(two.n_resumed) == [2, 2]
    for column in ["mIoU", "aAcc", "mAcc"]:
        assert two[column].tolist() == pytest.approx(one[column].tolist(), rel=1e-12, abs=0)
    per_class = pd.read_csv(tmp_path / "two" / "per_class.csv")
    for column in ["gt_pixels", "pred_pixels"]:
        assert per_class[column].tolist() == one.attrs["per_class"][column].tolist()
    for variant in ["sigma=5", "prob_threshold=0.6"]:
        assert len(list((tmp_path / "pred" / variant).glob("*.png"))) == 7  # each process wrote its share


# The successors' heads on the tiny model: its trunk blocks 0 and 1 stand in for ViT-B/16's layer indices.
SUCCESSORS = {
    "resclip": {"resclip-rcs-layers": "0,1"},
    "scclip": {"scclip-pre-layer": "1", "scclip-post-layer": "0", "scclip-fusion-layers": "0,1"},
    "sfp": {"sfp-outlier-layer": "1", "sfp-pre-layer": "1", "sfp-post-layer": "0", "sfp-fusion-layers": "0,1"},
    "dihclip": {"dihclip-pre-layer": "1", "dihclip-post-layer": "0", "dihclip-fusion-layers": "0,1"},
}


@pytest.mark.parametrize("method", list(SUCCESSORS))
def test_two_processes_equal_one_with_the_successors_heads(tmp_path, method):
    """ResCLIP (trunk attention taps, a first pass with PAMR) and SC-CLIP (trunk layer taps, LOF per window)
    under torchrun: the same numbers as one process. 112-pixel windows: 49 patches, more than SC-CLIP's
    30 LOF neighbours."""
    data = build_folder(tmp_path / "data", count=3, size=(24, 40))
    dataset = folder_dataset(data / "images", data / "masks", data / "classes.txt")
    layers = {name.replace("-", "_"): value for name, value in SUCCESSORS[method].items()}
    options = dict(model="naclip-tiny", pretrained=None, device="cpu", short_side=112, slide_crop=112, **layers)
    one = evaluate(dataset, method=method, progress=False, workers=0, **options)

    flags = "--model naclip-tiny --pretrained none --device cpu --short-side 112 --slide-crop 112".split()
    flags += [part for name, value in SUCCESSORS[method].items() for part in (f"--{name}", value)]
    folder = ["--benchmark", "folder", "--images", data / "images", "--masks", data / "masks"]
    folder += ["--classes", data / "classes.txt", "--out", tmp_path / "two", "--method", method]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command = [*launcher, "-m", "naclip", "eval", *map(str, folder), *flags, "--no-progress", "--workers", "0"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    two = pd.read_csv(tmp_path / "two" / "summary.csv")
    assert list(two.world_size) == [2] and list(two.n_images) == [3]
    assert two["method"].item() == method
    for column in ["mIoU", "aAcc", "mAcc"]:
        assert two[column].tolist() == pytest.approx(one[column].tolist(), rel=1e-12, abs=0)
    per_class = pd.read_csv(tmp_path / "two" / "per_class.csv")
    for column in ["gt_pixels", "pred_pixels"]:
        assert per_class[column].tolist() == one.attrs["per_class"][column].tolist()
