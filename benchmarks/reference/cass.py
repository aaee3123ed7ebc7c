"""CASS (github:MICV-yonsei/CASS): `CASS_segmentor` from `cass_segmentor.py` with its configs, its `clip` and its
vendored DINO (`dino/dino_attention.py`, `dino/vision_transformer.py`).

The same random DINO ViT-B/8 on both sides: the shared state dict of `benchmarks/reference/proxyclip.py`
(`dino_checkpoint`: timm's `vit_base_patch8_224.dino`, seed 0); naclip loads that file (`--vfm-pretrained
dino_vitb8=FILE`) and the authors' `torch.hub.load_state_dict_from_url` (`dino_attention.py:58`) returns it, loaded
strictly into their `vit_base(patch_size=8, num_classes=0)`. Their DINO runs in float32 and `.half()`s its keys
as written (also on the CPU), on both sides.

Patched at run time: `torch.Tensor.to('cuda')` goes to the CPU while their model is built (the tokens of their
text encoding, `cass_segmentor.py:90`); `dinov2.dino_attention` (another second model, imported at
`cass_segmentor.py:19`) is stubbed. `torch.svd_lowrank` draws from the global generator, which their run seeds
once (`configs/base_config.py:15,35`): here it is seeded with 42 before each window (`forward_feature`), as
naclip's `cass_seed` seeds its own draws, so both draw alike. With `--fast`, after their queries are replaced,
`cls_query_features` follows and `cluster_info` is recomputed from them.

The head matching is a tie: the spectral distances are nearly additive (W[i, j] ~ a_i + b_j), so hundreds of
assignments share the optimal total to 1e-16 and `linear_sum_assignment` picks one by rounding noise (keys
1e-6 apart pick other pairs). naclip's solver is therefore given the assignment the authors' solver returned
for the same window (recorded in call order, one per window on both sides); `NACLIP_CASS_OWN_MATCHING=1` lets
naclip solve its own (the control).

    python -m benchmarks.reference_check --cass /path/to/CASS --fast --images IMAGE ...
    python -m benchmarks.reference.cass --repeats 3          # seconds per image, naclip-nopamr and cass
"""

from __future__ import annotations

import contextlib
import os
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

import naclip.methods.cass as ours
from benchmarks.reference.common import (
    CONFIG_FILES,
    Authors,
    Checkout,
    construct,
    framework_stubs,
    patched,
    read_config,
)
from benchmarks.reference.proxyclip import dino_checkpoint

CHECKOUT = "cass"
METHODS = ("cass",)
# Whole image with the background threshold (VOC21), windows without background (Context59), 560 px with
# eigen scaling off and the window's own [CLS] (Cityscapes).
BENCHMARKS = {"cass": ("voc21", "context59", "cityscapes")}
FAST_BENCHMARKS = BENCHMARKS
SEED = 42  # configs/base_config.py:15,35; naclip's cass_seed
_MATCHED: list[tuple[np.ndarray, np.ndarray]] = []  # the authors' assignments, in call order, for naclip's solver


def load(root: Path) -> Checkout:
    """The checkout with its own `clip`, `pamr`, `prompts`, `dino` and DINO's top-level `vision_transformer` and
    `utils` (`dino_attention.py:11-12`); `dinov2.dino_attention` stubbed."""
    stubs = framework_stubs()
    stubs["dinov2"] = types.ModuleType("dinov2")
    stubs["dinov2.dino_attention"] = types.ModuleType("dinov2.dino_attention")
    stubs["dinov2.dino_attention"].Dinov2SelfAttention = None
    packages = ("clip", "pamr", "prompts", "dino", "vision_transformer", "utils")
    checkout = Checkout(root, "cass_segmentor.py", packages, stubs)
    if os.environ.get("NACLIP_CASS_OWN_MATCHING") != "1":
        model_module = checkout.modules["clip.model"]
        model_module.linear_sum_assignment = _recorded(model_module.linear_sum_assignment)
        ours.linear_sum_assignment = _replayed
    return checkout


def _recorded(solve: Callable) -> Callable:
    """The authors' solver, its answers kept for naclip's."""

    def solve_and_record(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        answer = solve(cost)
        _MATCHED.append(answer)
        return answer

    return solve_and_record


def _replayed(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The authors' answer for the same window (the oldest not yet used)."""
    if not _MATCHED:
        raise RuntimeError("naclip's CASS solved more matchings than the authors' code; the windows differ")
    return _MATCHED.pop(0)


def naclip_overrides(scratch: Path) -> dict[str, Any]:
    """naclip's side loads the shared random DINO file."""
    return {"vfm_pretrained": (f"dino_vitb8={dino_checkpoint(scratch)}",)}


def segmentor(
    checkout: Checkout, method: str, benchmark: str, checkpoint: Path, queries: torch.Tensor | None
) -> Authors:
    """Their config for `benchmark` (`dataset` the config's path, as `eval.py:45` passes it; PAMR off as
    `eval_all.sh:7`), CLIP's weights at `checkpoint` (`clip.load(path, device=cpu)`: float32) and the shared DINO
    file, on the CPU; the SVD's generator seeded with 42 before each window."""
    kwargs, short_side = read_config(checkout.root, benchmark)
    kwargs.update(
        clip_path=str(checkpoint),
        device=torch.device("cpu"),
        pamr_steps=0,
        dataset=f"./configs/{CONFIG_FILES[benchmark]}",
    )
    dino = dino_checkpoint(checkpoint.parent)

    def state_dict(url: str, *args: Any, **options: Any) -> dict[str, torch.Tensor]:
        assert url.endswith("dino_vitbase8_pretrain.pth"), url
        return torch.load(dino, map_location="cpu", weights_only=True)

    patches = [patched(torch.hub, "load_state_dict_from_url", state_dict), patched(torch.Tensor, "to", _cuda_is_cpu)]
    segmentor_class = checkout.module.CASS_segmentor
    authors = construct(checkout, "CASS_segmentor", kwargs, short_side, queries, patches, _seeded(segmentor_class))
    if queries is not None:  # their [CLS] scores and clusters follow the replaced queries
        model = authors.model
        model.cls_query_features = model.query_features
        with checkout.active():
            model.cluster_info = model.hierarchical_clustering(model.query_features)
    return authors


_TO = torch.Tensor.to


def _cuda_is_cpu(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """`Tensor.to` with the device 'cuda' (a string, as `cass_segmentor.py:90` writes it) read as 'cpu'."""
    args = tuple("cpu" if isinstance(arg, str) and arg.startswith("cuda") else arg for arg in args)
    return _TO(tensor, *args, **kwargs)


def _seeded(segmentor_class: type) -> Callable[[], contextlib.AbstractContextManager]:
    """A context in which each call of their `forward_feature` (one window) first seeds the global generator with
    42; the generator's state is restored after."""
    forward = segmentor_class.forward_feature

    def seeded_forward(self: Any, img: torch.Tensor, whole_img: torch.Tensor | None) -> torch.Tensor:
        torch.manual_seed(SEED)
        return forward(self, img, whole_img)

    @contextlib.contextmanager
    def context() -> Iterator[None]:
        with torch.random.fork_rng(devices=[]), patched(segmentor_class, "forward_feature", seeded_forward):
            yield

    return context


if __name__ == "__main__":
    from benchmarks.reference import cost

    cost.main(("naclip-nopamr", "cass"))
