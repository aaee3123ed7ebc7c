"""Atomic writes, leftovers of killed writes, provenance: the one implementation shared by every module."""

from __future__ import annotations

import os

import pandas as pd
import pytest
import torch

from naclip.io import (
    FILE_MODE,
    atomic_write,
    atomic_write_with,
    environment,
    remove_leftovers,
    save_torch,
    write_csv,
    write_json,
)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "sub" / "table.csv"
    write_csv(pd.DataFrame({"a": [1, 2]}), path)
    assert path.read_text() == "a\n1\n2\n" and (path.stat().st_mode & 0o777) == FILE_MODE

    def torn(file):
        file.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write_with(path, torn)
    assert path.read_text() == "a\n1\n2\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["table.csv"]


def test_leftovers_of_killed_writes_are_removed_and_nothing_else(tmp_path):
    atomic_write(tmp_path / "keep.txt", b"x")
    (tmp_path / "deep").mkdir()
    leftovers = [tmp_path / ".keep.txt.abc123.tmp", tmp_path / ".p.png.zz.tmp"]
    kept = [tmp_path / "deep" / ".q.png.zz.tmp", tmp_path / ".other.csv.zz.tmp", tmp_path / "user.tmp"]
    for path in leftovers + kept:
        path.write_bytes(b"torn")
    assert remove_leftovers(tmp_path, "keep.txt") == [leftovers[0]]
    assert remove_leftovers(tmp_path, "*.png") == [leftovers[1]]
    assert all(path.exists() for path in kept) and not any(path.exists() for path in leftovers)
    assert remove_leftovers(tmp_path / "missing") == []


def test_torch_and_json_round_trip_and_provenance_names_the_code(tmp_path):
    save_torch({"cat": torch.ones(3)}, tmp_path / "cache.pt")
    assert torch.load(tmp_path / "cache.pt", weights_only=True)["cat"].tolist() == [1.0, 1.0, 1.0]
    write_json({"path": tmp_path}, tmp_path / "p.json")
    assert str(tmp_path) in (tmp_path / "p.json").read_text()
    env = environment()
    assert {"naclip_version", "torch", "open_clip", "git_commit", "command", "finished"} <= set(env)
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]
