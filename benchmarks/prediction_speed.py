"""A whole prediction with PAMR against one without, on a benchmark's protocol (default VOC21).

VOC21: the whole image at short side 336, 21 classes spelled as 56 queries, PAMR at the
original size. Random ViT-B-16 weights and random query embeddings: the work is the real one.
Run: python -m benchmarks.prediction_speed [--benchmark voc21 --height 513 --width 513]
"""

from __future__ import annotations

import argparse
import logging
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.timing import best_of_each, readme_row
from naclip import Segmenter

TARGET_RATIO = 1.5


def protocol_segmenter(benchmark: str, model: str = "ViT-B-16", **overrides: Any) -> Segmenter:
    """NACLIP on `benchmark`'s protocol and class file, random weights and random unit query embeddings."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # open_clip logs that the weights are random
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seg = Segmenter.for_benchmark(benchmark, model=model, pretrained=None, **overrides)
    finally:
        root.setLevel(level)
    width = seg.clip.text_projection.shape[-1]
    generator = torch.Generator().manual_seed(0)
    queries = seg.classes.queries
    embeddings = F.normalize(torch.randn(len(queries), width, generator=generator), dim=-1)
    seg.text_cache.memory.update(zip(queries, embeddings))
    return seg


def synthetic_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """An (H, W, 3) uint8 image of smooth blobs with edges, so that PAMR's affinities vary as on photos."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, max(2, height // 32), max(2, width // 32), generator=generator)
    smooth = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    image = (smooth * 4).round() / 4 + 0.05 * torch.randn(1, 3, height, width, generator=generator)
    return (image.clamp(0, 1)[0].permute(1, 2, 0) * 255).to(torch.uint8).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmark", default="voc21")
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--height", type=int, default=513)
    parser.add_argument("--width", type=int, default=513)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    with_pamr = protocol_segmenter(args.benchmark, args.model, device=args.device)
    without = protocol_segmenter(args.benchmark, args.model, device=args.device, pamr_steps=0)
    image = synthetic_image(args.height, args.width)
    on, off = best_of_each([lambda: with_pamr.predict(image), lambda: without.predict(image)], args.repeat)
    settings = with_pamr.settings
    window = f"sliding {settings.slide_crop}/{settings.slide_stride}" if settings.slide_crop else "whole image"
    print(
        f"{args.benchmark} protocol, {args.model}, one {args.height} x {args.width} image, {window}, "
        f"{len(with_pamr.class_names)} classes = {len(with_pamr.classes.queries)} queries, PAMR {settings.pamr_steps} "
        f"steps {settings.pamr_dilations}, {args.device}, {torch.get_num_threads()} threads"
    )
    print(f"  without PAMR: {off * 1000:7.0f} ms")
    print(f"  with PAMR   : {on * 1000:7.0f} ms (PAMR {(on - off) * 1000:.0f} ms, {(on - off) / on:.0%} of it)")
    verdict = "met" if on / off <= TARGET_RATIO else "NOT met"
    print(f"  target: with PAMR <= {TARGET_RATIO} x without: {on / off:.2f} x, {verdict}")
    readme_row(
        f"a {args.benchmark}-protocol prediction, {args.height} x {args.width}, {window}, "
        f"{len(with_pamr.class_names)} classes ({len(with_pamr.classes.queries)} queries)",
        f"without PAMR: {off * 1000:.0f} ms",
        f"with PAMR: {on * 1000:.0f} ms",
        f"{on / off:.2f}x (target <= {TARGET_RATIO}x: {verdict})",
    )


if __name__ == "__main__":
    main()
