"""Runs that cannot be silently wrong, continued: shared memory, ground truth, containment, stale outputs."""

from __future__ import annotations

import errno
import io
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from naclip.cli import main
from naclip.datasets import BadSample, folder_dataset
from naclip.datasets.base import Item
from naclip.evaluation import evaluate
from naclip.evaluation.runner import Interrupted, NumericalFailure
from naclip.io import LOCK_NAME, folder_lock
from naclip.segmenter import Segmenter
from tests.helpers_data import build_folder, stop_after

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(model="naclip-tiny", pretrained=None, device="cpu", pamr_steps=0, short_side=32, slide_crop=0)
FAST.update(progress=False, workers=0)


def small(root: Path, count: int = 4):
    build_folder(root, count=count, size=(16, 20))
    return folder_dataset(root / "images", root / "masks", root / "classes.txt")


SHM_RUN = """
import sys, warnings
warnings.simplefilter("ignore")
from pathlib import Path
from tests.helpers_data import build_folder
from naclip.datasets import folder_dataset
from naclip.evaluation import evaluate
from naclip.evaluation.runner import Interrupted, NumericalFailure
from naclip.io import LOCK_NAME, folder_lock
from naclip.segmenter import Segmenter
root = Path(sys.argv[1])
build_folder(root, count=6, size=(480, 640))
dataset = folder_dataset(root / "images", root / "masks", root / "classes.txt")
frame = evaluate(dataset, model="naclip-tiny", pretrained=None, device="cpu", pamr_steps=0, short_side=448,
                 slide_crop=0, progress=False, workers=2)
print("scored", frame.n_images[0])
"""


