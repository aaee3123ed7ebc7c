"""ClearCLIP (github:mc-lan/ClearCLIP): `ClearCLIPSegmentation` from `clearclip_segmentor.py` with its
configs and its vendored open_clip."""

from __future__ import annotations

import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.reference.common import Authors, Checkout, construct, framework_stubs, patched, read_config

CHECKOUT = "clearclip"
METHODS = ("clearclip",)
BENCHMARKS = {"clearclip": ("voc21", "coco_object", "context59", "cityscapes")}
FAST_BENCHMARKS = {"clearclip": ("voc21", "cityscapes")}


def load(root: Path) -> Checkout:
    """The checkout with its own `open_clip` and `prompts`; BLIP and GEM (other backbones) stubbed."""
    stubs = framework_stubs()
    stubs["BLIP"] = types.ModuleType("BLIP")
    stubs["BLIP.models"] = types.ModuleType("BLIP.models")
    stubs["BLIP.models.blip_retrieval"] = types.ModuleType("BLIP.models.blip_retrieval")
    stubs["BLIP.models.blip_retrieval"].blip_retrieval = None
    stubs["gem"] = types.ModuleType("gem")
    return Checkout(root, "clearclip_segmentor.py", ("open_clip", "prompts"), stubs)


def segmentor(
    checkout: Checkout, method: str, benchmark: str, checkpoint: Path, queries: torch.Tensor | None
) -> Authors:
    """Their config for `benchmark` with `model_type='ClearCLIP'`, the weights at `checkpoint`, float32 on the CPU.

    `create_model('ViT-B/16', pretrained='openai')` runs as written, with the download answered by
    `checkpoint` (their `load_openai_model` then builds the QuickGELU model from an OpenAI state
    dict) and `precision` float32 instead of float16; `predict`'s `inputs.half()` is the identity.
    """
    kwargs, short_side = read_config(checkout.root, benchmark)
    kwargs.update(device=torch.device("cpu"), model_type="ClearCLIP")
    create_model = checkout.module.create_model

    def float32_model(*args: Any, **options: Any) -> torch.nn.Module:
        return create_model(*args, **{**options, "precision": "fp32"})

    download = patched(checkout.modules["open_clip.openai"], "download_pretrained_from_url", _answer(checkpoint))
    precision = patched(checkout.module, "create_model", float32_model)
    return construct(
        checkout, "ClearCLIPSegmentation", kwargs, short_side, queries, [download, precision], _half_is_identity
    )


def _answer(checkpoint: Path) -> Callable[..., str]:
    return lambda url, *args, **kwargs: str(checkpoint)


def _half_is_identity() -> Any:
    return patched(torch.Tensor, "half", lambda self, *args, **kwargs: self)
