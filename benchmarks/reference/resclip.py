"""ResCLIP (github:yvhangyang/ResCLIP): `ResCLIPSegmentation` from `resclip_segmentor.py` with its configs,
as the README's `test_all.sh wo_resi resclip 5` runs it, and as a plug-in on SCLIP (`w_resi sclip`) and
ClearCLIP (`wo_resi clearclip`)."""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from benchmarks.reference.common import Authors, Checkout, construct, framework_stubs, patched, read_config

# Their (arch, attn_strategy) for each preset (`test_all.sh ARCH ATTN STD`; `clip/model.py:97-104`).
STRATEGIES = {
    "resclip": ("wo_resi", "resclip"),
    "sclip+resclip": ("w_resi", "sclip"),
    "clearclip+resclip": ("wo_resi", "clearclip"),
}
METHODS = tuple(STRATEGIES)
# Windows without background (Context59, ADE20K), with background (Context60), 560 px (Cityscapes). VOC21 and
# VOC20 run on the whole image, where their `check_path` holds (h w)^2 x max(h, w) path points: tens of GB on
# the 2048 x 420 test image. Check them on photos: --benchmarks voc21 --images <photos>.
BENCHMARKS = {method: ("context59", "context60", "ade20k", "cityscapes") for method in METHODS}
FAST_BENCHMARKS = {"resclip": ("context59", "ade20k", "cityscapes")} | {
    method: ("context59", "context60", "cityscapes") for method in METHODS if method != "resclip"
}


def load(root: Path) -> Checkout:
    """The checkout with its own `clip`, `pamr` and `prompts` packages."""
    return Checkout(root, "resclip_segmentor.py", ("clip", "pamr", "prompts"), framework_stubs())


def segmentor(
    checkout: Checkout, method: str, benchmark: str, checkpoint: Path, queries: torch.Tensor | None
) -> Authors:
    """Their config for `benchmark` with `test_all.sh`'s arch and attention for `method` (`STRATEGIES`) and
    Gaussian std 5, the weights at `checkpoint`, on the CPU.

    `clip.load(path, device=cpu)` gives a float32 model (`clip/clip.py:134-137`). Their SFR moves
    tensors to CUDA (`.cuda()` in `create_patch_matrix` and `generate_attention_sfr`, `clip/model.py:107,161`;
    `PAMR(...).to(torch.device('cuda'))`, `:279`): while `predict` runs, `torch.Tensor.cuda` returns
    the tensor itself and their `clip.model.PAMR` stays on the CPU (its `.to` returns the module), so
    the first pass's PAMR runs. Their float16 cast of the prior (`:478`) runs as written.
    """
    kwargs, short_side = read_config(checkout.root, benchmark)
    kwargs.update(
        clip_path=str(checkpoint),
        device=torch.device("cpu"),
        arch=STRATEGIES[method][0],
        attn_strategy=STRATEGIES[method][1],
        gaussian_std=5.0,
    )
    context = _on_the_cpu(checkout.modules["clip.model"])
    return construct(checkout, "ResCLIPSegmentation", kwargs, short_side, queries, predict_context=context)


def _on_the_cpu(model_module: types.ModuleType) -> Callable[[], contextlib.AbstractContextManager]:
    """A context in which their model code's CUDA moves leave tensors and PAMR on the CPU."""

    class CpuPAMR(model_module.PAMR):
        def to(self, *args: object, **kwargs: object) -> CpuPAMR:
            return self

    @contextlib.contextmanager
    def context() -> Iterator[None]:
        with patched(torch.Tensor, "cuda", _itself), patched(model_module, "PAMR", CpuPAMR):
            yield

    return context


def _itself(tensor: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
    return tensor


if __name__ == "__main__":
    from benchmarks.reference import cost

    cost.main(("naclip-nopamr", "resclip"))
