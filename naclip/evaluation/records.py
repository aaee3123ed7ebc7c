"""Resumable bookkeeping: each scored image's confusion matrices, appended to a per-process file.

A record is one int64 array written with `np.save`: [image index, number of variants, then for each
variant its non-zero count n, n flat cell indices and n counts]. A run killed mid-write leaves at most
a torn last record, which is dropped on reading; that image is simply scored again.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np


def encode(index: int, matrices: list[np.ndarray]) -> np.ndarray:
    parts = [np.array([index, len(matrices)], dtype=np.int64)]
    for matrix in matrices:
        flat = matrix.ravel()
        cells = np.flatnonzero(flat)
        parts += [np.array([len(cells)], dtype=np.int64), cells.astype(np.int64), flat[cells].astype(np.int64)]
    return np.concatenate(parts)


def decode(record: np.ndarray, num_classes: int) -> tuple[int, list[np.ndarray]]:
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


class RecordStore:
    """Per-image results of one (dataset, configuration) run, kept in `directory` across attempts."""

    def __init__(self, directory: Path, rank: int = 0) -> None:
        self.directory = directory
        self.tag = f"{socket.gethostname()}-{os.getpid()}-r{rank}"
        self._scores = None
        self._bad = None

    def load(self, num_classes: int, variants: int) -> tuple[dict[int, list[np.ndarray]], dict[int, str]]:
        """Images already scored ({index: matrices}) and already skipped as bad ({index: reason})."""
        scored: dict[int, list[np.ndarray]] = {}
        bad: dict[int, str] = {}
        if not self.directory.is_dir():
            return scored, bad
        for path in sorted(self.directory.glob("scores-*.npy")):
            with open(path, "rb") as handle:
                while True:
                    try:
                        index, matrices = decode(np.load(handle), num_classes)
                    except Exception:  # end of file or a torn last record
                        break
                    if len(matrices) == variants:
                        scored.setdefault(index, matrices)
        for path in sorted(self.directory.glob("bad-*.jsonl")):
            for line in path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                bad.setdefault(int(entry["index"]), entry["reason"])
        return scored, bad

    def _open(self, kind: str, suffix: str, mode: str):
        self.directory.mkdir(parents=True, exist_ok=True)
        return open(self.directory / f"{kind}-{self.tag}{suffix}", mode)

    def add(self, index: int, matrices: list[np.ndarray]) -> None:
        if self._scores is None:
            self._scores = self._open("scores", ".npy", "ab")
        np.save(self._scores, encode(index, matrices))
        self._scores.flush()

    def add_bad(self, index: int, reason: str) -> None:
        if self._bad is None:
            self._bad = self._open("bad", ".jsonl", "a")
        self._bad.write(json.dumps({"index": index, "reason": reason}) + "\n")
        self._bad.flush()

    def close(self) -> None:
        for handle in (self._scores, self._bad):
            if handle is not None:
                handle.close()
        self._scores = self._bad = None
