"""PAMR: naclip's two propagation paths against the straightforward gather-all formula.

The straightforward version gathers all 8 x D neighbours of every class in every iteration,
a (B, C, 8 x D, H, W) tensor, as the reference implementation does. naclip's torch path adds
shifted views one neighbour at a time; its compiled path (numba, CPU) is what runs on a CPU.
Run: python -m benchmarks.pamr_speed [--classes 60 --height 375 --width 500]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F

from benchmarks.timing import best_of, peak_memory_mb, readme_row, rss_growth_mb
from naclip.pamr import DIRECTIONS, _propagate_torch, affinity, compiled_applies, pamr

TARGET_SPEEDUP, TARGET_DIFF, TARGET_MEMORY = 25.0, 1e-5, 2.0


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


def implementations(
    image: torch.Tensor, logits: torch.Tensor, steps: int, dilations: tuple[int, ...]
) -> dict[str, Callable[[], torch.Tensor]]:
    """The contenders by name: each returns refined logits."""
    return {
        "gather-all": lambda: gather_all_pamr(image, logits, steps, dilations),
        "torch path": lambda: _propagate_torch(logits, affinity(image, dilations), dilations, steps),
        "naclip": lambda: pamr(image, logits, steps, dilations),
    }


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=60)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    image = torch.randn(1, 3, args.height, args.width, generator=generator).to(args.device)
    logits = torch.randn(1, args.classes, args.height, args.width, generator=generator).to(args.device)
    dilations = (8, 16)
    contenders = implementations(image, logits, args.steps, dilations)

    if args.memory_of:  # one implementation alone, in a fresh process, compiled beforehand
        pamr(image[..., :32, :32], logits[..., :32, :32], 1, dilations)
        print(rss_growth_mb(contenders[args.memory_of]))
        return
    memory = {}
    if args.device == "cpu":  # first, while this process is small: a child starts from its parent's peak
        sizes = ["--classes", str(args.classes), "--height", str(args.height), "--width", str(args.width)]
        memory = {name: peak_memory_mb("benchmarks.pamr_speed", *sizes, "--memory-of", name) for name in contenders}
    reference = contenders["gather-all"]()
    differences = {name: (fn() - reference).abs().max().item() for name, fn in contenders.items()}
    times = {name: best_of(fn, args.repeat) for name, fn in contenders.items()}
    path = "compiled" if compiled_applies(logits, logits) else "torch"
    logits_mb = logits.numel() * logits.element_size() / 2**20
    print(
        f"PAMR, {args.classes} classes at {args.height} x {args.width}, {args.steps} steps, dilations {dilations}, "
        f"{args.device}, {torch.get_num_threads()} threads; naclip takes its {path} path"
    )
    for name in contenders:
        line = f"  {name:<10}: {times[name] * 1000:8.1f} ms, {times['gather-all'] / times[name]:6.1f} x"
        line += f", max |diff| {differences[name]:.1e}"
        if memory:
            line += f", peak memory {memory[name]:6.0f} MiB ({memory[name] / logits_mb:.2f} x the logits)"
        print(line)
    speedup = times["gather-all"] / times["naclip"]
    print(f"  target: >= {TARGET_SPEEDUP:.0f} x faster than gather-all: {speedup:.1f} x, {verdict(speedup >= 25)}")
    worst = max(differences["naclip"], differences["torch path"])
    print(f"  target: max |diff| <= {TARGET_DIFF:.0e} on every path: {worst:.1e}, {verdict(worst <= TARGET_DIFF)}")
    memory_text = {name: f", {memory[name] / logits_mb:.2f}x the logits' memory" if memory else "" for name in times}
    if memory:
        ratio = memory["naclip"] / logits_mb
        print(f"  target: peak memory <= {TARGET_MEMORY:.0f} x the logits: {ratio:.2f} x, {verdict(ratio <= 2)}")
    readme_row(
        f"PAMR, {args.classes} classes at {args.height} x {args.width}, {args.steps} steps, dilations {dilations}",
        f"gather all 8 x D neighbours: {times['gather-all'] * 1000:.0f} ms{memory_text['gather-all']}",
        f"{path} kernels: {times['naclip'] * 1000:.0f} ms{memory_text['naclip']}",
        f"{speedup:.1f}x faster (the torch path {times['gather-all'] / times['torch path']:.1f}x), "
        f"max abs diff {worst:.1e}",
    )


if __name__ == "__main__":
    main()
