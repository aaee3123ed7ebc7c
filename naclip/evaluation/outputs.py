"""What a run leaves on disk: atomic CSV/JSON writes, prediction PNGs, provenance."""

from __future__ import annotations

import io
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

import naclip
from naclip.viz import label_image


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, then rename it over `path` (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.chmod(temporary, FILE_MODE)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    atomic_write(path, frame.to_csv(index=False).encode())


def write_json(value: Any, path: Path) -> None:
    atomic_write(path, (json.dumps(value, indent=2, default=str) + "\n").encode())


def save_prediction(labels: np.ndarray, path: Path, num_classes: int) -> None:
    """A label map as a PNG of class indices: palette PNG up to 255 classes, 16-bit greyscale beyond."""
    if num_classes <= 255:
        image = label_image(labels, num_classes)
    else:
        image = Image.fromarray(labels.astype(np.uint16))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write(path, buffer.getvalue())


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", *args], cwd=Path(naclip.__file__).parent, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def environment() -> dict[str, Any]:
    """Versions and source revision: enough to tell later which code produced a number."""
    import open_clip
    import torch

    commit = _git("rev-parse", "HEAD")
    return {
        "naclip_version": naclip.__version__,
        "git_commit": commit,
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")) if commit else None,
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
        "command": list(sys.argv),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
