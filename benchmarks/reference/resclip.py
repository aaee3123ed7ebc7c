"""ResCLIP (github:yvhangyang/ResCLIP): `ResCLIPSegmentation` from `resclip_segmentor.py` with its configs,
as the README's `test_all.sh wo_resi resclip 5` runs it."""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from benchmarks.reference.common import CLASSES, Authors, Checkout, construct, framework_stubs, patched, read_config
from naclip import Segmenter

METHODS = ("resclip",)
# Windows without background (Context59, ADE20K), with background (Context60), 560 px (Cityscapes). VOC21 and
# VOC20 run on the whole image, where their `check_path` holds (h w)^2 x max(h, w) path points: tens of GB on
# the 2048 x 420 test image. Check them on photos: --benchmarks voc21 --images <photos>.
BENCHMARKS = {"resclip": ("context59", "context60", "ade20k", "cityscapes")}
FAST_BENCHMARKS = {"resclip": ("context59", "ade20k", "cityscapes")}


def load(root: Path) -> Checkout:
    """The checkout with its own `clip`, `pamr` and `prompts` packages."""
    return Checkout(root, "resclip_segmentor.py", ("clip", "pamr", "prompts"), framework_stubs())


def segmentor(
    checkout: Checkout, method: str, benchmark: str, checkpoint: Path, queries: torch.Tensor | None
) -> Authors:
    """Their config for `benchmark` with `test_all.sh`'s arch 'wo_resi', attention 'resclip' and Gaussian
    std 5, the weights at `checkpoint`, on the CPU.

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
        arch="wo_resi",
        attn_strategy="resclip",
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


def cost(repeats: int) -> None:
    """Seconds per 336 x 448 image with 21 classes, random ViT-B-16 weights on this device's CPU:
    resclip against naclip-nopamr, with 224/112 windows and on the whole image (medians, runs interleaved)."""
    names = [line.split(",")[0] for line in (CLASSES / "voc21.txt").read_text().splitlines() if line]
    image, size = torch.randn(3, 336, 448), (336, 448)
    for crop in (224, 0):
        segmenters = {}
        for method in ("naclip-nopamr", "resclip"):
            segmenters[method] = Segmenter(
                method=method, model="ViT-B-16", pretrained=None, device="cpu", slide_crop=crop
            )
            segmenters[method].set_classes(names)
            segmenters[method].predict_prepared(image, size)  # text embeddings and compiled kernels
        seconds: dict[str, list[float]] = {method: [] for method in segmenters}
        for _ in range(repeats):
            for method, segmenter in segmenters.items():
                start = time.perf_counter()
                segmenter.predict_prepared(image, size)
                seconds[method].append(time.perf_counter() - start)
        base, ours = (statistics.median(seconds[m]) for m in segmenters)
        protocol = "windows 224/112" if crop else "whole image"
        print(
            f"336 x 448, {len(names)} classes, {protocol}, {torch.get_num_threads()} threads: "
            f"naclip-nopamr {base:.2f} s, resclip {ours:.2f} s ({ours / base:.2f}x)",
            flush=True,
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="ResCLIP's cost per image against naclip-nopamr (CPU)")
    parser.add_argument("--repeats", type=int, default=5)
    cost(parser.parse_args().repeats)
