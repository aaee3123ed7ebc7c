"""Sliding-window inference: batched windows against one window at a time.

The one-at-a-time baseline encodes each window alone and pads its logits to the full image
before adding them, as the reference implementation does. Real ViT-B-16 shapes, random weights.
Run: python benchmarks/sliding_window.py [--classes 60 --height 336 --width 504]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from benchmarks.timing import best_of, random_segmenter, readme_row
from naclip import Prediction, Segmenter
from naclip.sliding import window_boxes


def one_at_a_time(seg: Segmenter, image: torch.Tensor) -> torch.Tensor:
    """(Q, H, W) window-averaged logits, each window encoded and padded to full size on its own."""
    height, width = image.shape[-2:]
    queries = seg._query_features()[0]  # noqa: SLF001
    total = image.new_zeros((1, len(queries), height, width))
    count = image.new_zeros((1, 1, height, width))
    for y1, y2, x1, x2 in window_boxes(height, width, seg.settings.slide_crop, seg.settings.slide_stride):
        crop = image[None, :, y1:y2, x1:x2]
        features = F.normalize(seg.encoder.features(crop, "naclip", "reduced", 5.0), dim=-1)
        grid = seg.encoder.grid(y2 - y1, x2 - x1)
        logits = (features @ queries.T).transpose(1, 2).reshape(1, -1, *grid)
        logits = F.interpolate(logits, size=(y2 - y1, x2 - x1), mode="bilinear", align_corners=False)
        total += F.pad(logits, (x1, width - x2, y1, height - y2))
        count[..., y1:y2, x1:x2] += 1
    return (total / count)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--classes", type=int, default=60)
    parser.add_argument("--height", type=int, default=336)
    parser.add_argument("--width", type=int, default=504)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    seg = random_segmenter(args.model, args.classes, pamr_steps=0, device=args.device)

    image = torch.randn(3, args.height, args.width, device=args.device, dtype=seg.dtype)
    size = (args.height, args.width)
    windows = len(window_boxes(*size, seg.settings.slide_crop, seg.settings.slide_stride))

    def batched(batch: int) -> Prediction:
        seg.settings = seg.settings.replace(window_batch=batch)
        return seg.predict_prepared(image, size)

    reference = one_at_a_time(seg, image)
    ours = batched(args.batch)
    agree = (ours.labels == reference.argmax(0).cpu().numpy()).mean()

    t_loop = best_of(lambda: one_at_a_time(seg, image), args.repeat)
    t_single = best_of(lambda: batched(1), args.repeat)
    t_batched = best_of(lambda: batched(args.batch), args.repeat)
    print(
        f"Sliding window, {args.model}, {args.height} x {args.width} ({windows} windows of 224, stride 112), "
        f"{args.classes} classes, {args.device}, {torch.get_num_threads()} threads"
    )
    print(f"  one at a time, padded to full size : {t_loop * 1000:8.1f} ms")
    print(f"  naclip, window_batch=1             : {t_single * 1000:8.1f} ms")
    print(f"  naclip, window_batch={args.batch:<3d}           : {t_batched * 1000:8.1f} ms")
    print(f"  speed-up batched vs one at a time  : {t_loop / t_batched:8.2f} x")
    print(f"  label agreement with the baseline  : {agree:.4%}")
    readme_row(
        f"sliding window, {args.height} x {args.width} ({windows} windows), {args.classes} classes",
        f"one window at a time, padded to full size: {t_loop * 1000:.0f} ms",
        f"batched: {t_batched * 1000:.0f} ms",
        f"{t_loop / t_batched:.2f}x, labels {agree:.4%} equal",
    )


if __name__ == "__main__":
    main()
