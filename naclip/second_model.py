"""Second frozen vision models beside CLIP (a DINO ViT through `timm`, a SAM image encoder, ...).

A head declares the models it needs (`register_head(..., models=(...))`); the `Segmenter` loads each
once, runs it on every batch of windows with its own preprocessing and hands its features to the
head (`HeadInput.models[name]`). Its weights come from `Settings.vfm_pretrained` (`NAME=WEIGHTS`):
a tag its `download` knows, a local checkpoint file, or none for random weights (tests; loudly
marked). Unnamed, a model takes its `default` tag, or random weights when CLIP's are random.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from naclip.backbone import random_weights_warning
from naclip.io import content_digest
from naclip.preprocess import PIXEL_MEAN, PIXEL_STD

IMAGENET_MEAN = (123.675, 116.28, 103.53)  # on the 0..255 scale, as mmseg configures it
IMAGENET_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class SecondModel:
    """A frozen vision model a head uses beside CLIP: how to build, load, feed and run it.

    `forward(module, images)` takes images (B, 3, H, W) normalised with `mean`/`std` (0..255 scale)
    at the size `input_size(H, W)` gives (default: the window's own) and returns its features: patch
    features (B, D, h, w), or a richer object its heads know (`naclip.vfm.BackboneFeatures`).
    The CLIP-normalised windows are un-normalised with `unnormalise` (mean, std on the 0..255 scale;
    default: the protocol's own). `download(tag)` returns the state dict of a named checkpoint (network
    and cache); None: only files and random weights. `convert(state, module)` maps a checkpoint's state
    dict to the module's layout (None: loaded as is). `dtype` fixes its precision (None: the segmenter's).
    `preprocess(windows)`, when given, makes the model's input from the CLIP-normalised windows itself
    (another round trip than the renormalisation, e.g. through uint8 pixels and PIL).
    """

    name: str
    build: Callable[[], nn.Module]
    forward: Callable[[nn.Module, Tensor], Tensor]
    patch: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    default: str | None = None
    download: Callable[[str], Mapping[str, Tensor]] | None = None
    input_size: Callable[[int, int], tuple[int, int]] | None = None
    unnormalise: tuple[tuple[float, float, float], tuple[float, float, float]] = (PIXEL_MEAN, PIXEL_STD)
    convert: Callable[[Mapping[str, Tensor], nn.Module], Mapping[str, Tensor]] | None = None
    dtype: torch.dtype | None = None
    preprocess: Callable[[Tensor], Tensor] | None = None

    def prepare(self, windows: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """CLIP-normalised windows (B, 3, H, W) renormalised for this model (in float32), cast to `dtype`, then
        resized to its input size (the order of the authors' code, who cast before resizing); with
        `preprocess`, its output cast to `dtype`."""
        if self.preprocess is not None:
            return self.preprocess(windows).to(dtype)
        clip_mean, clip_std, mean, std = (
            torch.tensor(v, device=windows.device, dtype=torch.float32)[:, None, None]
            for v in (*self.unnormalise, self.mean, self.std)
        )
        images = ((windows.float() * clip_std + clip_mean - mean) / std).to(dtype)  # via 0..255
        if self.input_size is not None:
            size = self.input_size(*images.shape[-2:])
            if size != tuple(images.shape[-2:]):
                images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        return images

    def features(self, module: nn.Module, windows: Tensor) -> Any:
        """The features (see `forward`) of CLIP-normalised windows (B, 3, H, W), in the module's precision."""
        return self.forward(module, self.prepare(windows, next(module.parameters()).dtype))


def requested_weights(
    entries: tuple[str, ...], models: tuple[SecondModel, ...], clip_random: bool
) -> dict[str, str | None]:
    """Each model's weights from `NAME=WEIGHTS` entries (`Settings.vfm_pretrained`); ValueError for an unknown NAME."""
    names = [model.name for model in models]
    given: dict[str, str | None] = {}
    for entry in entries:
        name, _, weights = entry.partition("=")
        if name not in names:
            expected = f"one of {', '.join(names)}" if names else "none: this method has no second model"
            raise ValueError(f"vfm_pretrained names model {name!r}; expected {expected}")
        given[name] = None if weights.strip().lower() in ("", "none", "random", "null") else weights
    return {
        model.name: given[model.name] if model.name in given else (None if clip_random else model.default)
        for model in models
    }


def weights_identity(weights: str | None) -> str:
    """What a model's weights are, for provenance: random, a file (its path and content digest), or a tag."""
    if weights is None:
        return "random"
    if os.path.isfile(weights):
        return f"{os.path.abspath(weights)}|{weights_key(weights)}"
    return weights


def weights_key(weights: str | None) -> str:
    """What the caches key a model's weights by: random, a file by its content (wherever it is copied), or a tag."""
    if weights is not None and os.path.isfile(weights):
        return f"sha256={content_digest(weights)}"
    return weights_identity(weights)


def load_second_model(
    model: SecondModel, weights: str | None, device: torch.device, dtype: torch.dtype, seed: int
) -> nn.Module:
    """`model` built and loaded with `weights` (a file, a tag, or None: random with `seed`), frozen, on `device`,
    in `dtype` unless the model fixes its own."""
    state = None if weights is None else _state_dict(model, weights)  # first: a failed download fails fast
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = model.build()
    if state is None:
        random_weights_warning(
            f"second model {model.name!r} has RANDOM weights: every result is meaningless (tests only)"
        )
    else:
        module.load_state_dict(state if model.convert is None else model.convert(state, module))
    return module.eval().requires_grad_(False).to(device=device, dtype=model.dtype or dtype)


def _state_dict(model: SecondModel, weights: str) -> Mapping[str, Tensor]:
    path = Path(weights).expanduser()
    if path.is_file():
        try:
            state: Any = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several types for a damaged or unsafe file
            raise ValueError(
                f"{path}: cannot read the {model.name!r} checkpoint ({error}); expected a state dict"
            ) from None
        for key in ("state_dict", "model", "teacher"):
            if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
                state = state[key]
        return state
    if model.download is None or os.sep in weights:
        raise FileNotFoundError(
            f"weights {weights!r} of second model {model.name!r}: no such file; expected a checkpoint file "
            f"(--vfm-pretrained {model.name}=/path/to/checkpoint) or none for random weights"
        )
    try:
        return model.download(weights)
    except Exception as error:  # offline, unknown tag, damaged download
        raise RuntimeError(
            f"weights {weights!r} of second model {model.name!r} could not be downloaded ({type(error).__name__}: "
            f"{error}). Run once where the network is reachable (the download is cached), or download the "
            f"checkpoint yourself and pass --vfm-pretrained {model.name}=/path/to/checkpoint "
            f"(Segmenter(vfm_pretrained=['{model.name}=/path/to/checkpoint']))"
        ) from None
