"""Resumable bookkeeping: which images a run has scored, under a key that says what they were scored with.

Each process appends to its own files in `OUT/partial/<dataset>-<key>/`:
- `scores-*.npy`: one int64 array per image, written with `np.save`: [image index, number of
  variants, then for each variant its non-zero count n, n flat cell indices and n counts];
- `saved-*.jsonl`: the prediction PNGs of an image with the digest of each, logged once they are on
  disk (before its score);
- `bad-*.jsonl`: images skipped as bad, with the reason.
A run killed mid-write leaves at most a torn last record, which is dropped on reading; that image is
simply scored again. The key (`key.json` holds what it hashes) covers everything that shapes a
record, so records of another configuration are never mixed in.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from naclip.datasets import SegDataset
from naclip.evaluation.distributed import Group
from naclip.evaluation.outputs import file_digest
from naclip.io import content_digest, remove_leftovers, write_json

KEY_JSON = "key.json"


def encode(index: int, matrices: list[np.ndarray]) -> np.ndarray:
    """One image's record: its index and the sparse cells of each variant's confusion matrix."""
    parts = [np.array([index, len(matrices)], dtype=np.int64)]
    for matrix in matrices:
        flat = matrix.ravel()
        cells = np.flatnonzero(flat)
        parts += [np.array([len(cells)], dtype=np.int64), cells.astype(np.int64), flat[cells].astype(np.int64)]
    return np.concatenate(parts)


def decode(record: np.ndarray, num_classes: int) -> tuple[int, list[np.ndarray]]:
    """The inverse of `encode`: (image index, one dense matrix per variant)."""
    index, count, position = int(record[0]), int(record[1]), 2
    matrices = []
    for _ in range(count):
        n = int(record[position])
        cells, values = record[position + 1 : position + 1 + n], record[position + 1 + n : position + 1 + 2 * n]
        matrix = np.zeros(num_classes * num_classes, dtype=np.int64)
        matrix[cells] = values
        matrices.append(matrix.reshape(num_classes, num_classes))
        position += 1 + 2 * n
    return index, matrices


def _stat(path: Path) -> list[int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def dataset_identity(dataset: SegDataset) -> dict[str, Any]:
    """What of a dataset shapes its records: the items, their files (size, mtime) and the label conventions."""
    files = hashlib.sha256()
    for item in dataset.items:
        entry = [item.name, str(item.image), str(item.mask), _stat(item.image), _stat(item.mask)]
        files.update(json.dumps(entry).encode())
    return {
        "name": dataset.name,
        "images": len(dataset),
        "files": files.hexdigest(),
        "num_classes": dataset.num_classes,
        "reduce_zero_label": dataset.reduce_zero_label,
        "ignore_index": dataset.ignore_index,
        "background": dataset.background,
    }


def weights_identity(pretrained: str | None) -> dict[str, Any]:
    """The weights: random (the seed is a setting), a checkpoint by its content, or an open_clip tag."""
    if pretrained is None:
        return {"random": True}
    path = Path(pretrained).expanduser()
    if path.is_file():
        return {"checkpoint_sha256": content_digest(path)}
    return {"tag": pretrained}


def run_key(content: Mapping[str, Any]) -> str:
    """A short digest of `content` (JSON, sorted keys)."""
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


class RecordStore:
    """This process's append-only record files in `directory` (see the module docstring)."""

    def __init__(self, directory: Path, rank: int = 0) -> None:
        self.directory = directory
        self.tag = f"{socket.gethostname()}-{os.getpid()}-r{rank}"
        self._files: dict[str, IO] = {}

    def _file(self, kind: str, suffix: str, mode: str) -> IO:
        if kind not in self._files:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._files[kind] = open(self.directory / f"{kind}-{self.tag}{suffix}", mode)
        return self._files[kind]

    def _log(self, kind: str, entry: dict[str, Any]) -> None:
        handle = self._file(kind, ".jsonl", "a")
        handle.write(json.dumps(entry) + "\n")
        handle.flush()

    def add(self, index: int, matrices: list[np.ndarray]) -> None:
        handle = self._file("scores", ".npy", "ab")
        np.save(handle, encode(index, matrices))
        handle.flush()

    def add_saved(self, index: int, files: dict[Path, str]) -> None:
        self._log("saved", {"index": index, "files": {str(path.resolve()): digest for path, digest in files.items()}})

    def add_bad(self, index: int, reason: str) -> None:
        self._log("bad", {"index": index, "reason": reason})

    def _entries(self, kind: str) -> list[dict[str, Any]]:
        """Every whole entry of the `kind` logs; a damaged line (torn by a kill, not UTF-8) is dropped, with a note."""
        entries = []
        for path in sorted(self.directory.glob(f"{kind}-*.jsonl")):
            lines = path.read_bytes().splitlines()
            for number, line in enumerate(lines, 1):
                try:
                    entries.append(json.loads(line.decode()))
                except (UnicodeDecodeError, json.JSONDecodeError):
                    if number < len(lines):  # not the last line a kill tears: say which record is dropped
                        print(f"note: {path}, line {number}: damaged record dropped (scored again)", file=sys.stderr)
        return entries

    def load(
        self, num_classes: int, variants: int
    ) -> tuple[dict[int, list[np.ndarray]], dict[int, dict[str, str]], dict]:
        """({index: matrices} scored, {index: {PNG path: digest}} saved, {index: reason} skipped as bad) so far."""
        scored: dict[int, list[np.ndarray]] = {}
        if not self.directory.is_dir():
            return scored, {}, {}
        for path in sorted(self.directory.glob("scores-*.npy")):
            with open(path, "rb") as handle:
                while True:
                    try:
                        index, matrices = decode(np.load(handle), num_classes)
                    except Exception:  # end of file or a torn last record
                        break
                    if len(matrices) == variants:
                        scored.setdefault(index, matrices)
        saved: dict[int, dict[str, str]] = {}
        for entry in self._entries("saved"):
            saved.setdefault(int(entry["index"]), {}).update(entry["files"])
        bad: dict[int, str] = {}
        for entry in self._entries("bad"):
            bad.setdefault(int(entry["index"]), entry["reason"])
        return scored, saved, bad

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._files = {}