def test_a_small_shared_memory_does_not_hang_the_workers(tmp_path):
    """3 MB of /dev/shm (each prepared image is 3.2 MB): the run completes with its workers."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare to mount a 3 MB /dev/shm in a private mount namespace")
    mount = "mount -t tmpfs -o size=3m tmpfs /dev/shm"
    if subprocess.run(["unshare", "-m", "sh", "-c", mount], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs on /dev/shm in a private mount namespace here")
    (tmp_path / "run.py").write_text(textwrap.dedent(SHM_RUN))
    command = f"{mount} && exec {sys.executable} {tmp_path / 'run.py'} {tmp_path / 'data'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        result = subprocess.run(
            ["unshare", "-m", "sh", "-c", command], capture_output=True, text=True, timeout=60, env=env, cwd=ROOT
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the run with a 3 MB /dev/shm hung")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "scored 6" in result.stdout


def test_outputs_never_overwrite_the_ground_truth(tmp_path, capsys):
    dataset = small(tmp_path / "data", count=2)
    masks = {item.name: item.mask.read_bytes() for item in dataset}
    (tmp_path / "data/split.txt").write_text("im0\nim1\n")
    split = folder_dataset(
        tmp_path / "data/images",
        tmp_path / "data/masks",
        tmp_path / "data/classes.txt",
        split=tmp_path / "data/split.txt",
    )
    cases = [
        (dataset, dict(save_predictions=tmp_path / "data/masks"), "predictions folder .* is the masks folder"),
        (dataset, dict(save_predictions=tmp_path / "data/masks/pred"), "lies inside the masks folder"),
        (dataset, dict(out=tmp_path / "data/images/results"), "output folder .* lies inside the images folder"),
        (dataset, dict(out=tmp_path / "data"), "output folder .*data' contains the images folder"),
        (split, dict(save_predictions=tmp_path / "data"), "contains the images folder"),
    ]
    for data, where, message in cases:
        with pytest.raises(ValueError, match=message):
            evaluate(data, **where, **FAST)
    assert {item.name: item.mask.read_bytes() for item in dataset} == masks
    assert not list((tmp_path / "data").rglob("*.naclip.lock"))
    assert split.inputs()[-1] == ("split file", (tmp_path / "data/split.txt").resolve())
    flags = ["--images", str(tmp_path / "data/images"), "--masks", str(tmp_path / "data/masks")]
    flags += ["--classes", str(tmp_path / "data/classes.txt"), "--out", str(tmp_path / "out")]
    fast = "--model naclip-tiny --pretrained none --device cpu --pamr-steps 0 --short-side 32 --slide-crop 0"
    command = ["eval", "--benchmark", "folder", *flags, *fast.split(), "--no-progress", "--workers", "0"]
    assert main([*command, "--save-predictions", str(tmp_path / "data/masks")]) == 2
    err = capsys.readouterr().err
    assert "is the masks folder" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("line", ["../../outside/evil", "/etc/passwd", "a/../../b"])
def test_split_lines_stay_inside_their_folders(tmp_path, line):
    small(tmp_path / "data", count=2)
    split = tmp_path / "data/split.txt"
    split.write_text(f"im0\n{line}\n")
    message = rf"split file .*split\.txt, line 2: item name '{line}' leaves its folders"
    with pytest.raises(ValueError, match=message):
        folder_dataset(tmp_path / "data/images", tmp_path / "data/masks", tmp_path / "data/classes.txt", split=split)
    with pytest.raises(ValueError, match="leaves its folders"):
        Item(line, tmp_path / "x.jpg", tmp_path / "x.png")


def test_records_of_other_code_are_not_resumed(tmp_path, monkeypatch, capsys):
    """The resume key holds the digest of the package's code, the one the workbook keys its runs with."""
    from naclip import io
    from naclip.evaluation import runner
    from naclip.workbook import outputs as workbook

    assert runner.code_digest is io.code_digest is workbook.code_digest
    copy = tmp_path / "copy"
    shutil.copytree(ROOT / "naclip", copy / "naclip", ignore=shutil.ignore_patterns("__pycache__"))
    digest = [sys.executable, "-c", "import naclip.io as io; print(io.__file__, io.code_digest())"]

    def run() -> str:
        environment = {**os.environ, "PYTHONPATH": str(copy)}
        return subprocess.run(digest, capture_output=True, text=True, env=environment, cwd=copy).stdout

    before = run()
    with open(copy / "naclip/metric.py", "a") as file:
        file.write("# edited in place, the version unchanged\n")
    assert before.startswith(str(copy)) and run() != before

    dataset = small(tmp_path / "data")
    stop_after(monkeypatch, 3)
    with pytest.raises(Interrupted):
        evaluate(dataset, out=tmp_path / "out", **FAST)
    monkeypatch.undo()
    monkeypatch.setattr(runner, "code_digest", lambda: "edited")
    assert evaluate(dataset, out=tmp_path / "out", **FAST).n_resumed[0] == 0
    assert "(code differ) are not reused" in capsys.readouterr().err


def test_a_resumed_run_rewrites_predictions_another_run_replaced(tmp_path, monkeypatch):
    dataset = small(tmp_path / "data")
    out, preds = tmp_path / "out", tmp_path / "preds"
    stop_after(monkeypatch, 2)  # run A, killed
    with pytest.raises(Interrupted):
        evaluate(dataset, out=out, save_predictions=preds, **FAST)
    monkeypatch.undo()
    other = {**FAST, "attention": "vanilla"}  # run B, another setting, completed on the same folders
    evaluate(dataset, out=out, save_predictions=preds, **other)
    reference = tmp_path / "reference"
    evaluate(dataset, save_predictions=reference, **FAST)
    assert any(
        (preds / f"{item.name}.png").read_bytes() != (reference / f"{item.name}.png").read_bytes() for item in dataset
    )
    evaluate(dataset, out=out, save_predictions=preds, **FAST)  # A resumed: rewrites what B replaced
    for item in dataset:
        assert (preds / f"{item.name}.png").read_bytes() == (reference / f"{item.name}.png").read_bytes()


