"""Files that are never half-written, and the provenance of what wrote them.

Used by the text cache, the evaluation runner and the workbook alike: every file goes to a
temporary name beside its destination, then is renamed over it, so a kill leaves either the old
file or the new one, plus at worst a `.<name>.*.tmp` leftover that `remove_leftovers` clears.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import IO, Any

import pandas as pd

import naclip

TMP_SUFFIX = ".tmp"
LOCK_NAME = ".naclip.lock"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what `open(path, "w")` would give; mkstemp alone gives 0o600


def atomic_write_with(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Call `write(file)` on a temporary file beside `path`, then rename it over `path`.

    Readers see the old file or the complete new one, never a torn one; on any error (disk full,
    Ctrl-C) the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
        os.chmod(temporary, FILE_MODE)
        os.replace(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise _naming(error, path) from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _naming(error: OSError, path: Path) -> OSError:
    """`error` with the file it concerns (a full disk's error names none): '[Errno 28] ...: 'path''."""
    return error if error.filename else OSError(error.errno, f"cannot write: {error.strerror}", str(path))


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (see `atomic_write_with`)."""
    atomic_write_with(path, lambda file: file.write(data))


def atomic_write_all(files: dict[Path, bytes]) -> None:
    """Write each of `files` ({path: data}) to a temporary file beside it, then rename them all.

    Nothing is replaced until every file is written: a full disk (or any error) midway leaves the
    old set of files, never a mix of new and old ones.
    """
    temporaries: list[tuple[str, Path]] = []
    path = None
    try:
        for path, data in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
            temporaries.append((temporary, path))
            with os.fdopen(handle, "wb") as file:
                file.write(data)
            os.chmod(temporary, FILE_MODE)
        for temporary, path in temporaries:
            os.replace(temporary, path)
    except BaseException as error:
        for temporary, _ in temporaries:
            Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError) and path is not None:
            raise _naming(error, path) from None
        raise


def write_csv(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """A data frame as CSV without its index, atomically."""
    atomic_write(path, frame.to_csv(index=False).encode())


def json_bytes(value: Any) -> bytes:
    """`value` as indented JSON (unknown types as their str)."""
    return (json.dumps(value, indent=2, default=str) + "\n").encode()


def write_json(value: Any, path: str | os.PathLike) -> None:
    """`value` as indented JSON (unknown types as their str), atomically."""
    atomic_write(path, json_bytes(value))


def save_torch(obj: object, path: str | os.PathLike) -> None:
    """`torch.save(obj)` to `path`, atomically (a concurrent reader never loads a torn file)."""
    import torch

    atomic_write_with(path, lambda file: torch.save(obj, file))


def remove_leftovers(folder: str | os.PathLike, name: str = "*") -> list[Path]:
    """Delete the temporary files that killed atomic writes of `name` (a glob) left in `folder`; returns them.

    Only the folder itself is searched (outputs may sit in a large folder of the user's), and only
    while no other process writes there (hold the folder's lock).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    leftovers = [path for path in folder.glob(f".{name}.*{TMP_SUFFIX}") if path.is_file()]
    for path in leftovers:
        path.unlink(missing_ok=True)
    return leftovers


def writable_folder(path: str | os.PathLike, what: str = "folder") -> Path:
    """`path` as an existing writable folder (created if needed); ValueError naming it otherwise.

    Run before anything slow, so that a bad output path fails in a second, not after the model loads.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {str(path)!r} is a file; expected a folder (or a path where one can be made)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(
            f"{what} {str(path)!r} cannot be created ({error.strerror}); expected a writable folder"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {str(path)!r} is not writable; expected a folder you may write to")
    return path


def content_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's content (a checkpoint's identity wherever it is copied), computed once per
    (path, size, mtime) in a process."""
    stat = os.stat(path)
    return _file_digest(os.path.abspath(path), stat.st_size, stat.st_mtime_ns)


@cache
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def first_missing(path: str | os.PathLike) -> Path | None:
    """The outermost folder of `path` (itself included) that does not exist yet: what making it would create."""
    path = Path(path).expanduser().absolute()
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            return missing
        missing = folder
    return missing


def remove_unused(folder: Path | None) -> None:
    """Delete `folder` when it holds nothing but folders and lock files (what a run that failed at once left)."""
    if folder is None or not folder.is_dir():
        return
    if all(p.is_dir() or p.name == LOCK_NAME for p in folder.rglob("*")):
        shutil.rmtree(folder, ignore_errors=True)


class FolderBusy(RuntimeError):
    """Another process holds the folder's lock."""


@contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "folder") -> Iterator[Path]:
    """Hold `folder`'s lock file for the duration of the block, so that two runs never write one folder.

    The lock is an `flock` on `folder/.naclip.lock`, which also holds the owner's pid and host; the
    kernel drops it when its process dies (even by kill -9), so a stale file is simply taken over.
    FolderBusy names the other run's pid. POSIX only (Linux, macOS).
    """
    import fcntl

    path = Path(folder) / LOCK_NAME
    while True:
        try:
            handle = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
        except OSError as error:
            if error.errno == errno.ELOOP:  # a symbolic link planted there: never truncate what it points to
                raise ValueError(
                    f"{what} {str(folder)!r}: its lock file {str(path)!r} is a symbolic link; expected a regular "
                    "file (remove the link)"
                ) from None
            raise ValueError(
                f"{what} {str(folder)!r} is not writable ({error.strerror}); expected a folder you may write to"
            ) from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(handle, 200, 0).decode(errors="replace").split() or ["unknown"]
            os.close(handle)
            raise FolderBusy(
                f"{what} {str(folder)!r} is in use by another run (pid {' on '.join(owner[:2])}); "
                "wait for it to end, or choose another folder"
            ) from None
        try:
            same = os.stat(path).st_ino == os.fstat(handle).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a file that its previous owner unlinked between our open and our lock
            break
        os.close(handle)
    try:
        os.ftruncate(handle, 0)
        os.pwrite(handle, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        yield path
    finally:
        path.unlink(missing_ok=True)  # while still locked: nobody can lock this inode after us
        os.close(handle)


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", *args], cwd=Path(naclip.__file__).parent, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


@cache
def code_digest() -> str:
    """A digest of the naclip package's files (code and resources): any edit to the library changes it.

    Keys both the evaluation's resume records and the workbook's completion records, so that an
    edited editable install (its version unchanged) is never mixed with what the old code made.
    """
    package = Path(naclip.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(p for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def library_versions() -> dict[str, str]:
    """The versions of the code that computes a number: naclip, torch, open_clip."""
    import open_clip
    import torch

    return {"naclip_version": naclip.__version__, "torch": torch.__version__, "open_clip": open_clip.__version__}


def environment() -> dict[str, Any]:
    """Versions, source revision and torch's thread count: enough to tell later what produced a number.

    The thread count is recorded because float sums (and so, rarely, a label) depend on it.
    """
    import torch

    commit = _git("rev-parse", "HEAD")
    return {
        **library_versions(),
        "torch_threads": torch.get_num_threads(),
        "git_commit": commit,
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")) if commit else None,
        "python": platform.python_version(),
        "host": platform.node(),
        "command": list(sys.argv),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
