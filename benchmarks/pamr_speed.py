"""PAMR: naclip's shifted-view accumulation against the straightforward gather-all formula.

The straightforward version gathers all 8 x D neighbours of every class in every iteration,
a (B, C, 8 x D, H, W) tensor, as the reference implementation does.
Run: python benchmarks/pamr_speed.py [--classes 60 --height 375 --width 500]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from benchmarks.timing import best_of, peak_memory_mb, rss_growth_mb
from naclip.pamr import DIRECTIONS, pamr


def gather_all_pamr(image: torch.Tensor, logits: torch.Tensor, steps: int, dilations: tuple[int, ...]) -> torch.Tensor:
    """Straightforward PAMR: every neighbour of every class materialised at once, each iteration."""
    height, width = image.shape[-2:]

    def neighbours(x: torch.Tensor, with_centre: bool) -> torch.Tensor:  # (B, K, P, H, W)
        offsets = [(0, 0), *DIRECTIONS] if with_centre else DIRECTIONS
        views = []
        for d in dilations:
            padded = F.pad(x, [d] * 4, mode="replicate")
            views += [
                padded[..., d + dy * d : d + dy * d + height, d + dx * d : d + dx * d + width] for dy, dx in offsets
            ]
        return torch.stack(views, dim=2)

    std = neighbours(image, True).std(2, keepdim=True)
    weights = (-(image[:, :, None] - neighbours(image, False)).abs() / (1e-8 + 0.1 * std)).mean(1, keepdim=True)
    weights = weights.softmax(2)
    mask = logits
    for _ in range(steps):
        mask = (neighbours(mask, False) * weights).sum(2)
    return mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=60)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory-of", choices=["naive", "ours"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    image = torch.randn(1, 3, args.height, args.width, generator=generator).to(args.device)
    logits = torch.randn(1, args.classes, args.height, args.width, generator=generator).to(args.device)
    dilations = (8, 16)

    def ours() -> torch.Tensor:
        return pamr(image, logits, args.steps, dilations)

    def naive() -> torch.Tensor:
        return gather_all_pamr(image, logits, args.steps, dilations)

    if args.memory_of:  # one implementation alone, in a fresh process
        print(rss_growth_mb(ours if args.memory_of == "ours" else naive))
        return
    memory = {}
    if args.device == "cpu":  # first, while this process is small: a child starts from its parent's peak
        sizes = ["--classes", str(args.classes), "--height", str(args.height), "--width", str(args.width)]
        memory = {
            which: peak_memory_mb("benchmarks.pamr_speed", *sizes, "--memory-of", which) for which in ("ours", "naive")
        }
    difference = (ours() - naive()).abs().max().item()
    t_ours, t_naive = best_of(ours, args.repeat), best_of(naive, args.repeat)
    print(
        f"PAMR, {args.classes} classes at {args.height} x {args.width}, {args.steps} steps, dilations {dilations}, "
        f"{args.device}, {torch.get_num_threads()} threads"
    )
    print(f"  gather-all : {t_naive * 1000:8.1f} ms")
    print(f"  naclip     : {t_ours * 1000:8.1f} ms")
    print(f"  speed-up   : {t_naive / t_ours:8.2f} x")
    print(f"  max |diff| : {difference:.2e}")
    if memory:
        print(
            f"  peak memory: gather-all {memory['naive']:.0f} MiB, naclip {memory['ours']:.0f} MiB "
            f"({memory['ours'] / memory['naive']:.2f} of it)"
        )


if __name__ == "__main__":
    main()
