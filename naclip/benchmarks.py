"""The benchmarks: the field's eight, in the papers' column order, then the two large-vocabulary ones.

What a benchmark is to a method: its key (the methods' protocols are keyed by it), its class file
and label conventions, its column label and the size of its validation set. Where its data lives
and how it is laid out is `naclip.datasets`. `SHARED` is the one protocol every method can be run
under on each benchmark, beside each method's own (its authors').
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
    ignore_index: int = 255  # the mask value that is not scored (65535 in the 16-bit masks of 459 / 847 classes)

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
    # The large-vocabulary pair as CAT-Seg prepares them (16-bit TIFF masks, 65535 unlabelled), with the class
    # files of ProxyCLIP's and Trident's configs (cls_ade20k847.txt, cls_context459.txt).
    Benchmark("ade847", "A-847", "ADE20K-847 (ADE20K full) val", "ade847.txt", 2000, ignore_index=65535),
    Benchmark("context459", "PC459", "PASCAL Context-459 val", "context459.txt", 5105, ignore_index=65535),
):
    BENCHMARKS.register(_benchmark.key, _benchmark)

# The field's table: the eight benchmarks every paper reports, in its column order.
TABLE = ("voc21", "context60", "coco_object", "voc20", "context59", "coco_stuff", "cityscapes", "ade20k")
LARGE_VOCABULARY = ("ade847", "context459")

# Accepted spellings besides the keys.
ALIASES = {
    "coco_stuff164k": "coco_stuff",
    "city_scapes": "cityscapes",
    "coco-object": "coco_object",
    "coco-stuff": "coco_stuff",
    "ade": "ade20k",
    "ade20k847": "ade847",
    "ade20k-847": "ade847",
    "pc459": "context459",
    "context-459": "context459",
}
SAMPLE_SUFFIX = "-sample"  # an embedded sample of a benchmark (naclip.datasets) runs under its protocol


def get_benchmark(name: str) -> Benchmark:
    """The benchmark of a key, an alias, or an embedded sample's name (`voc21-sample`: VOC21's protocol)."""
    key = name.removesuffix(SAMPLE_SUFFIX)
    return BENCHMARKS.get(ALIASES.get(key, key))


# -- the shared protocol ---------------------------------------------------------------------------------

PROTOCOLS = ("authors", "shared")  # each method as its authors ran it; every method under SHARED
CLASS_NAMES = ("synonyms", "plain")  # the benchmark's synonym file; one name per class (`ClassSet.plain`)


@dataclass(frozen=True)
class SharedField:
    """One setting of the shared protocol: its value, the benchmarks where it differs, and why (with sources)."""

    value: object
    reason: str
    per_benchmark: tuple[tuple[str, object], ...] = ()

    def on(self, benchmark: str | None) -> object:
        return dict(self.per_benchmark).get(benchmark or "", self.value)


_BACKGROUND = tuple(key for key in TABLE if BENCHMARKS.get(key).background)
# Each value is the most common choice among eleven methods' own protocols (SCLIP, ClearCLIP, NACLIP, ResCLIP,
# SC-CLIP, SFP, DIH-CLIP, PEARL, ProxyCLIP, CASS, Trident; their configs/cfg_*.py): docs/protocols.md.
SHARED: dict[str, SharedField] = {
    "short_side": SharedField(
        336,
        "336 in 8 of 11 methods (SCLIP, NACLIP, ResCLIP, SC-CLIP, SFP, DIH-CLIP, PEARL, CASS: cfg_*.py); Cityscapes "
        "560 in the same 8 (cfg_city_scapes.py); the large-vocabulary pair 448, the only value in the field's "
        "configs for them (ProxyCLIP and Trident cfg_ade847.py:14, cfg_context459.py:14)",
        (("cityscapes", 560), ("ade847", 448), ("context459", 448)),
    ),
    "long_side": SharedField(2048, "2048 in every method's Resize(scale=(2048, S)) (cfg_*.py)"),
    "slide_crop": SharedField(
        224,
        "224/112 windows: SCLIP, SC-CLIP, SFP and DIH-CLIP on all eight benchmarks, NACLIP, ResCLIP, PEARL and CASS "
        "on all but VOC (clip_segmentor.py:19-21, naclip.py:20-22); one rule for every benchmark",
    ),
    "slide_stride": SharedField(112, "as slide_crop"),
    "pad_windows": SharedField(False, "only ClearCLIP pads windows (clearclip_segmentor.py:168-180)"),
    "logit_scale": SharedField(
        40.0,
        "40 on the benchmarks without background in 10 of 11 methods (all but ClearCLIP's 50), and on those with "
        "background in NACLIP, ResCLIP, PEARL, CASS, ProxyCLIP and Trident (naclip.py:21, pearl_ovss.py:22, "
        "cass_segmentor.py:33, proxyclip_segmentor.py:31, trident.py:30); SCLIP's 65 / 50 and SC-CLIP's 50 / 55 "
        "there are each one family's",
    ),
    "prob_threshold": SharedField(
        0.0,
        "0.1 on the benchmarks with a background class in SCLIP, NACLIP, ResCLIP, PEARL and CASS (cfg_voc21.py, "
        "cfg_context60.py, cfg_coco_object.py); the other methods each pick their own (0.15-0.5); 0 elsewhere in all",
        tuple((key, 0.1) for key in _BACKGROUND),
    ),
    "area_threshold": SharedField(
        0.0, "none in 7 of 11 methods; SCLIP's area threshold (and its copies in SC-CLIP, SFP, DIH-CLIP) on VOC21 only"
    ),
    "pamr_steps": SharedField(
        0,
        "no post-processing in 10 of 11 published rows (NACLIP's paper Table 1 row too); PAMR only in NACLIP's README",
    ),
    "pamr_dilations": SharedField((8, 16), "unused without PAMR; NACLIP's default (naclip.py:20-22)"),
}
SHARED_CLASS_FILES = (
    "the benchmark's own class file (SCLIP's synonym files, used by 8 of 11 methods; ProxyCLIP's for 459 and 847 "
    "classes)"
)


def shared_settings(benchmark: str | None) -> dict[str, object]:
    """The shared protocol's settings on `benchmark` (a key; None or other data: the values without exceptions)."""
    return {name: spec.on(benchmark) for name, spec in SHARED.items()}


def check_protocol(protocol: str) -> str:
    """`protocol` if it is one of PROTOCOLS; ValueError naming them otherwise."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r} is not known; expected one of {', '.join(PROTOCOLS)}")
    return protocol


def check_class_names(class_names: str) -> str:
    """`class_names` if it is one of CLASS_NAMES; ValueError naming them otherwise."""
    if class_names not in CLASS_NAMES:
        raise ValueError(f"class names {class_names!r} are not known; expected one of {', '.join(CLASS_NAMES)}")
    return class_names
