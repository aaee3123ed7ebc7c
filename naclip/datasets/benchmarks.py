"""Where the data of the eight benchmarks and of the embedded samples lives, and how to open it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from naclip.benchmarks import ALIASES, BENCHMARKS, RESOURCES, SAMPLE_SUFFIX, Benchmark, get_benchmark
from naclip.datasets import layouts
from naclip.datasets.base import SegDataset
from naclip.datasets.layouts import Layout
from naclip.registry import unknown

SAMPLES_DIR = RESOURCES / "samples"
DATA_ENV = "NACLIP_DATA"


@dataclass(frozen=True)
class Preset:
    """Where a benchmark's data lives: its layout and default sub-folder of the data root.

    What the benchmark is (class file, label conventions) is `naclip.benchmarks`; how a method runs
    on it, the method's protocol for it (`naclip.methods`). An embedded sample set (`<key>-sample`)
    is a few images of a benchmark, under that benchmark's protocol.
    """

    key: str
    layout: Layout
    folder: str
    sample_title: str = ""  # an embedded sample's description; empty for the full benchmark

    @property
    def benchmark(self) -> Benchmark:
        return get_benchmark(self.key)

    @property
    def sample(self) -> bool:
        return bool(self.sample_title)

    @property
    def protocol(self) -> str:
        return self.benchmark.key

    @property
    def title(self) -> str:
        return self.sample_title or self.benchmark.title


_VOC, _CTX, _COCO = "VOCdevkit/VOC2012", "VOCdevkit/VOC2010", "coco_stuff164k"
_VOC_SAMPLE, _ADE_SAMPLE = "14 PASCAL VOC 2012 images (embedded)", "3 ADE20K val images (embedded)"
_LAYOUTS = {
    "voc21": (layouts.VOC, _VOC),
    "context60": (layouts.CONTEXT, _CTX),
    "coco_object": (layouts.COCO_OBJECT, _COCO),
    "voc20": (layouts.VOC, _VOC),
    "context59": (layouts.CONTEXT, _CTX),
    "coco_stuff": (layouts.COCO_STUFF, _COCO),
    "cityscapes": (layouts.CITYSCAPES, "cityscapes"),
    "ade20k": (layouts.ADE20K, "ade/ADEChallengeData2016"),
    "ade847": (layouts.ADE847, "ADE20K_2021_17_01"),
    "context459": (layouts.CONTEXT459, _CTX),
}
_SAMPLES = [("voc21", "voc", _VOC_SAMPLE), ("voc20", "voc", _VOC_SAMPLE), ("ade20k", "ade", _ADE_SAMPLE)]
PRESETS: dict[str, Preset] = {
    **{key: Preset(key, *_LAYOUTS[key]) for key in BENCHMARKS},
    **{
        key + SAMPLE_SUFFIX: Preset(key + SAMPLE_SUFFIX, _LAYOUTS[key][0], folder, title)
        for key, folder, title in _SAMPLES
    },
}


def get_preset(name: str) -> Preset:
    """The preset of a benchmark key (or alias); ValueError listing the keys otherwise."""
    key = ALIASES.get(name, name)
    if key not in PRESETS:
        raise unknown("benchmark", name, [*PRESETS, "folder"])
    return PRESETS[key]


def resolve_root(preset: Preset, data_root: str | Path | None = None) -> Path:
    """The folder holding the benchmark's layout: `<data_root>/<preset.folder>` or `data_root` itself.

    `data_root` defaults to the NACLIP_DATA environment variable; embedded samples need neither.
    """
    if preset.sample:
        return SAMPLES_DIR / preset.folder
    if data_root is None:
        data_root = os.environ.get(DATA_ENV)
        if not data_root:
            raise ValueError(
                f"{preset.key}: no data root; pass --data-root DIR or set {DATA_ENV}=DIR, where DIR holds "
                f"{preset.folder}/ laid out as:\n{preset.layout.describe()}"
            )
    base = Path(data_root).expanduser()
    for candidate in (base / preset.folder, base):
        if (candidate / preset.layout.image_dir).is_dir():
            return candidate
    raise FileNotFoundError(
        f"{preset.key}: {preset.title} not found: missing {base / preset.folder / preset.layout.image_dir}. "
        f"Expected under {base / preset.folder} (or directly under {base}):\n{preset.layout.describe()}"
    )


def open_benchmark(name: str, data_root: str | Path | None = None) -> SegDataset:
    """The evaluation split of a benchmark, with its preset; see `resolve_root` for `data_root`."""
    preset = get_preset(name)
    root = resolve_root(preset, data_root)
    return SegDataset(
        name=preset.key,
        items=preset.layout.list_items(root),
        class_file=preset.benchmark.class_path,
        reduce_zero_label=preset.benchmark.reduce_zero_label,
        ignore_index=preset.benchmark.ignore_index,
        background=preset.benchmark.background,
        protocol=preset.protocol,
        root=root,
        split=root / preset.layout.split_file if preset.layout.split_file else None,
    )