class ResumeState:
    """Where one (dataset, configuration) run stands: its key, its records, and which images are done.

    An image is done when its score is recorded and every prediction PNG asked for this time was
    logged as written and is still on disk with the digest it was written with (another run writing
    the same folder may have replaced it); anything else is scored (and written) again. Rank 0
    reads the records and keeps the resumed matrices; every rank gets the same done and bad sets.
    Without a `root` nothing is kept and nothing resumes.
    """

    def __init__(self, root: Path | None, dataset: str, content: Mapping[str, Any], rank: int = 0) -> None:
        self.content = dict(content)
        self.key = run_key(self.content)
        self.directory = root / f"{dataset}-{self.key}" if root is not None else None
        self.store = RecordStore(self.directory, rank) if self.directory is not None else None
        self.done: set[int] = set()
        self.bad: dict[int, str] = {}
        self.matrices: dict[int, list[np.ndarray]] = {}  # resumed images' matrices, rank 0 only
        self.written = 0  # images recorded by this process in this attempt

    def begin(
        self, group: Group, resume: bool, num_classes: int, variants: int, files: Callable[[int], list[Path]]
    ) -> list[str]:
        """Load (or with `resume=False` discard) the records; returns notes about records not reused.

        `files(index)` is the list of prediction PNGs the run writes for an image (empty if none).
        """
        notes: list[str] = []
        if self.store is not None and group.main:
            if not resume and self.directory.exists():
                shutil.rmtree(self.directory)
            scored, saved, bad = self.store.load(num_classes, variants)
            for index, matrices in scored.items():
                logged = saved.get(index, {})
                if all(file_digest(path) == logged.get(str(path.resolve()), "") for path in files(index)):
                    self.matrices[index] = matrices
            self.bad = bad
            self.directory.mkdir(parents=True, exist_ok=True)
            remove_leftovers(self.directory, KEY_JSON)
            write_json(self.content, self.directory / KEY_JSON)
            notes = self._other_configurations()
        done, self.bad = group.gather((sorted(self.matrices), self.bad))[0]
        self.done = set(done)
        group.barrier()
        return notes

    def _other_configurations(self) -> list[str]:
        """A note for each record folder of this dataset made under another key, naming what differs."""
        notes = []
        prefix = self.directory.name[: -len(self.key)]
        for other in sorted(self.directory.parent.glob(f"{prefix}*")):
            key = other.name[len(prefix) :]
            if other == self.directory or len(key) != len(self.key) or not (other / KEY_JSON).is_file():
                continue  # ours, or another dataset's (voc21-sample-... beside voc21-...)
            try:
                theirs = json.loads((other / KEY_JSON).read_text())
            except (OSError, json.JSONDecodeError):
                theirs = {}
            differ = [
                key
                for key in self.content
                if json.dumps(self.content[key], default=str) != json.dumps(theirs.get(key), default=str)
            ]
            notes.append(
                f"{other}: partial results of another configuration ({', '.join(differ) or 'unknown'} differ) "
                "are not reused"
            )
        return notes

    def record(self, index: int, matrices: list[np.ndarray], files: dict[Path, str]) -> None:
        """Keep a scored image: its PNGs (already written; {path: digest}) are logged first, then its score."""
        if self.store is None:
            return
        if files:
            self.store.add_saved(index, files)
        self.store.add(index, matrices)
        self.written += 1

    def record_bad(self, index: int, reason: str) -> None:
        if self.store is not None:
            self.store.add_bad(index, reason)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
