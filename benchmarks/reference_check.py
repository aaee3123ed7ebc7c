"""Agreement with the authors' own code (SCLIP, ClearCLIP, NACLIP) on the same weights and images.

Each authors' segmentor is built from their checkout and their per-benchmark config file
(`configs/base_config.py` merged with `configs/cfg_<benchmark>.py`: class file, logit scale,
thresholds, windows, short side) and fed what mmseg's test pipeline feeds it: the file decoded by
`cv2.imdecode` (BGR), resized by mmcv's rule with `cv2.resize(INTER_LINEAR)` on uint8, flipped to
RGB and normalised as `SegDataPreProcessor` does, plus `ori_shape`. That pipeline is mmcv's, not
the authors', and is restated in `benchmarks/reference/common.py`. naclip gets the original file
(`Segmenter.for_benchmark(benchmark, method=...).predict(path)`), so decoding and resizing are part
of the comparison. Both sides run random ViT-B-16 (QuickGELU) weights in float32 on the CPU, from
one OpenAI-format state dict whose values are exact in float16; the direction shared by all text
outputs, and the one shared by all image tokens, are projected out of the two projections so that
label maps use several classes. The images: sample photos and a 2048 x 420 image (ClearCLIP pads
its windows to a multiple of 16 on it).

Stubbed or patched at run time (no file of a checkout is changed):
* all: `mmengine`, `mmengine.structures.PixelData`, `mmseg`, `mmseg.models`, `mmseg.registry.MODELS`
  (no-op decorator), `mmseg.models.segmentors.BaseSegmentor` (a plain nn.Module) and
  `mmseg.models.data_preprocessor.SegDataPreProcessor` (unused: the harness preprocesses);
  `pkg_resources` when not installed (OpenAI's `clip.py` compares torch versions with it). Each
  checkout's packages (`clip`, `pamr`, `prompts`, ClearCLIP's vendored `open_clip`) are in
  `sys.modules` only while its code runs.
* SCLIP, NACLIP: nothing else. `device=cpu` is passed to the constructor, so `clip.load` casts the
  model to float32 as it does on any CPU. NACLIP gets `pamr_steps` 10 (`eval.py --pamr on`) or 0.
* ClearCLIP: `BLIP.models.blip_retrieval` and `gem` (imported, other backbones); its
  `open_clip.openai.download_pretrained_from_url` returns the checkpoint path, so
  `create_model('ViT-B/16', pretrained='openai')` loads it through their `load_openai_model`;
  `create_model`'s `precision` is 'fp32' instead of 'fp16'; `torch.Tensor.half` is the identity while
  `predict` runs (its `inputs.half()`). `model_type='ClearCLIP'` (the paper's method, `demo.py:28`)
  replaces the committed `base_config.py`'s 'vanilla'.
* ProxyCLIP: as ClearCLIP, plus `nn.Module.half` the identity, `torch.hub.load` answered by DINO's own
  ViT-B/8 with the random weights naclip loads too, `mae` and `openpyxl` stubbed
  (`benchmarks/reference/proxyclip.py`). A module's `naclip_overrides(scratch)` adds settings to naclip's side.
* `--fast` only: both sides embed each query with the first of the 80 templates (the authors'
  template list is cut to one while their model is built); `text_diff` compares the two, then the
  authors' model gets naclip's embeddings, so both score against the same vectors.

Run: python -m benchmarks.reference_check --sclip /path/to/SCLIP --clearclip /path/to/ClearCLIP
     [--naclip /path/to/NACLIP] [--fast] [--markdown] [--variants] [--speed] [--benchmarks ...] [--images ...]
Cost on 2 CPU cores: the authors' text encoding runs all 77 positions of 80 prompts per query (a few
seconds per query), so a full run takes an hour or more; --fast skips that and runs two benchmarks
per method on two images. Their synonym max builds a (classes, queries, H, W) tensor: SCLIP's VOC21
file on the 2048 x 420 image needs about 4 GB, and its COCO-Object file 31 GB (not a default).
"""

