"""Methods as presets: a last-block change, a post-processing and a protocol per benchmark.

A method is one decorated function returning a `Method` (as timm registers models)::

    @register_method
    def mymethod() -> Method:
        return Method("mymethod", "My method", defaults={"attention": "kk"}, benchmarks={...})

`Method.settings(benchmark, **overrides)` gives the `Settings` the authors used on that
benchmark (their default protocol when `benchmark` is None or unknown to them), with `overrides`
applied on top.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from naclip.settings import Settings, check_keys

CLASSES_DIR = Path(__file__).resolve().parent.parent / "resources" / "classes"
BENCHMARK_KEYS = ("voc21", "context60", "coco_object", "voc20", "context59", "coco_stuff", "cityscapes", "ade20k")


@dataclass(frozen=True)
class Protocol:
    """A method's settings on one benchmark: overrides of its defaults, a class file, and where they come from."""

    settings: Mapping[str, Any] = field(default_factory=dict)
    class_file: str | None = None  # relative to naclip/resources/classes; None: the benchmark's own
    source: str = ""


@dataclass(frozen=True)
class Method:
    """A training-free segmentation method as its authors ran it.

    `defaults` are the method's own settings (last block, post-processing, default protocol);
    `benchmarks` the per-benchmark protocol. `authors_protocol` is False when no run of the authors
    under these benchmarks is public and NACLIP's protocol stands in (say so wherever it is shown).
    """

    name: str
    title: str
    defaults: Mapping[str, Any]
    benchmarks: Mapping[str, Protocol]
    source: str = ""
    authors_protocol: bool = True
    note: str = ""

    def __post_init__(self) -> None:
        check_keys(self.defaults)
        check_keys(self.benchmarks, BENCHMARK_KEYS, what="benchmark")
        for protocol in self.benchmarks.values():
            check_keys(protocol.settings)

    def protocol(self, benchmark: str | None) -> Protocol:
        """The protocol on `benchmark` (a key of BENCHMARK_KEYS); an empty one for other data."""
        return self.benchmarks.get(benchmark or "", Protocol())

    def settings(self, benchmark: str | None = None, **overrides: Any) -> Settings:
        """The settings of this method on `benchmark` (None: its default protocol), then `overrides`."""
        return Settings().replace(**{**self.defaults, **self.protocol(benchmark).settings}).replace(**overrides)

    def class_file(self, benchmark: str | None) -> Path | None:
        """The method's own class file on `benchmark`; None where it uses the benchmark's."""
        name = self.protocol(benchmark).class_file
        return CLASSES_DIR / name if name else None

    def describe(self) -> str:
        """A paragraph: what the method is, where its settings come from."""
        origin = "the authors' protocol" if self.authors_protocol else "NACLIP's protocol (no authors' run published)"
        return f"{self.name}: {self.title}; {origin}. {self.note}".strip()


METHODS: dict[str, Method] = {}


def register_method(fn: Callable[[], Method]) -> Callable[[], Method]:
    """Register the `Method` that `fn()` returns under its name."""
    method = fn()
    METHODS[method.name] = method
    return fn


def get_method(name: str) -> Method:
    """The registered method `name`; ValueError with the closest name otherwise."""
    if name not in METHODS:
        close = difflib.get_close_matches(name, list(METHODS), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"unknown method {name!r}; {hint}expected one of {', '.join(METHODS)}")
    return METHODS[name]
