"""A sweep of 8 sigma values against one evaluation: the frozen trunk runs once per image.

Real open_clip shapes with random weights, sliding windows, with and without PAMR.
Run: python benchmarks/sigma_sweep.py [--model ViT-B-16 --classes 60]
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.timing import best_of_each, random_segmenter, readme_row
from naclip import Segmenter

SIGMAS = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0)
TARGET_RATIO = 2.0  # with PAMR


def sweep_times(seg: Segmenter, image: torch.Tensor, repeat: int) -> dict[int, tuple[float, float]]:
    """{PAMR steps (0, 10): (seconds of one setting, seconds of the 8-sigma sweep)} on a prepared image."""
    size = tuple(image.shape[-2:])
    times = {}
    for pamr_steps in (0, 10):
        single = [{"pamr_steps": pamr_steps}]
        sweep = [{"sigma": sigma, "pamr_steps": pamr_steps} for sigma in SIGMAS]
        runs = [lambda v=v: seg.predict_variants(image, size, v, probs=False) for v in (single, sweep)]
        times[pamr_steps] = tuple(best_of_each(runs, repeat))  # in turns: a drifting load hits both alike
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--classes", type=int, default=60)
    parser.add_argument("--height", type=int, default=336)
    parser.add_argument("--width", type=int, default=448)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    seg = random_segmenter(args.model, args.classes, device=args.device)
    print(
        f"{args.model}, {args.height} x {args.width}, sliding 224/112, {args.classes} classes, {args.device}, "
        f"{torch.get_num_threads()} threads"
    )
    ratio = 0.0
    for pamr_steps, (single, swept) in sweep_times(seg, torch.randn(3, args.height, args.width), args.repeat).items():
        ratio = swept / single
        print(
            f"  PAMR {'on ' if pamr_steps else 'off'}: one setting {single * 1000:7.0f} ms, "
            f"{len(SIGMAS)} sigmas {swept * 1000:7.0f} ms, ratio {ratio:5.2f} x (naive {len(SIGMAS)}.00 x)"
        )
        target = f" (target <= {TARGET_RATIO}x: {'met' if ratio <= TARGET_RATIO else 'NOT met'})" if pamr_steps else ""
        readme_row(
            f"sweep of {len(SIGMAS)} sigmas, {args.height} x {args.width}, {args.classes} classes, "
            f"PAMR {'on' if pamr_steps else 'off'}",
            f"one setting: {single * 1000:.0f} ms",
            f"{len(SIGMAS)} settings: {swept * 1000:.0f} ms",
            f"{ratio:.2f}x for {len(SIGMAS)} (naive: {len(SIGMAS)}x){target}",
        )
    verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
    print(f"  target: {len(SIGMAS)} sigmas with PAMR <= {TARGET_RATIO} x one setting: {ratio:.2f} x, {verdict}")


if __name__ == "__main__":
    main()
