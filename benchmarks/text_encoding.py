"""Text classifier: prompts encoded on their own length against open_clip's full 77-token context.

Real open_clip shapes with random weights. Run: python benchmarks/text_encoding.py [--model ViT-B-16]
"""

from __future__ import annotations

import argparse
import warnings

import torch
import torch.nn.functional as F

from benchmarks.timing import best_of, readme_row
from naclip.backbone import load_clip
from naclip.text import TEMPLATES, encode_queries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--names", nargs="+", default=["cat", "person in shirt", "television monitor"])
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clip, tokenizer = load_clip(args.model, None, "cpu")

    def full_context() -> torch.Tensor:
        with torch.no_grad():
            each = F.normalize(clip.encode_text(tokenizer([t(n) for n in args.names for t in TEMPLATES])), dim=-1)
        return F.normalize(each.reshape(len(args.names), len(TEMPLATES), -1).mean(1), dim=-1)

    def ours() -> torch.Tensor:
        return encode_queries(clip, tokenizer, args.names)

    difference = (ours() - full_context()).abs().max().item()
    t_full, t_ours = best_of(full_context, args.repeat), best_of(ours, args.repeat)
    prompts = len(args.names) * len(TEMPLATES)
    print(f"{args.model} text tower, {prompts} prompts, cpu, {torch.get_num_threads()} threads")
    print(f"  full 77-token context : {t_full * 1000:8.1f} ms")
    print(f"  naclip                : {t_ours * 1000:8.1f} ms")
    print(f"  speed-up              : {t_full / t_ours:8.2f} x")
    print(f"  max |diff|            : {difference:.2e}")
    readme_row(
        f"text classifier, {prompts} prompts ({len(args.names)} names x {len(TEMPLATES)} templates)",
        f"full 77-token context: {t_full * 1000:.0f} ms",
        f"prompts on their own length: {t_ours * 1000:.0f} ms",
        f"{t_full / t_ours:.1f}x, max abs diff {difference:.0e}",
    )


if __name__ == "__main__":
    main()
