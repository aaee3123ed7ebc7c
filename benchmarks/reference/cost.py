"""Seconds per image of method presets on this machine's CPU, on one image, runs interleaved.

    python -m benchmarks.reference.cost --repeats 5     # naclip-nopamr, naclip, resclip, scclip, pearl, sfp, dihclip
    python -m benchmarks.reference.resclip --repeats 5          # naclip-nopamr and resclip
    python -m benchmarks.reference.scclip --repeats 5           # naclip-nopamr and scclip
    python -m benchmarks.reference.pearl --repeats 5            # naclip-nopamr, pearl-notlp and pearl

A random 336 x 448 image (already prepared), VOC21's 21 class names (one prompt per name, 80 templates),
random ViT-B-16 weights, float32; each method with its own default settings, with 224/112 windows and on
the whole image. On the whole image (a 21 x 28 patch grid) SC-CLIP runs with `scclip_fix_positions=true`
(SFP with `sfp_fix_positions=true` and `sfp_fix_repair=true`):
the authors' placement of anomaly patches, (i // rows, i % rows), falls off a non-square grid (the cost is
the same). Medians over the repeats; ratios to the first method.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

import torch

from benchmarks.reference.common import CLASSES
from naclip import Segmenter

EVERY = ("naclip-nopamr", "naclip", "resclip", "scclip", "pearl", "sfp", "dihclip")
SIZE = (336, 448)
# The whole image's 21 x 28 grid is not square: the authors' placement of flagged patches falls off it. SFP also
# keeps a flagged patch none of whose neighbours is unflagged (its authors' zero fill may make the scores NaN).
WHOLE_IMAGE = {
    "scclip": {"scclip_fix_positions": True},
    "sfp": {"sfp_fix_positions": True, "sfp_fix_repair": True},
}


def cost(methods: Sequence[str], repeats: int) -> dict[str, dict[str, float]]:
    """{protocol: {method: median seconds per image}}, printing one line per protocol."""
    names = [line.split(",")[0] for line in (CLASSES / "voc21.txt").read_text().splitlines() if line]
    image = torch.randn(3, *SIZE)
    medians, text_cache = {}, None
    for crop in (224, 0):
        segmenters = {}
        for method in methods:
            extra = WHOLE_IMAGE.get(method, {}) if crop == 0 else {}
            segmenter = Segmenter(
                method=method, model="ViT-B-16", pretrained=None, device="cpu", slide_crop=crop, **extra
            )
            text_cache = text_cache or segmenter.text_cache  # the same random weights (seed 0): one text embedding
            segmenter.text_cache = text_cache
            segmenter.set_classes(names)
            segmenter.predict_prepared(image, SIZE)  # text embeddings and compiled kernels
            segmenters[method] = segmenter
        seconds: dict[str, list[float]] = {method: [] for method in segmenters}
        for _ in range(repeats):
            for method, segmenter in segmenters.items():
                start = time.perf_counter()
                segmenter.predict_prepared(image, SIZE)
                seconds[method].append(time.perf_counter() - start)
        protocol = "windows 224/112" if crop else "whole image"
        medians[protocol] = {method: statistics.median(times) for method, times in seconds.items()}
        base = medians[protocol][methods[0]]
        timed = [
            f"{method} {value:.2f} s" + (f" ({value / base:.2f}x)" if i else "")
            for i, (method, value) in enumerate(medians[protocol].items())
        ]
        print(
            f"{SIZE[0]} x {SIZE[1]}, {len(names)} classes, {protocol}, {torch.get_num_threads()} threads, "
            f"median of {repeats}: {', '.join(timed)}",
            flush=True,
        )
    return medians


def main(methods: Sequence[str] = EVERY, argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="seconds per image of method presets on the CPU (random ViT-B-16)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--methods", nargs="+", default=list(methods), help="the first is the ratios' baseline")
    args = parser.parse_args(argv)
    cost(args.methods, args.repeats)


if __name__ == "__main__":
    main()
