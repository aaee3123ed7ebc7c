"""A prediction at 847 classes (ADE20K-847's 1281 queries) on a 2048 x 512 image, with PAMR: time and peak memory.

The labels-only path (what `naclip eval` runs) scores the queries `SCORE_BYTES` of logits at a time; all at once,
one (queries, 512, 2048) float32 buffer alone would take 1281 x 512 x 2048 x 4 bytes = 5.0 GiB, and the
prediction needs several. Random ViT-B-16 weights and random unit text embeddings (the image's cost does not
depend on them; embedding 1281 x 80 prompts would take minutes), the shared protocol on ade847 (short side 448,
224/112 windows) with PAMR 10 steps, dilations (8, 16).
Run: python -m benchmarks.large_vocabulary [--repeats 2] [--device cpu] [--no-pamr]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

import naclip.segmenter as segmenter_module
from naclip import Segmenter
from naclip.benchmarks import get_benchmark
from naclip.cost import counted_gflops, peak_memory
from naclip.text import read_class_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="timed predictions after one warm-up")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-pamr", action="store_true", help="without PAMR")
    args = parser.parse_args()
    benchmark = get_benchmark("ade847")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        segmenter = Segmenter.for_benchmark(
            None, "naclip", protocol="shared", model="ViT-B-16", pretrained=None, device=args.device,
            short_side=448, pamr_steps=0 if args.no_pamr else 10,
        )  # fmt: skip
    classes = read_class_file(benchmark.class_path)
    width = segmenter.clip.text_projection.shape[-1]
    segmenter.text_cache.memory.update({q: F.normalize(torch.randn(width), dim=0) for q in classes.queries})
    segmenter.set_classes(benchmark.class_path)
    image = np.random.default_rng(0).integers(0, 256, (512, 2048, 3), dtype=np.uint8)
    segmenter.predict(image, probs=False)  # warm-up
    with peak_memory(segmenter.device) as memory:
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            segmenter.predict(image, probs=False)
            times.append(time.perf_counter() - start)
    _, gflops = counted_gflops(lambda: segmenter.predict(image, probs=False))
    queries, size = len(classes.queries), 512 * 2048
    print(
        f"{len(classes)} classes ({queries} queries), 2048 x 512, PAMR {segmenter.settings.pamr_steps} steps, "
        f"{args.device}, {torch.get_num_threads()} threads: {min(times):.1f} s per image (best of {args.repeats}), "
        f"peak memory {memory.mib / 1024:.2f} GiB ({memory.kind}), {gflops:.0f} GFLOPs; logits scored "
        f"{max(1, segmenter_module.SCORE_BYTES // (size * 4))} queries at a time "
        f"(all at once: {queries * size * 4 / 2**30:.1f} GiB per buffer)"
    )


if __name__ == "__main__":
    main()