from __future__ import annotations

import argparse
import importlib
import math
import pkgutil
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmarks import reference
from benchmarks.reference import common
from benchmarks.timing import best_of
from naclip import Segmenter
from naclip.preprocess import load_image
from naclip.text import TEMPLATES, encode_queries

LABEL_TARGET, PROB_TARGET = 99.9, 1e-3
SPEED_TARGET = 15.0  # end to end against the authors' pipeline, per image (--speed)
DEFAULT_BENCHMARKS = ("voc21", "context59", "cityscapes")


def _method_modules() -> dict[str, types.ModuleType]:
    """Each module of benchmarks.reference that wraps a checkout (it has METHODS), by checkout flag."""
    found = {}
    for info in pkgutil.iter_modules(reference.__path__):
        module = importlib.import_module(f"{reference.__name__}.{info.name}")
        if hasattr(module, "METHODS"):
            found[getattr(module, "CHECKOUT", info.name)] = module
    return found


MODULES = _method_modules()
FAMILY = {method: name for name, module in MODULES.items() for method in module.METHODS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in MODULES:
        parser.add_argument(f"--{name}", type=Path, help=f"checkout of the authors' {name} code")
    parser.add_argument("--methods", nargs="+", choices=sorted(FAMILY), help="default: those with a checkout")
    parser.add_argument("--benchmarks", nargs="+", choices=sorted(common.CONFIG_FILES), help="default: per method")
    parser.add_argument("--images", type=Path, nargs="+", help="default: sample photos and a 2048 x 420 image")
    parser.add_argument("--fast", action="store_true", help="two benchmarks per method, two images, one template")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown (for the README)")
    parser.add_argument("--variants", action="store_true", help="also NACLIP's attention x arch x windows x PAMR sweep")
    parser.add_argument(
        "--speed", action="store_true", help="also time each side's second prediction of each image (end to end)"
    )
    args = parser.parse_args()

    checkouts = {name: getattr(args, name) for name in MODULES if getattr(args, name)}
    methods = args.methods or [m for m in FAMILY if FAMILY[m] in checkouts]
    if not methods or any(FAMILY[m] not in checkouts for m in methods):
        flags = ", ".join(f"--{name}" for name in MODULES)
        parser.error(f"give the checkout of every method to check ({flags})")
    warnings.simplefilter("ignore")
    torch.set_grad_enabled(False)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        checkpoint = common.random_checkpoint(scratch / "vit-b-16-random.pt")
        images = args.images or common.test_images(scratch, args.fast)
        loaded = {name: MODULES[name].load(root.resolve()) for name, root in checkouts.items()}
        for method in methods:
            module = MODULES[FAMILY[method]]
            defaults = getattr(module, "FAST_BENCHMARKS" if args.fast else "BENCHMARKS", {})
            for benchmark in args.benchmarks or defaults.get(method, DEFAULT_BENCHMARKS):
                rows += compare(
                    method, benchmark, loaded[FAMILY[method]], checkpoint, images, scratch, args.fast, args.speed
                )
        if args.variants and "naclip" in loaded:
            rows += MODULES["naclip"].variant_rows(loaded["naclip"], checkpoint, images, scratch)
    frame = pd.DataFrame(rows)
    print()
    print(to_markdown(frame) if args.markdown else frame.to_string(index=False))
    worst_agreement, worst_diff = frame["label_agreement_%"].min(), frame["max_prob_diff"].max()
    passed = worst_agreement >= LABEL_TARGET and worst_diff <= PROB_TARGET
    if args.speed:
        print_speed(frame)
    print(
        f"\n{len(frame)} comparisons: worst label agreement {worst_agreement:.4f} % (target >= {LABEL_TARGET}), "
        f"worst probability difference {worst_diff:.2e} (target <= {PROB_TARGET:g}): {'PASS' if passed else 'FAIL'}"
    )
    sys.exit(0 if passed else 1)


def compare(
    method: str,
    benchmark: str,
    checkout: common.Checkout,
    checkpoint: Path,
    images: Sequence[Path],
    scratch: Path,
    fast: bool,
    speed: bool = False,
) -> list[dict]:
    """One row per image: the authors' segmentor and naclip's preset for (method, benchmark).

    With `speed`, each side predicts each image a second time, timed: file to label map and
    probabilities (decoding, resizing, windows, post-processing), text embeddings already made.
    """
    start = time.perf_counter()
    module = MODULES[FAMILY[method]]
    overrides = module.naclip_overrides(scratch) if hasattr(module, "naclip_overrides") else {}
    ours = Segmenter.for_benchmark(
        benchmark,
        method=method,
        model="ViT-B-16",
        pretrained=str(checkpoint),
        device="cpu",
        dtype="float32",
        cache_dir=str(scratch / "cache"),
        **overrides,  # a module's own: the second models' shared random weights
    )
    queries = list(ours.classes.queries)
    if fast:  # one template per query on both sides: ours computed here, given to the authors' model
        ours.text_cache.memory.update(zip(queries, encode_queries(ours.clip, ours.tokenizer, queries, TEMPLATES[:1])))
    our_text = ours._query_features()[0]  # noqa: SLF001
    theirs = module.segmentor(checkout, method, benchmark, checkpoint, our_text if fast else None)
    same_queries = [q.strip() for q in theirs.queries] == queries
    if fast and not same_queries:
        raise SystemExit(f"{method}/{benchmark}: the class files parse to different queries; cannot share text")
    text_diff = (theirs.own_text.float() - our_text.float()).abs().max().item() if same_queries else math.inf
    rows = []
    for path in images:
        their_prediction = theirs.predict(path)
        our_result = ours.predict(path)
        timing = {}
        if speed:  # the second call: one-off costs (the compiled PAMR kernels' load, caches) left out
            their_s, our_s = (best_of(lambda p=path, side=side: side.predict(p), 1, 0) for side in (theirs, ours))
            timing = {"their_s": their_s, "our_s": our_s, "speedup": their_s / our_s}
        inputs, _ = common.mmcv_inputs(path, theirs.short_side)
        our_inputs = ours.prepare(load_image(path))
        input_diff = (inputs[0] - our_inputs).abs().max().item() if inputs[0].shape == our_inputs.shape else math.inf
        outcome = common.Outcome(
            method,
            benchmark,
            path.name,
            their_prediction,
            (our_result.labels, our_result.probs),
            {
                "short_side": theirs.short_side,
                "input_diff": input_diff,
                "queries": len(queries) if same_queries else "differ",
                "text_diff": text_diff,
                "templates": 1 if fast else len(TEMPLATES),
                **timing,
            },
        )
        rows.append(outcome.row())
        print(pd.DataFrame(rows[-1:]).to_string(header=len(rows) == 1, index=False), flush=True)
    print(f"  {method}/{benchmark}: {time.perf_counter() - start:.0f} s", flush=True)
    return rows


def print_speed(frame: pd.DataFrame) -> None:
    """Per method and benchmark: seconds on each side over all images, and the worst image's ratio
    against SPEED_TARGET (a per-image target)."""
    groups = frame.groupby(["method", "benchmark"], sort=False)
    speed = groups[["their_s", "our_s"]].sum().join(groups.speedup.min().rename("worst"))
    print(f"\nEnd to end (second call of each image), {torch.get_num_threads()} threads:")
    for (method, benchmark), row in speed.iterrows():
        verdict = "met" if row.worst >= SPEED_TARGET else "NOT met"
        print(
            f"  {method}/{benchmark}: authors {row.their_s:.2f} s, naclip {row.our_s:.2f} s in all, "
            f"{row.their_s / row.our_s:.1f} x; worst image {row.worst:.1f} x (target >= {SPEED_TARGET:g} x: {verdict})"
        )


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table (pandas' own needs the tabulate package)."""

    def cell(value: object) -> str:
        if isinstance(value, float | np.floating):
            return f"{value:.4f}" if abs(value) >= 1e-2 or value == 0 else f"{value:.1e}"
        return str(value)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
