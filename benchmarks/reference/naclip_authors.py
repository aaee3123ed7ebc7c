"""NACLIP (github:sinahmr/NACLIP): `NACLIP` from `naclip.py` with its configs, PAMR as `eval.py --pamr` sets it."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from benchmarks.reference.common import (
    Authors,
    Checkout,
    Outcome,
    construct,
    framework_stubs,
    mmcv_inputs,
    read_config,
)
from naclip import Segmenter

CHECKOUT = "naclip"
METHODS = ("naclip", "naclip-nopamr")
BENCHMARKS = {"naclip": ("voc21", "context60", "cityscapes"), "naclip-nopamr": ("voc21", "context59")}
FAST_BENCHMARKS = {"naclip": ("voc21",), "naclip-nopamr": ("context59",)}
ATTENTIONS = ("vanilla", "kk", "csa", "nonly", "naclip")


def load(root: Path) -> Checkout:
    """The checkout with its own `clip`, `pamr` and `prompts` packages."""
    return Checkout(root, "naclip.py", ("clip", "pamr", "prompts"), framework_stubs())


def segmentor(
    checkout: Checkout, method: str, benchmark: str, checkpoint: Path, queries: torch.Tensor | None
) -> Authors:
    """Their config for `benchmark`, `--pamr on` (10 steps) or `off` (0), the weights at `checkpoint`, on the CPU.

    As for SCLIP, `clip.load(path, device=cpu)` gives a float32 model; nothing is patched.
    """
    kwargs, short_side = read_config(checkout.root, benchmark)
    kwargs.update(
        clip_path=str(checkpoint), device=torch.device("cpu"), pamr_steps=0 if method.endswith("nopamr") else 10
    )
    return construct(checkout, "NACLIP", kwargs, short_side, queries)


def variant_rows(checkout: Checkout, checkpoint: Path, images: Sequence[Path], scratch: Path) -> list[dict]:
    """Every attention x arch combination the authors allow, whole image and 224/112 windows, PAMR
    on and off, VOC21 classes, prob_thd 0.1: both sides get the same prepared input (the model alone)."""
    rows = []
    photos = [path for path in images if path.suffix != ".png"]
    for crop in (0, 224):
        ours = Segmenter.for_benchmark(
            "voc21",
            method="naclip",
            model="ViT-B-16",
            pretrained=str(checkpoint),
            device="cpu",
            dtype="float32",
            cache_dir=str(scratch / "cache"),
            slide_crop=crop,
        )
        theirs = segmentor(checkout, "naclip", "voc21", checkpoint, ours._query_features()[0])  # noqa: SLF001
        theirs.model.slide_crop = crop
        for attention, arch, pamr_steps in itertools.product(ATTENTIONS, ("vanilla", "reduced"), (0, 10)):
            if attention == "csa" and arch == "reduced":  # refused by their set_params
                continue
            theirs.model.net.visual.set_params(arch, attention, 5.0)
            theirs.model.pamr = checkout.module.PAMR(pamr_steps, dilations=(8, 16)) if pamr_steps else None
            variant = {"attention": attention, "arch": arch, "pamr_steps": pamr_steps}
            for path in photos:
                inputs, ori_shape = mmcv_inputs(path, theirs.short_side)
                result = ours.predict_variants(inputs[0], ori_shape, [variant])[0]
                outcome = Outcome(
                    "naclip-variants",
                    f"{attention}/{arch}/crop {crop}/pamr {pamr_steps}",
                    path.name,
                    theirs.predict_inputs(inputs, ori_shape, path),
                    (result.labels, result.probs),
                )
                rows.append(outcome.row())
                print(pd.DataFrame(rows[-1:]).to_string(index=False), flush=True)
    return rows
