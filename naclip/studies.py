"""The computations behind the workbook studies: method definitions, result tables, gaps to published numbers.

Notebooks only glue these together and plot; each function here has a test.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from naclip.attention import gaussian_bias


def patch_bias(grid: tuple[int, int], patch: tuple[int, int], sigma: float) -> np.ndarray:
    """NACLIP's Gaussian bias from one patch (row, col) to every patch of an h x w grid, as an (h, w) map."""
    height, width = grid
    row, col = patch
    if not (0 <= row < height and 0 <= col < width):
        raise ValueError(f"patch {patch} is outside the {height} x {width} grid")
    omega = gaussian_bias(height, width, float(sigma))
    return omega[1 + row * width + col, 1:].reshape(height, width).numpy().copy()


def kernel_table(grid: tuple[int, int], patch: tuple[int, int], sigmas: Sequence[float]) -> pd.DataFrame:
    """Tidy bias values: one row per (sigma, patch row, patch col) with its distance to `patch` and omega."""
    rows, cols = np.indices(grid)
    distance = np.hypot(rows - patch[0], cols - patch[1]).ravel()
    frames = [
        pd.DataFrame({"sigma": float(sigma), "row": rows.ravel(), "col": cols.ravel(), "distance": distance,
                      "omega": patch_bias(grid, patch, sigma).ravel()})
        for sigma in sigmas
    ]
    return pd.concat(frames, ignore_index=True)
