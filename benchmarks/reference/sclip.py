"""SCLIP (github:wangf3014/SCLIP): `CLIPForSegmentation` from `clip_segmentor.py` with its configs."""

from __future__ import annotations

from pathlib import Path

import torch

from benchmarks.reference.common import Authors, Checkout, construct, framework_stubs, read_config

CHECKOUT = "sclip"  # the command-line flag naming the checkout
METHODS = ("sclip",)
BENCHMARKS = {"sclip": ("voc21", "context60", "coco_stuff", "cityscapes")}  # with and without background
FAST_BENCHMARKS = {"sclip": ("voc21", "context59")}


def load(root: Path) -> Checkout:
    """The checkout with its own `clip`, `pamr` and `prompts` packages."""
    return Checkout(root, "clip_segmentor.py", ("clip", "pamr", "prompts"), framework_stubs())


def segmentor(
    checkout: Checkout, method: str, benchmark: str, checkpoint: Path, queries: torch.Tensor | None
) -> Authors:
    """Their config for `benchmark`, the weights at `checkpoint`, on the CPU.

    `clip.load(path, device=cpu)` builds the model in float16 and casts it to float32 on the CPU
    (`clip/clip.py:140-142`); everything after runs in the input's float32. Nothing is patched.
    """
    kwargs, short_side = read_config(checkout.root, benchmark)
    kwargs.update(clip_path=str(checkpoint), device=torch.device("cpu"))
    return construct(checkout, "CLIPForSegmentation", kwargs, short_side, queries)
