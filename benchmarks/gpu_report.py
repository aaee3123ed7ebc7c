"""One report of naclip on a CUDA machine, in a few minutes.

Prints: images/s on each benchmark's protocol (synthetic images at the benchmark's typical size),
PAMR's time and peak memory at 171 classes on a 2048 x 1024 image, fp16 against fp32 labels on
the embedded samples, a `torchrun --nproc-per-node 1` evaluation (and an all-reduce on NCCL), an
8-sigma sweep against one setting, and the projected time of the whole 8-benchmark table.
Pretrained weights where they load, random ViT-B-16 weights otherwise (timings do not depend on
the weights).
Run: python -m benchmarks.gpu_report            (CUDA)
     python -m benchmarks.gpu_report --device cpu --quick   (a smaller run of every step)
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from benchmarks.prediction_speed import protocol_segmenter, synthetic_image
from benchmarks.sigma_sweep import SIGMAS, sweep_times
from benchmarks.timing import random_segmenter
from naclip import Segmenter
from naclip.datasets.benchmarks import open_benchmark
from naclip.pamr import compiled_applies, pamr
from naclip.preprocess import load_image

# Typical image size (H, W) and validation images of each benchmark.
BENCHMARKS = {
    "voc21": ((375, 500), 1449),
    "voc20": ((375, 500), 1449),
    "context60": ((375, 500), 5105),
    "context59": ((375, 500), 5105),
    "coco_object": ((480, 640), 5000),
    "coco_stuff": ((480, 640), 5000),
    "cityscapes": ((1024, 2048), 500),
    "ade20k": ((512, 683), 2000),
}
SAMPLES = ("voc21-sample", "ade20k-sample")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(device: torch.device, quick: bool) -> dict[str, float]:
    """Images/s of whole predictions (a uint8 array in, labels out) on each benchmark's protocol."""
    print("\n== images/s per benchmark protocol (NACLIP with PAMR, end to end from a uint8 array)")
    rates = {}
    for benchmark, ((height, width), _) in BENCHMARKS.items():
        if quick:
            height, width = height // 2, width // 2
        seg = protocol_segmenter(benchmark, device=str(device))
        image = synthetic_image(height, width)
        seg.predict(image)  # warm-up: query embeddings, kernels
        runs = 1 if quick else 10
        synchronize(device)
        start = time.perf_counter()
        for _ in range(runs):
            seg.predict(image)
        synchronize(device)
        rates[benchmark] = runs / (time.perf_counter() - start)
        settings = seg.settings
        window = f"sliding {settings.slide_crop}/{settings.slide_stride}" if settings.slide_crop else "whole"
        print(
            f"  {benchmark:<12} {height:4d} x {width:<4d} {len(seg.classes.queries):3d} queries, short side "
            f"{settings.short_side}, {window:<14} {seg.dtype}: {rates[benchmark]:7.2f} images/s"
        )
        del seg
    return rates


def pamr_at_scale(device: torch.device, quick: bool) -> None:
    """PAMR (10 steps, dilations 8, 16) at 171 classes on a 2048 x 1024 image: time and peak memory."""
    height, width = (256, 512) if quick else (1024, 2048)
    print(f"\n== PAMR, 171 classes on {width} x {height}, 10 steps, dilations (8, 16)")
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(1, 3, height, width, generator=generator).to(device)
    logits = torch.randn(1, 171, height, width, generator=generator).to(device)
    pamr(image, logits)  # warm-up (compiles on a CPU)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    times = []
    for _ in range(1 if quick else 3):
        synchronize(device)
        start = time.perf_counter()
        pamr(image, logits)
        synchronize(device)
        times.append(time.perf_counter() - start)
    logits_mb = logits.numel() * logits.element_size() / 2**20
    path = "compiled" if compiled_applies(logits, logits) else "torch"
    line = f"  {min(times) * 1000:.1f} ms ({path} path), logits {logits_mb:.0f} MiB"
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        line += f", peak memory above the inputs {peak:.0f} MiB ({peak / logits_mb:.2f} x the logits)"
    print(line)


def load_weights(pretrained: str | None, device: torch.device) -> str | None:
    """`pretrained` if it loads here, else None (random weights) with a note."""
    if pretrained is None:
        return None
    try:
        Segmenter(model="ViT-B-16", pretrained=pretrained, device=str(device))
    except (OSError, RuntimeError, ValueError) as error:
        print(f"  ViT-B-16 {pretrained!r} weights do not load ({type(error).__name__}); random weights instead")
        return None
    return pretrained


