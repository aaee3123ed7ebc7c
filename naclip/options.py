"""Command-line flags for every Segmenter option, shared by `naclip segment` and `naclip eval`."""

from __future__ import annotations

import argparse
import inspect

from naclip.attention import ATTENTIONS
from naclip.encoder import ARCHITECTURES
from naclip.segmenter import Segmenter

_DEFAULTS = {name: p.default for name, p in inspect.signature(Segmenter.__init__).parameters.items() if name != "self"}
_HELP = {
    "model": "open_clip ViT name (ViT-B-16, ViT-B-32, ViT-L-14, ...)",
    "pretrained": "open_clip tag (openai, laion2b_s34b_b88k, ...), a checkpoint file, or 'none' for random weights",
    "attention": "last-block attention variant",
    "arch": "last-block architecture: reduced drops the residual and FFN",
    "sigma": "std of the Gaussian neighbourhood bias, in patches",
    "pamr_steps": "PAMR iterations (0 disables PAMR)",
    "pamr_dilations": "PAMR dilations",
    "slide_crop": "sliding-window size (0: whole image at once)",
    "slide_stride": "sliding-window stride",
    "prob_threshold": "pixels whose top class probability is below this become class 0 (background)",
    "logit_scale": "softmax temperature applied to cosine similarities",
    "short_side": "resize so the short side has this length",
    "long_side": "... and the long side at most this",
    "device": "auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps",
    "dtype": "float32 / float16 / bfloat16 (default: float16 on CUDA, float32 elsewhere)",
    "window_batch": "windows encoded together (bounds memory)",
    "cache_dir": "where text embeddings are cached (default ~/.cache/naclip)",
    "seed": "seed of random weights (with --pretrained none)",
}
_CHOICES = {"attention": sorted(ATTENTIONS), "arch": sorted(ARCHITECTURES)}


def _pretrained(value: str) -> str | None:
    return None if value.lower() in ("none", "random", "") else value


def add_method_arguments(parser: argparse.ArgumentParser, defaults: dict | None = None) -> None:
    """A flag per Segmenter option (`--pamr-steps`, ...); `defaults` overrides the library's defaults."""
    defaults = {**_DEFAULTS, **(defaults or {})}
    group = parser.add_argument_group("method")
    for name, default in defaults.items():
        if name not in _DEFAULTS:
            continue
        flag = "--" + name.replace("_", "-")
        help_text = f"{_HELP[name]} (default: {default})"
        if name == "pretrained":
            group.add_argument(flag, type=_pretrained, default=default, help=help_text)
        elif name == "pamr_dilations":
            group.add_argument(flag, type=int, nargs="+", default=list(default), help=help_text)
        elif name in ("dtype", "cache_dir"):
            group.add_argument(flag, default=default, help=help_text)
        else:
            group.add_argument(flag, type=type(default), default=default, choices=_CHOICES.get(name), help=help_text)


def method_kwargs(args: argparse.Namespace) -> dict:
    """Segmenter keyword arguments from parsed flags."""
    return {name: getattr(args, name) for name in _DEFAULTS if hasattr(args, name)}
