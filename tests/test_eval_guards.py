"""Runs that cannot be silently wrong, continued: shared memory, ground truth, containment, stale outputs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from naclip.datasets import folder_dataset
from naclip.evaluation import evaluate
from tests.helpers_data import build_folder

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