def corrupt_jpeg(path: Path, seed: int = 0) -> None:
    """A JPEG whose entropy-coded data lost its last 200 bytes: OpenCV decodes it, with a warning only."""
    pixels = np.random.default_rng(seed).integers(0, 256, (16, 20, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    path.write_bytes(data[:-200] + data[-2:])  # the end-of-image marker kept


def test_corrupt_jpegs_are_named_and_skippable(tmp_path, capsys):
    root = tmp_path / "data"
    build_folder(root, count=3, size=(16, 20))
    for index in range(3):
        image = root / f"images/im{index}.png"
        image.unlink()
        Image.fromarray(np.random.default_rng(index).integers(0, 256, (16, 20, 3), dtype=np.uint8)).save(
            image.with_suffix(".jpg"), quality=90
        )
    corrupt_jpeg(root / "images/im1.jpg")
    dataset = folder_dataset(root / "images", root / "masks", root / "classes.txt")
    with pytest.raises(
        BadSample, match=r"im1\.jpg' is corrupt \(the JPEG decoder warns: Corrupt JPEG data.*--skip-bad"
    ):
        evaluate(dataset, **FAST)
    frame = evaluate(dataset, skip_bad=True, **FAST)
    assert (frame.n_images[0], frame.n_skipped[0]) == (2, 1)
    flags = ["--images", str(root / "images"), "--masks", str(root / "masks"), "--classes", str(root / "classes.txt")]
    assert main(["data", "check", "folder", *flags]) == 1
    out = capsys.readouterr().out
    assert "im1.jpg' is corrupt" in out and "1 with problems" in out


def test_a_full_disk_leaves_the_previous_tables_whole(tmp_path, monkeypatch, capsys):
    dataset = small(tmp_path / "data", count=2)
    out = tmp_path / "out"
    evaluate(dataset, out=out, **FAST)
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    original = os.fdopen

    def full(handle, *args, **kwargs):
        file = original(handle, *args, **kwargs)
        if ".provenance.json." in os.readlink(f"/proc/self/fd/{handle}"):
            file.write = lambda data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device"))
        return file

    monkeypatch.setattr(os, "fdopen", full)
    with pytest.raises(OSError, match=r"No space left on device: .*provenance\.json"):
        evaluate(dataset, out=out, **{**FAST, "attention": "vanilla"})
    assert {path.name: path.read_bytes() for path in out.iterdir() if path.name != "partial"} == before
    assert not list(out.glob(".*.tmp"))


def test_the_lock_never_follows_a_planted_symlink(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).symlink_to(target)
    with pytest.raises(ValueError, match=r"lock file .*\.naclip\.lock' is a symbolic link; expected a regular file"):
        with folder_lock(out, "output folder"):
            pass
    assert target.read_text() == "keep me\n"


def test_nan_scores_stop_the_evaluation_naming_the_image(tmp_path, monkeypatch):
    """A method's numerical failure (Segmenter raises FloatingPointError) stops the run, naming the image."""
    dataset = small(tmp_path / "data", count=2)

    def failing(self, *args, **kwargs):
        raise FloatingPointError("the class scores hold NaN")

    monkeypatch.setattr(Segmenter, "predict_variants", failing)
    with pytest.raises(NumericalFailure, match=r"im0\.png: the class scores hold NaN; no label is given"):
        evaluate(dataset, skip_bad=True, **FAST)


def test_an_overflowing_logit_scale_stops_the_evaluation(tmp_path):
    dataset = small(tmp_path / "data", count=2)
    with pytest.raises(NumericalFailure, match=r"im0\.png: .*NaN"):
        evaluate(dataset, **{**FAST, "logit_scale": 1e300})


def test_a_damaged_record_line_is_dropped_and_the_provenance_holds_the_threads(tmp_path, monkeypatch, capsys):
    import torch

    dataset = small(tmp_path / "data")
    out, preds = tmp_path / "out", tmp_path / "preds"
    stop_after(monkeypatch, 3)
    with pytest.raises(Interrupted):
        evaluate(dataset, out=out, save_predictions=preds, **FAST)
    monkeypatch.undo()
    (log,) = out.glob("partial/*/saved-*.jsonl")
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(lines[0] + b'{"index": \xff\xfe}\n' + b"".join(lines[1:]))  # invalid UTF-8 inside
    frame = evaluate(dataset, out=out, save_predictions=preds, **FAST)
    assert frame.n_resumed[0] == 3 and frame.n_images[0] == 4
    assert f"{log}, line 2: damaged record dropped" in capsys.readouterr().err
    assert frame.attrs["provenance"]["torch_threads"] == torch.get_num_threads()
