"""Synthetic copies of the benchmark layouts: a few tiny images with masks, written on demand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from naclip.datasets import PRESETS, Preset
from naclip.segmenter import Segmenter

SIZE = (6, 8)  # (H, W) of the synthetic images


def names_for(preset: Preset, count: int = 2) -> list[str]:
    """Image names in the style of the benchmark (Cityscapes keeps a city sub-folder)."""
    if preset.key == "cityscapes":
        return [f"aachen/aachen_{i:06d}_000019" for i in range(count)]
    return [f"img_{i:03d}" for i in range(count)]


def write_image(path: Path, size: tuple[int, int] = SIZE, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def write_mask(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(values, dtype=np.uint8), mode="L").save(path)


def mask_values(num_classes: int, size: tuple[int, int] = SIZE, seed: int = 0, zero_is_void: bool = False):
    """A mask using valid stored values: classes, some 255 (and 0 where reduce_zero_label voids it)."""
    rng = np.random.default_rng(seed)
    low = 1 if zero_is_void else 0
    high = num_classes + 1 if zero_is_void else num_classes
    mask = rng.integers(low, high, size)
    mask[0, 0] = 255
    if zero_is_void:
        mask[0, 1] = 0
    return mask.astype(np.uint8)


def build_benchmark(root: Path, key: str, count: int = 2) -> dict[str, np.ndarray]:
    """Write `count` images of benchmark `key` under root/<its folder>; returns {name: stored mask}."""
    preset = PRESETS[key]
    base, layout = root / preset.folder, preset.layout
    num_classes = len(preset.benchmark.class_path.read_text().rstrip("\n").split("\n"))
    masks = {}
    for i, name in enumerate(names_for(preset, count)):
        write_image(base / layout.image_dir / f"{name}{layout.image_suffix}", seed=i)
        masks[name] = mask_values(num_classes, seed=i, zero_is_void=preset.benchmark.reduce_zero_label)
        write_mask(base / layout.mask_dir / f"{name}{layout.mask_suffix}", masks[name])
    if layout.split_file:
        split = base / layout.split_file
        split.parent.mkdir(parents=True, exist_ok=True)
        split.write_text("".join(f"{name}\n" for name in masks))
    return masks


def build_folder(root: Path, count: int = 4, size: tuple[int, int] = (24, 32), classes: int = 3) -> Path:
    """A `folder` dataset: root/images/*.png, root/masks/*.png, root/classes.txt; returns root."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("".join(f"thing{i}, item{i}\n" for i in range(classes)))
    for i in range(count):
        write_image(root / "images" / f"im{i}.png", size, seed=i)
        rng = np.random.default_rng(100 + i)
        mask = rng.integers(0, classes, size).astype(np.uint8)
        mask[: size[0] // 4] = 255
        write_mask(root / "masks" / f"im{i}.png", mask)
    return root


def stop_after(monkeypatch, count: int) -> None:
    """Make the segmenter raise KeyboardInterrupt (Ctrl-C) after `count` images."""
    original, calls = Segmenter.predict_variants, []

    def predict(self, *args, **kwargs):
        if len(calls) == count:
            raise KeyboardInterrupt
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Segmenter, "predict_variants", predict)
