"""ProxyCLIP (github:mc-lan/ProxyCLIP): `ProxyCLIPSegmentation` from `proxyclip_segmentor.py` with its configs,
its vendored open_clip and DINO ViT-B/8 from DINO's own `vision_transformer.py`.

The same random second model on both sides: one timm `vit_base_patch8_224.dino` built with seed 0 is saved as
a state dict (`dino_checkpoint`); naclip loads that file (`--vfm-pretrained dino_vitb8=FILE`), and the authors'
`torch.hub.load('facebookresearch/dino:main', 'dino_vitb8')` returns DINO's `vit_base(patch_size=8,
num_classes=0)` with the same file loaded strictly (DINO's keys are timm's, one for one). DINO's file is the
one CASS vendors (`dino/vision_transformer.py`, found beside the ProxyCLIP checkout as `CASS/`, or at
$NACLIP_DINO_VIT); its `utils.trunc_normal_` (initialisation, overwritten by the load) is torch's.

    python -m benchmarks.reference_check --proxyclip /path/to/ProxyCLIP --fast [--speed]
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from benchmarks.reference.common import Authors, Checkout, construct, framework_stubs, patched, read_config
from naclip.vfm import vfm

CHECKOUT = "proxyclip"
METHODS = ("proxyclip",)
BENCHMARKS = {"proxyclip": ("voc21", "context59", "cityscapes")}
FAST_BENCHMARKS = {"proxyclip": ("voc21", "context59", "cityscapes")}
DINO_FILE = "dino-vitb8-random.pt"


def load(root: Path) -> Checkout:
    """The checkout with its own `open_clip`, `segment_anything`, `prompts` and `myutils`; `mae` (another second
    model) and `openpyxl` (myutils' result spreadsheet) stubbed; `utils` for DINO's file."""
    stubs = framework_stubs()
    stubs["mae"] = types.ModuleType("mae")
    stubs["mae.models_vit"] = types.ModuleType("mae.models_vit")
    stubs["mae.pos_embed"] = types.ModuleType("mae.pos_embed")
    stubs["mae.pos_embed"].interpolate_pos_embed = None
    stubs["mae"].models_vit, stubs["mae"].pos_embed = stubs["mae.models_vit"], stubs["mae.pos_embed"]
    stubs["openpyxl"] = types.ModuleType("openpyxl")
    stubs["utils"] = types.ModuleType("utils")
    stubs["utils"].trunc_normal_ = torch.nn.init.trunc_normal_
    checkout = Checkout(root, "proxyclip_segmentor.py", ("open_clip", "segment_anything", "prompts", "myutils"), stubs)
    checkout.dino = _dino_module(checkout, _dino_file(root))
    return checkout


def _dino_file(root: Path) -> Path:
    path = Path(os.environ.get("NACLIP_DINO_VIT", root.parent / "CASS" / "dino" / "vision_transformer.py"))
    if not path.is_file():
        raise SystemExit(f"{path}: DINO's vision_transformer.py not found; set NACLIP_DINO_VIT to its path")
    return path


def _dino_module(checkout: Checkout, path: Path) -> types.ModuleType:
    with checkout.active():
        spec = importlib.util.spec_from_file_location("reference_dino_vision_transformer", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


def dino_checkpoint(directory: Path) -> Path:
    """The shared random DINO ViT-B/8 state dict (timm's initialisation, seed 0) in `directory`, made once.

    Its position embeddings are drawn with std 1 (timm's: 0.02): with timm's, the patches of a flat window are
    all alike (mean cosine 0.96 on a VOC sky), every proxy-attention score is negative and both sides give NaN;
    position then sets patches apart, as in a trained DINO.
    """
    path = directory / DINO_FILE
    if not path.is_file():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            module = vfm("dino_vitb8").build()
            with torch.no_grad():
                module.pos_embed.normal_()
        torch.save(module.state_dict(), path)
    return path


def naclip_overrides(scratch: Path) -> dict[str, Any]:
    """naclip's side loads the shared random DINO file."""
    return {"vfm_pretrained": (f"dino_vitb8={dino_checkpoint(scratch)}",)}


def segmentor(
    checkout: Checkout, method: str, benchmark: str, checkpoint: Path, queries: torch.Tensor | None
) -> Authors:
    """Their config for `benchmark` (`vfm_model='dino'`), CLIP's weights at `checkpoint` and the shared DINO file,
    float32 on the CPU.

    `create_model('ViT-B/16', pretrained='openai', precision='fp16')` runs with the download answered by
    `checkpoint` and `precision` 'fp32'; `torch.hub.load` returns DINO's `vit_base(patch_size=8)` with the shared
    weights; `nn.Module.half` (their `self.vfm.half()`) and, while predicting, `Tensor.half` are the identity.
    """
    kwargs, short_side = read_config(checkout.root, benchmark)
    kwargs.update(device=torch.device("cpu"))
    assert kwargs["vfm_model"] == "dino", kwargs
    patches = open_clip_and_dino(checkout, checkpoint, dino_checkpoint(checkpoint.parent), 8)
    return construct(checkout, "ProxyCLIPSegmentation", kwargs, short_side, queries, patches, _half_is_identity)


def open_clip_and_dino(
    checkout: Checkout, checkpoint: Path, dino: Path, patch: int
) -> list[contextlib.AbstractContextManager]:
    """What a checkout with the vendored open_clip and a hub DINO (ProxyCLIP, Trident) is run under: CLIP's
    download answered with `checkpoint`, `create_model` in fp32, `torch.hub.load` of DINO ViT-B/`patch` answered
    by DINO's own `vit_base` with the state dict at `dino`, `nn.Module.half` the identity."""
    create_model = checkout.module.create_model

    def float32_model(*args: Any, **options: Any) -> torch.nn.Module:
        return create_model(*args, **{**options, "precision": "fp32"})

    def hub_load(repo: str, name: str, *args: Any, **options: Any) -> torch.nn.Module:
        assert (repo, name) == ("facebookresearch/dino:main", f"dino_vitb{patch}"), (repo, name)
        module = checkout.dino.vit_base(patch_size=patch, num_classes=0)
        module.load_state_dict(torch.load(dino, map_location="cpu", weights_only=True))
        return module

    def answer(url: str, *args: Any, **kwargs: Any) -> str:
        return str(checkpoint)

    return [
        patched(checkout.modules["open_clip.openai"], "download_pretrained_from_url", answer),
        patched(checkout.module, "create_model", float32_model),
        patched(torch.hub, "load", hub_load),
        patched(torch.nn.Module, "half", lambda self: self),
    ]


@contextlib.contextmanager
def _half_is_identity() -> Iterator[None]:
    with patched(torch.Tensor, "half", lambda self, *args, **kwargs: self):
        yield
