"""SFP (github:Kimsure/SFP, folder SFP_ICCV): `SFPForSegmentation` from `SFP_segmentor.py` with its configs."""

from __future__ import annotations

from pathlib import Path

import torch

from benchmarks.reference.common import (
    Authors,
    Checkout,
    construct,
    framework_stubs,
    head_direction_weights,
    read_config,
)

CHECKOUT = "sfp"  # the command-line flag naming the checkout (the repository's SFP_ICCV folder)
METHODS = ("sfp",)
# With background and both thresholds and their own class file (VOC21), background and prob_thd 0.15
# (Context60), without background (Context59), 560 px and their own class file (Cityscapes), 384 px (ADE20K).
BENCHMARKS = {"sfp": ("voc21", "context60", "context59", "cityscapes", "ade20k")}
FAST_BENCHMARKS = {"sfp": ("voc21", "context59", "ade20k")}


def load(root: Path) -> Checkout:
    """The checkout (SFP_ICCV/) with its own `clip`, `pamr` and `prompts` packages."""
    return Checkout(root, "SFP_segmentor.py", ("clip", "pamr", "prompts"), framework_stubs())


def segmentor(
    checkout: Checkout, method: str, benchmark: str, checkpoint: Path, queries: torch.Tensor | None
) -> Authors:
    """Their config for `benchmark` (`pm='SOM'`, `purify=True`, res_cls 0.3 from `configs/base_config.py`),
    the weights at `checkpoint`, on the CPU.

    As for SCLIP, `clip.load(path, device=cpu)` gives a float32 model (`clip/clip.py`), and everything after
    runs in float32; their forward assumes one window per call, which their `forward_slide` gives. Nothing
    is patched.
    """
    kwargs, short_side = read_config(checkout.root, benchmark)
    kwargs.update(clip_path=str(checkpoint), device=torch.device("cpu"))
    return construct(checkout, "SFPForSegmentation", kwargs, short_side, queries)


def weights(checkpoint: Path, scratch: Path) -> Path:
    """The shared random weights with the direction that SFP's own patch features share also projected out of
    `visual.proj` (`common.head_direction_weights`): its features add 0.3 x [CLS] and a sum of seven blocks to
    every patch, as SC-CLIP's. Taken with the guarded repair, so that the direction is finite whatever the
    outliers on that window."""
    return head_direction_weights(checkpoint, scratch, "sfp", sfp_fix_repair=True)


if __name__ == "__main__":
    from benchmarks.reference import cost

    cost.main(("naclip-nopamr", "scclip", "sfp"))
