"""Benchmark readers and presets, the `folder` dataset, the embedded samples, COCO mask preparation."""

from naclip.datasets.base import (
    IGNORE_INDEX,
    BadSample,
    Item,
    SegDataset,
    check_sample,
    read_class_names,
    read_mask,
)
from naclip.datasets.benchmarks import DATA_ENV, PRESETS, Preset, get_preset, open_benchmark
from naclip.datasets.folder import folder_dataset

__all__ = [
    "DATA_ENV",
    "IGNORE_INDEX",
    "PRESETS",
    "BadSample",
    "Item",
    "Preset",
    "SegDataset",
    "check_sample",
    "folder_dataset",
    "get_preset",
    "open_benchmark",
    "read_class_names",
    "read_mask",
]
