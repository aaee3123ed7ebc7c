"""kill -9 of `naclip eval` at random points: no image-loading worker survives it, and the rerun's files
and numbers equal those of an uninterrupted run, prediction PNGs included."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import pandas as pd
import pytest

from naclip.cli import main
from tests.helpers_data import build_folder

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

FLAGS = "--model naclip-tiny --pretrained none --device cpu --pamr-steps 0 --short-side 32 --slide-crop 0"
FLAGS += " --no-progress --variant sigma=5 --variant prob_threshold=0.4"


def _eval(argv: list[str], start_method: str) -> None:
    """The killed process: `naclip eval` forked from a server that has imported torch already; its
    DataLoader starts workers with `start_method` (fork: children of this process; forkserver: not)."""
    multiprocessing.set_start_method(start_method, force=True)
    os._exit(main(argv))


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _descendants(pid: int) -> list[int]:
    parents = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            parents[int(entry)] = _parent(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads worker processes from /proc")
def test_kill_9_at_random_points_leaves_no_worker_and_the_rerun_equals_an_uninterrupted_run(tmp_path):
    # Masks large enough that prefetched samples fill the workers' pipe (where an orphan used to hang).
    data = build_folder(tmp_path / "data", count=6, size=(120, 160))
    folder = f"--benchmark folder --images {data / 'images'} --masks {data / 'masks'} --classes {data / 'classes.txt'}"

    def argv(name: str, workers: int) -> list[str]:
        out = f"--out {tmp_path / name / 'out'} --save-predictions {tmp_path / name / 'pred'} --workers {workers}"
        return ["eval", *folder.split(), *out.split(), *FLAGS.split()]

    assert main(argv("reference", 0)) == 0
    reference = tmp_path / "reference"
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["naclip.cli", "tests.test_eval_kill"])
    checked_workers = 0
    for seed, workers, start_method in [(0, 1, "fork"), (1, 0, "fork"), (2, 1, "forkserver")]:
        rng, name = random.Random(seed), f"killed{seed}"
        child = context.Process(target=_eval, args=(argv(name, workers), start_method))
        child.start()
        target = rng.randint(1, 4) if workers else rng.randint(0, 11)  # PNGs on disk before the kill
        deadline = time.monotonic() + 120
        while child.is_alive() and time.monotonic() < deadline:
            if len(list((tmp_path / name / "pred").rglob("*.png"))) >= target:
                break
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.03))
        loaders = _descendants(child.pid)  # DataLoader workers (and a forkserver's server)
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        checked_workers += len(loaders)
        end = time.monotonic() + 3
        while any(map(_alive, loaders)) and time.monotonic() < end:
            time.sleep(0.05)
        assert not [pid for pid in loaders if _alive(pid)], "a DataLoader worker outlived its killed parent"

        assert main(argv(name, workers)) == 0
        rerun = tmp_path / name
        assert _files(rerun / "pred") == _files(reference / "pred")
        assert sorted(_files(rerun / "out")) == ["per_class.csv", "provenance.json", "summary.csv"]
        pd.testing.assert_frame_equal(
            pd.read_csv(rerun / "out/per_class.csv"), pd.read_csv(reference / "out/per_class.csv")
        )
        numbers = ["variant", "mIoU", "aAcc", "mAcc", "n_images", "n_skipped"]
        ours, theirs = pd.read_csv(rerun / "out/summary.csv"), pd.read_csv(reference / "out/summary.csv")
        pd.testing.assert_frame_equal(ours[numbers], theirs[numbers])
    assert checked_workers > 0
