"""SC-CLIP (github:SuleBai/SC-CLIP): `SCCLIPForSegmentation` from `scclip_segmentor.py` with its configs."""

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

CHECKOUT = "scclip"  # the command-line flag naming the checkout
METHODS = ("scclip",)
# With background and both thresholds (VOC21), background and prob_thd 0.15 (Context60), without (Context59),
# 560 px (Cityscapes). Not COCO-Object by default: their synonym max multiplies the scores by a one-hot
# (classes x queries x H x W, `scclip_segmentor.py:163-165`), 31 GB on the 2048 x 420 image.
BENCHMARKS = {"scclip": ("voc21", "context60", "context59", "cityscapes")}
FAST_BENCHMARKS = {"scclip": ("voc21", "context59", "cityscapes")}


def load(root: Path) -> Checkout:
    """The checkout with its own `clip`, `pamr` and `prompts` packages."""
    return Checkout(root, "scclip_segmentor.py", ("clip", "pamr", "prompts"), framework_stubs())


def segmentor(
    checkout: Checkout, method: str, benchmark: str, checkpoint: Path, queries: torch.Tensor | None
) -> Authors:
    """Their config for `benchmark` (layer indices and res_cls from `configs/base_config.py`), the weights
    at `checkpoint`, on the CPU.

    As for SCLIP, `clip.load(path, device=cpu)` gives a float32 model (`clip/clip.py:139-142`), and
    everything after runs in float32; their forward assumes one window per call, which their
    `forward_slide` gives. Nothing is patched.
    """
    kwargs, short_side = read_config(checkout.root, benchmark)
    kwargs.update(clip_path=str(checkpoint), device=torch.device("cpu"))
    return construct(checkout, "SCCLIPForSegmentation", kwargs, short_side, queries)


def weights(checkpoint: Path, scratch: Path) -> Path:
    """The shared random weights with the direction that SC-CLIP's own patch features share also
    projected out of `visual.proj` (`common.head_direction_weights`).

    The shared weights remove the direction of the vanilla image tokens; SC-CLIP's features add
    0.3 x [CLS] to every patch and the sum of seven blocks, whose common direction then wins every
    pixel on random weights (one class per image).
    """
    return head_direction_weights(checkpoint, scratch, "scclip")


if __name__ == "__main__":
    from benchmarks.reference import cost

    cost.main(("naclip-nopamr", "scclip"))
