"""Trident (github:YuHengsss/Trident): `Trident` from `trident.py` with its configs, its vendored open_clip and
segment_anything (whose image encoder keeps the last block's attention), DINO ViT-B/16 from DINO's own
`vision_transformer.py`, and SAM ViT-B.

The same random second models on both sides: a timm `vit_base_patch16_224.dino` and a `segment_anything` SAM
ViT-B built with seed 0 are saved as state dicts; naclip loads those files (`--vfm-pretrained dino_vitb16=FILE
sam_vitb=FILE`), the authors' `torch.hub.load('facebookresearch/dino:main', 'dino_vitb16')` returns DINO's
`vit_base(patch_size=16, num_classes=0)` with the DINO file loaded strictly, and their `sam_ckpt` is the SAM
file. DINO's file is found as for ProxyCLIP (`CASS/dino/vision_transformer.py` beside the checkout, or
$NACLIP_DINO_VIT). `sam_refinement=True`, as their `dist_test.sh` passes `--sam_refine` (`eval.py:63`).
Stubbed: `openpyxl` (myutils' result spreadsheet). `nn.Module.half` is the identity and, while predicting,
`Tensor.half` too on floating tensors (float32 on integer ones: their refinement interpolates the label map as
half, exact for labels); `create_model`'s precision is 'fp32'.

    python -m benchmarks.reference_check --trident /path/to/Trident --fast
"""

from __future__ import annotations

import contextlib
import types
from pathlib import Path
from typing import Any

import torch

from benchmarks.reference.common import Authors, Checkout, construct, framework_stubs, patched, read_config
from benchmarks.reference.proxyclip import _dino_file, _dino_module, open_clip_and_dino
from naclip.vfm import vfm

CHECKOUT = "trident"
METHODS = ("trident",)
# Cityscapes (S 688, SAM on each half and on the whole image) costs three SAM passes per side: on two shared CPU
# cores about ten minutes an image; VOC21 (background threshold, 16-rounding) and Context59 run by default.
BENCHMARKS = {"trident": ("voc21", "context59", "cityscapes")}
FAST_BENCHMARKS = {"trident": ("voc21", "context59")}
FILES = {"dino_vitb16": "dino-vitb16-random.pt", "sam_vitb": "sam-vitb-random.pt"}


def load(root: Path) -> Checkout:
    """The checkout with its own `open_clip`, `segment_anything`, `seg_utils`, `prompts`, `pamr` and `myutils`;
    `openpyxl` stubbed; `utils` for DINO's file."""
    stubs = framework_stubs()
    stubs["openpyxl"] = types.ModuleType("openpyxl")
    stubs["utils"] = types.ModuleType("utils")
    stubs["utils"].trunc_normal_ = torch.nn.init.trunc_normal_
    packages = ("open_clip", "segment_anything", "seg_utils", "prompts", "pamr", "myutils")
    checkout = Checkout(root, "trident.py", packages, stubs)
    checkout.dino = _dino_module(checkout, _dino_file(root))
    return checkout


def random_weights(directory: Path, name: str) -> Path:
    """The shared random state dict of second model `name` (its own initialisation, seed 0), made once."""
    path = directory / FILES[name]
    if not path.is_file():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            module = vfm(name).build()
        torch.save(module.state_dict(), path)
    return path


def naclip_overrides(scratch: Path) -> dict[str, Any]:
    """naclip's side loads the shared random DINO and SAM files."""
    return {"vfm_pretrained": tuple(f"{name}={random_weights(scratch, name)}" for name in FILES)}


def segmentor(
    checkout: Checkout, method: str, benchmark: str, checkpoint: Path, queries: torch.Tensor | None
) -> Authors:
    """Their config for `benchmark` with `sam_refinement=True`, CLIP's weights at `checkpoint` and the shared DINO
    and SAM files, float32 on the CPU (see the module)."""
    kwargs, short_side = read_config(checkout.root, benchmark)
    dino, sam = (random_weights(checkpoint.parent, name) for name in FILES)
    kwargs.update(device=torch.device("cpu"), sam_refinement=True, sam_ckpt=str(sam))
    patches = open_clip_and_dino(checkout, checkpoint, dino, 16)
    return construct(checkout, "Trident", kwargs, short_side, queries, patches, _half_is_float32)


def _half_is_float32() -> contextlib.AbstractContextManager:
    def half(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self if self.is_floating_point() else self.float()

    return patched(torch.Tensor, "half", half)