def half_agreement(device: torch.device, pretrained: str | None, quick: bool) -> None:
    """Share of pixels whose label is the same in float16 and in float32, on the embedded samples."""
    print(f"\n== float16 against float32 labels on the embedded samples ({pretrained or 'random'} weights)")
    for sample in SAMPLES:
        segs = {}
        for dtype in ("float16", "float32"):
            if pretrained is None:
                segs[dtype] = protocol_segmenter(sample, device=str(device), dtype=dtype)
            else:
                segs[dtype] = Segmenter.for_benchmark(sample, pretrained=pretrained, device=str(device), dtype=dtype)
        items = open_benchmark(sample).items[: 1 if quick else None]
        same = total = 0
        worst = 1.0
        for item in items:
            image = load_image(item.image)
            half, full = (segs[d].predict(image).labels for d in ("float16", "float32"))
            agree = int((half == full).sum())
            same, total = same + agree, total + half.size
            worst = min(worst, agree / half.size)
        print(f"  {sample:<14} {len(items):2d} images: {same / total:.4%} of pixels agree (worst image {worst:.4%})")


def all_reduce_check() -> None:
    """Under torchrun: join a process group (NCCL on CUDA, gloo on a CPU) and all-reduce one tensor."""
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if backend == "nccl" else torch.device("cpu")
    value = torch.ones(4, device=device) * (dist.get_rank() + 1)
    dist.all_reduce(value)
    print(f"all-reduce on {backend}, world {dist.get_world_size()}: {value.tolist()}")
    dist.destroy_process_group()


def torchrun_eval(device: torch.device, pretrained: str | None, quick: bool) -> None:
    """`torchrun --nproc-per-node 1`: an all-reduce, then `naclip eval` on the VOC sample."""
    print("\n== torchrun --nproc-per-node 1")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1"]
    check = subprocess.run(
        [*torchrun, "-m", "benchmarks.gpu_report", "--all-reduce-check"], capture_output=True, text=True, timeout=300
    )
    lines = (check.stdout + check.stderr).strip().splitlines()
    print(f"  {lines[-1] if lines else ''} (exit {check.returncode})")
    with tempfile.TemporaryDirectory() as out:
        command = [*torchrun, "-m", "naclip", "eval", "--benchmark", "voc21-sample", "--out", out, "--no-progress"]
        command += ["--pretrained", pretrained or "none", "--device", str(device)]
        command += ["--limit", "1"] if quick else []
        start = time.perf_counter()
        run = subprocess.run(command, capture_output=True, text=True, timeout=540)
        elapsed = time.perf_counter() - start
        summary = Path(out) / "summary.csv"
        print(f"  naclip eval --benchmark voc21-sample: exit {run.returncode} in {elapsed:.0f} s")
        if summary.is_file():
            with summary.open() as rows:
                for row in csv.DictReader(rows):
                    fields = ("benchmark", "mIoU", "n_images", "images_per_s", "device", "dtype", "world_size")
                    print("  " + ", ".join(f"{field} {row.get(field)}" for field in fields))
        else:
            print("  " + "\n  ".join((run.stdout + run.stderr).strip().splitlines()[-10:]))


def sweep(device: torch.device, quick: bool) -> None:
    """An 8-sigma sweep against one setting: the trunk runs once, the head, PAMR and softmax per setting."""
    print(f"\n== {len(SIGMAS)} sigmas against one setting (336 x 448, 60 classes, sliding 224/112, random weights)")
    seg = random_segmenter("ViT-B-16", 60, device=str(device))
    for steps, (single, swept) in sweep_times(seg, torch.randn(3, 336, 448), 1 if quick else 3).items():
        print(
            f"  PAMR {'on ' if steps else 'off'}: one setting {single * 1000:7.1f} ms, "
            f"{len(SIGMAS)} sigmas {swept * 1000:7.1f} ms, {swept / single:.2f}x"
        )


def projection(rates: dict[str, float]) -> None:
    """Hours of the 8-benchmark table on this device, from the images/s above."""
    print("\n== projected time of the 8-benchmark table (one device; N devices under torchrun divide it)")
    total = 0.0
    for benchmark, (_, count) in BENCHMARKS.items():
        seconds = count / rates[benchmark]
        total += seconds
        print(f"  {benchmark:<12} {count:5d} images: {seconds / 60:7.1f} min")
    print(f"  all 8       : {total / 60:7.1f} min")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--pretrained", default="openai", help="open_clip tag or checkpoint; 'none' for random")
    parser.add_argument("--quick", action="store_true", help="half-size images, one run each, 1 eval image")
    parser.add_argument("--all-reduce-check", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.all_reduce_check:
        all_reduce_check()
        return
    logging.getLogger().setLevel(logging.ERROR)  # open_clip logs each random initialisation
    warnings.simplefilter("ignore")
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"naclip report: {name}, torch {torch.__version__}, numpy {np.__version__}{', quick' if args.quick else ''}")
    start = time.perf_counter()
    pretrained = load_weights(None if args.pretrained == "none" else args.pretrained, device)
    rates = images_per_second(device, args.quick)
    pamr_at_scale(device, args.quick)
    half_agreement(device, pretrained, args.quick)
    torchrun_eval(device, pretrained, args.quick)
    sweep(device, args.quick)
    projection(rates)
    print(f"\nreport took {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
