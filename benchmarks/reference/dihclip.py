"""DIH-CLIP (github:duan-song/DiH-CLIP): `CLIPForSegmentation` from `clip_segmentor.py` with its configs,
made to run as SC-CLIP's segmentor runs (the committed code cannot)."""

from __future__ import annotations

import importlib.machinery
import types
from pathlib import Path

import torch
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from benchmarks.reference.common import (
    Authors,
    Checkout,
    construct,
    framework_stubs,
    head_direction_weights,
    read_config,
)

CHECKOUT = "dihclip"  # the command-line flag naming the checkout
METHODS = ("dihclip",)
# With background and both thresholds (VOC21), background and prob_thd 0.15 (Context60), without (Context59),
# 560 px (Cityscapes).
BENCHMARKS = {"dihclip": ("voc21", "context60", "context59", "cityscapes")}
FAST_BENCHMARKS = {"dihclip": ("voc21", "context59", "cityscapes")}


def _module(name: str, **attributes: object) -> types.ModuleType:
    """A stand-in module with a spec (torch's dynamo looks modules up with importlib.util.find_spec)."""
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    module.__dict__.update(attributes)
    return module


def stubs() -> dict[str, types.ModuleType]:
    """The framework stand-ins, plus what the checkout imports and lacks or does not use.

    `prompts.imagenet_template` (imported at `clip_segmentor.py:7`, not committed): the 80 OpenAI templates,
    the same strings as SCLIP's and SC-CLIP's `prompts/imagenet_template.py`. `sklearn.neighbors` (imported at
    `clip/model.py:11`, `LocalOutlierFactor` never used).
    """
    templates = list(OPENAI_IMAGENET_TEMPLATES)
    return {
        **framework_stubs(),
        "prompts": _module("prompts"),
        "prompts.imagenet_template": _module("prompts.imagenet_template", openai_imagenet_template=templates),
        "sklearn": _module("sklearn"),
        "sklearn.neighbors": _module("sklearn.neighbors", LocalOutlierFactor=None),
    }


def load(root: Path) -> Checkout:
    """The checkout with its own `clip` and `pamr` packages and the stand-ins of `stubs`."""
    return Checkout(root, "clip_segmentor.py", ("clip", "pamr"), stubs())


def segmentor(
    checkout: Checkout, method: str, benchmark: str, checkpoint: Path, queries: torch.Tensor | None
) -> Authors:
    """Their config for `benchmark` (layer indices and res_cls from `configs/base_config.py`), the weights at
    `checkpoint`, on the CPU (`clip.load` gives float32 there).

    Their `forward_feature` unpacks `encode_image`'s one tensor as two (`clip_segmentor.py:70`), which raises on
    the first window: the model's `encode_image` is wrapped to return `(features, None)`, which gives SC-CLIP's
    line there (`image_features = self.net.encode_image(img, return_all=True)`).
    """
    kwargs, short_side = read_config(checkout.root, benchmark)
    kwargs.update(clip_path=str(checkpoint), device=torch.device("cpu"))
    authors = construct(checkout, "CLIPForSegmentation", kwargs, short_side, queries)
    encode = authors.model.net.encode_image
    authors.model.net.encode_image = lambda *args, **kwargs: (encode(*args, **kwargs), None)
    return authors


def weights(checkpoint: Path, scratch: Path) -> Path:
    """The shared random weights with the direction that DIH-CLIP's own patch features share also projected out
    of `visual.proj` (`common.head_direction_weights`), as for SC-CLIP."""
    return head_direction_weights(checkpoint, scratch, "dihclip")


if __name__ == "__main__":
    from benchmarks.reference import cost

    cost.main(("naclip-nopamr", "scclip", "dihclip"))
