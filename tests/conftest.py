"""Shared fixtures: a tiny random open_clip ViT and the real sample images."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

SAMPLES = Path(__file__).resolve().parents[1] / "naclip" / "resources" / "samples"
VOC_IMAGE = SAMPLES / "voc" / "JPEGImages" / "sample_0000.jpg"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Text-embedding caches go to a temporary folder, never the user's."""
    monkeypatch.setenv("NACLIP_CACHE", str(tmp_path_factory.getbasetemp() / "naclip-cache"))


def make_segmenter(seed: int = 0, **kwargs):
    """A Segmenter on the tiny random ViT (3 blocks, width 64), CPU, float32."""
    from naclip import Segmenter

    torch.manual_seed(seed)
    options = dict(model="naclip-tiny", pretrained=None, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Segmenter(**{**options, **kwargs})


@pytest.fixture
def tiny():
    return make_segmenter


@pytest.fixture
def temporary_method():
    """`add(method)` registers a `Method` (and `head` name, if the test registered one) for this test only."""
    from naclip.heads import HEADS
    from naclip.methods import register_method, unregister_method

    added: list[str] = []

    def add(method):
        register_method(lambda: method)
        added.append(method.name)
        return method

    yield add
    for name in added:
        head = unregister_method(name).head
        if head.startswith("test-") and head in HEADS:
            HEADS.unregister(head)


@pytest.fixture
def proxy(monkeypatch):
    """The external test method `tests/external/proxy_method.py` imported as a user's module would be (it registers the
    method `proxy-test`, whose head reads a second frozen model); unregistered afterwards."""
    import sys

    from naclip.methods import unregister_method

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent / "external"))
    sys.modules.pop("proxy_method", None)
    import proxy_method

    proxy_method.seen.clear()
    yield proxy_method
    unregister_method("proxy-test")
    sys.modules.pop("proxy_method", None)
