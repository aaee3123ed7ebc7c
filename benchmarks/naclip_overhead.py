"""NACLIP's own cost: dense NACLIP features against a plain CLIP image-encoder pass on the same windows.

Real open_clip shapes with random weights. Run: python benchmarks/naclip_overhead.py [--model ViT-B-16]
"""

from __future__ import annotations

import argparse
import warnings

import torch

from benchmarks.timing import best_of, readme_row
from naclip.backbone import load_clip
from naclip.encoder import DenseEncoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()

    dtype = getattr(torch, args.dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clip, _ = load_clip(args.model, None, args.device)
    clip = clip.to(dtype)
    encoder = DenseEncoder(clip.visual)
    windows = torch.randn(args.windows, 3, 224, 224, device=args.device, dtype=dtype)

    def plain() -> torch.Tensor:
        with torch.no_grad():
            return clip.visual(windows)

    def naclip() -> torch.Tensor:
        return encoder.features(windows, "naclip", "reduced", 5.0)

    t_plain, t_naclip = best_of(plain, args.repeat), best_of(naclip, args.repeat)
    print(
        f"{args.model}, {args.windows} windows of 224 x 224, {args.device}, {args.dtype}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"  open_clip image encoder : {t_plain * 1000:8.1f} ms")
    print(f"  NACLIP dense features   : {t_naclip * 1000:8.1f} ms")
    print(f"  NACLIP overhead         : {(t_naclip / t_plain - 1) * 100:+8.1f} %")
    readme_row(
        f"NACLIP's own cost, {args.windows} windows of 224",
        f"open_clip image encoder: {t_plain * 1000:.0f} ms",
        f"NACLIP dense features: {t_naclip * 1000:.0f} ms",
        f"{(t_naclip / t_plain - 1) * 100:+.1f}% (the reduced block skips the FFN)",
    )


if __name__ == "__main__":
    main()
