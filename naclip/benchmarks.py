"""The eight benchmarks of the field's protocol, in the papers' column order: one list for the whole library.

What a benchmark is to a method: its key (the methods' protocols are keyed by it), its class file
and label conventions, its column label and the size of its validation set. Where its data lives
and how it is laid out is `naclip.datasets`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from naclip.registry import Registry

RESOURCES = Path(__file__).resolve().parent / "resources"
CLASSES_DIR = RESOURCES / "classes"  # class files, the benchmarks' own and methods' own (sub-folders)


@dataclass(frozen=True)
class Benchmark:
    """A benchmark of the protocol. `background`: class 0 is the background (spelled as stuff words in the class
    file); `reduce_zero_label`: label 0 is ignored and k becomes k - 1 (mmsegmentation's convention)."""

    key: str
    label: str  # the column label the papers use
    title: str
    class_file: str  # under CLASSES_DIR
    images: int  # validation images: a published number covers all of them
    background: bool = False
    reduce_zero_label: bool = False

    @property
    def class_path(self) -> Path:
        return CLASSES_DIR / self.class_file


BENCHMARKS: Registry[Benchmark] = Registry("benchmark")
for _benchmark in (
    Benchmark("voc21", "VOC21", "PASCAL VOC 2012 val", "voc21.txt", 1449, background=True),
    Benchmark("context60", "PC60", "PASCAL Context val", "context60.txt", 5105, background=True),
    Benchmark("coco_object", "C-Obj", "COCO-Object val2017", "coco_object.txt", 5000, background=True),
    Benchmark("voc20", "VOC20", "PASCAL VOC 2012 val", "voc20.txt", 1449, reduce_zero_label=True),
    Benchmark("context59", "PC59", "PASCAL Context val", "context59.txt", 5105, reduce_zero_label=True),
    Benchmark("coco_stuff", "C-Stf", "COCO-Stuff 164k val2017", "coco_stuff.txt", 5000),
    Benchmark("cityscapes", "City", "Cityscapes val", "city_scapes.txt", 500),
    Benchmark("ade20k", "ADE", "ADE20K val", "ade20k.txt", 2000, reduce_zero_label=True),
):
    BENCHMARKS.register(_benchmark.key, _benchmark)

# Accepted spellings besides the keys.
ALIASES = {
    "coco_stuff164k": "coco_stuff",
    "city_scapes": "cityscapes",
    "coco-object": "coco_object",
    "coco-stuff": "coco_stuff",
    "ade": "ade20k",
}
SAMPLE_SUFFIX = "-sample"  # an embedded sample of a benchmark (naclip.datasets) runs under its protocol


def get_benchmark(name: str) -> Benchmark:
    """The benchmark of a key, an alias, or an embedded sample's name (`voc21-sample`: VOC21's protocol)."""
    key = name.removesuffix(SAMPLE_SUFFIX)
    return BENCHMARKS.get(ALIASES.get(key, key))
