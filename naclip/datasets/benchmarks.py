"""The eight benchmarks of the protocol, their presets, the embedded samples, and where data lives."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from naclip.datasets import layouts
from naclip.datasets.base import SegDataset
from naclip.datasets.layouts import Layout

RESOURCES = Path(__file__).resolve().parent.parent / "resources"
CLASSES_DIR = RESOURCES / "classes"
SAMPLES_DIR = RESOURCES / "samples"
DATA_ENV = "NACLIP_DATA"


@dataclass(frozen=True)
class Preset:
    """A benchmark: its layout, default sub-folder of the data root, class file and label conventions.

    How a method runs on it (sizes, windows, thresholds) is the method's protocol for `protocol`
    (`naclip.methods`); an embedded sample set takes the protocol of the benchmark it samples.
    `background`: class 0 is the background (spelled as stuff words in the class file).
    """

    key: str
    title: str
    layout: Layout
    folder: str
    class_file: str
    reduce_zero_label: bool = False
    background: bool = False
    sample: bool = False
    protocol: str = ""

    def __post_init__(self) -> None:
        if not self.protocol:
            object.__setattr__(self, "protocol", self.key)

    @property
    def class_path(self) -> Path:
        return CLASSES_DIR / self.class_file


_VOC, _CTX, _COCO = "VOCdevkit/VOC2012", "VOCdevkit/VOC2010", "coco_stuff164k"
_ADE = "ade/ADEChallengeData2016"
_VOC_SAMPLE, _ADE_SAMPLE = "14 PASCAL VOC 2012 images (embedded)", "3 ADE20K val images (embedded)"
PRESETS: dict[str, Preset] = {
    p.key: p
    for p in [
        Preset("voc21", "PASCAL VOC 2012 val", layouts.VOC, _VOC, "voc21.txt", background=True),
        Preset("voc20", "PASCAL VOC 2012 val", layouts.VOC, _VOC, "voc20.txt", reduce_zero_label=True),
        Preset("context60", "PASCAL Context val", layouts.CONTEXT, _CTX, "context60.txt", background=True),
        Preset("context59", "PASCAL Context val", layouts.CONTEXT, _CTX, "context59.txt", reduce_zero_label=True),
        Preset("coco_object", "COCO-Object val2017", layouts.COCO_OBJECT, _COCO, "coco_object.txt", background=True),
        Preset("coco_stuff", "COCO-Stuff 164k val2017", layouts.COCO_STUFF, _COCO, "coco_stuff.txt"),
        Preset("cityscapes", "Cityscapes val", layouts.CITYSCAPES, "cityscapes", "city_scapes.txt"),
        Preset("ade20k", "ADE20K val", layouts.ADE20K, _ADE, "ade20k.txt", reduce_zero_label=True),
        Preset(
            "voc21-sample", _VOC_SAMPLE, layouts.VOC, "voc", "voc21.txt", background=True, sample=True, protocol="voc21"
        ),
        Preset(
            "voc20-sample",
            _VOC_SAMPLE,
            layouts.VOC,
            "voc",
            "voc20.txt",
            reduce_zero_label=True,
            sample=True,
            protocol="voc20",
        ),
        Preset(
            "ade20k-sample",
            _ADE_SAMPLE,
            layouts.ADE20K,
            "ade",
            "ade20k.txt",
            reduce_zero_label=True,
            sample=True,
            protocol="ade20k",
        ),
    ]
}
# Accepted spellings besides the keys.
ALIASES = {
    "coco_stuff164k": "coco_stuff",
    "city_scapes": "cityscapes",
    "coco-object": "coco_object",
    "coco-stuff": "coco_stuff",
    "ade": "ade20k",
}


def get_preset(name: str) -> Preset:
    """The preset of a benchmark key (or alias); ValueError listing the keys otherwise."""
    key = ALIASES.get(name, name)
    if key not in PRESETS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {', '.join(PRESETS)} (or 'folder')")
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
        class_file=preset.class_path,
        reduce_zero_label=preset.reduce_zero_label,
        background=preset.background,
        protocol=preset.protocol,
        root=root,
        split=root / preset.layout.split_file if preset.layout.split_file else None,
    )
