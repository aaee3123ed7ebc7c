"""The NACLIP segmenter: an image and class names in, a label map and class probabilities out."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from naclip.attention import get_attention
from naclip.backbone import load_clip
from naclip.encoder import DenseEncoder, check_architecture
from naclip.pamr import affinity, propagate
from naclip.preprocess import load_image, prepare
from naclip.sliding import crop_windows, stitch, window_boxes
from naclip.text import ClassSet, QueryCache, parse_classes, read_class_file

# Options that only change the last block or the post-processing: a sweep over them reuses the trunk.
METHOD_KEYS = ("attention", "arch", "sigma", "pamr_steps", "pamr_dilations", "prob_threshold", "logit_scale")


@dataclass
class Prediction:
    labels: np.ndarray  # (H, W) int64 class indices at the original size
    probs: np.ndarray | None  # (C, H, W) float32 class probabilities (synonym max, renormalised)


def resolve_device(device: str | torch.device) -> torch.device:
    """`auto` picks cuda, then mps, then cpu."""
    if str(device) != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def check_variant_keys(overrides: Mapping) -> None:
    """Raise ValueError for a variant that changes more than the last block or the post-processing."""
    unknown = set(overrides) - set(METHOD_KEYS)
    if unknown:
        raise ValueError(
            f"variant keys {sorted(unknown)} cannot vary within a run (they change the shared trunk); "
            f"expected some of {METHOD_KEYS}"
        )


def check_method(method: Mapping) -> None:
    """Raise ValueError for an unusable combination of method options."""
    variant = get_attention(method["attention"])
    check_architecture(method["arch"])
    if variant.neighbourhood and not method["sigma"] > 0:
        raise ValueError(f"attention {variant.name!r} needs sigma > 0, got sigma={method['sigma']}")
    if int(method["pamr_steps"]) < 0:
        raise ValueError(f"pamr_steps must be >= 0, got {method['pamr_steps']}")
    if not method["pamr_dilations"] or any(int(d) < 1 for d in method["pamr_dilations"]):
        raise ValueError(f"pamr_dilations must be positive integers, got {method['pamr_dilations']}")
    if not 0 <= method["prob_threshold"] <= 1:
        raise ValueError(f"prob_threshold must be in [0, 1], got {method['prob_threshold']}")
    if not method["logit_scale"] > 0:
        raise ValueError(f"logit_scale must be > 0, got {method['logit_scale']}")


class Segmenter:
    """Training-free open-vocabulary segmentation with any open_clip ViT.

    `slide_crop=0` segments the whole image at once; otherwise windows of `slide_crop` every
    `slide_stride` pixels, `window_batch` at a time. `seed` fixes random weights (pretrained=None).
    """

    def __init__(
        self,
        model: str = "ViT-B-16",
        pretrained: str | os.PathLike | None = "openai",
        attention: str = "naclip",
        arch: str = "reduced",
        sigma: float = 5.0,
        pamr_steps: int = 10,
        pamr_dilations: Sequence[int] = (8, 16),
        slide_crop: int = 224,
        slide_stride: int = 112,
        prob_threshold: float = 0.0,
        logit_scale: float = 40.0,
        short_side: int = 336,
        long_side: int = 2048,
        device: str | torch.device = "auto",
        dtype: torch.dtype | str | None = None,
        window_batch: int = 16,
        cache_dir: str | None = None,
        seed: int = 0,
    ):
        self.method = dict(
            attention=attention,
            arch=arch,
            sigma=float(sigma),
            pamr_steps=int(pamr_steps),
            pamr_dilations=tuple(int(d) for d in pamr_dilations),
            prob_threshold=float(prob_threshold),
            logit_scale=float(logit_scale),
        )
        check_method(self.method)
        if slide_crop < 0 or (slide_crop > 0 and slide_stride <= 0):
            raise ValueError(f"slide_crop must be >= 0 and slide_stride > 0, got {slide_crop}, {slide_stride}")
        if short_side <= 0 or long_side < short_side:
            raise ValueError(f"need 0 < short_side <= long_side, got {short_side}, {long_side}")
        self.model_name, self.pretrained = model, pretrained
        self.slide_crop, self.slide_stride = int(slide_crop), int(slide_stride)
        self.short_side, self.long_side = int(short_side), int(long_side)
        self.window_batch = max(1, int(window_batch))
        self.device = resolve_device(device)
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        self.dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)

        with torch.random.fork_rng(devices=[]):  # random weights are reproducible across processes
            torch.manual_seed(seed)
            clip, self.tokenizer = load_clip(model, pretrained, self.device, cache_dir)
        self.clip = clip.to(self.dtype)
        self.encoder = DenseEncoder(self.clip.visual)
        self.random_weights = pretrained is None
        self.text_cache = QueryCache(self._weights_key(), directory=Path(cache_dir) if cache_dir else None)
        self.classes: ClassSet | None = None

    def _weights_key(self) -> str | None:
        if self.pretrained is None:
            return None
        if os.path.isfile(self.pretrained):
            stat = os.stat(self.pretrained)
            return f"{self.model_name}|{os.path.abspath(self.pretrained)}|{stat.st_size}|{stat.st_mtime_ns}"
        return f"{self.model_name}|{self.pretrained}"

    @property
    def config(self) -> dict:
        """Every option that shapes a prediction (for provenance)."""
        return dict(
            model=self.model_name,
            pretrained=None if self.pretrained is None else str(self.pretrained),
            **self.method,
            slide_crop=self.slide_crop,
            slide_stride=self.slide_stride,
            short_side=self.short_side,
            long_side=self.long_side,
            device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch."),
        )

    # -- classes ------------------------------------------------------------------------------
    def set_classes(self, classes: Sequence[str] | str | os.PathLike) -> None:
        """Class lines ("name[, synonym...]") as a list, or the path of a class file."""
        if isinstance(classes, (str, os.PathLike)):
            self.classes = read_class_file(classes)
        else:
            self.classes = parse_classes(list(classes))
        queries = self.text_cache.embed(self.clip, self.tokenizer, self.classes.queries)
        self.query_features = queries.to(self.device, self.dtype)
        self.query_class = torch.tensor(self.classes.query_class, device=self.device)

    @property
    def class_names(self) -> list[str]:
        return self._classes().names

    def _classes(self) -> ClassSet:
        if self.classes is None:
            raise RuntimeError("no classes set; call set_classes([...]) or pass --classes first")
        return self.classes

    # -- prediction ---------------------------------------------------------------------------
    def predict(self, image: str | os.PathLike | Image.Image | np.ndarray) -> Prediction:
        """Segment one image (path, PIL image or (H, W, 3) uint8 RGB array)."""
        array = load_image(image)
        return self.predict_prepared(self.prepare(array), array.shape[:2])

    def prepare(self, image: np.ndarray) -> Tensor:
        """The protocol's resize and normalisation with this segmenter's sizes."""
        return prepare(image, self.short_side, self.long_side)

    def predict_prepared(self, tensor: Tensor, size: tuple[int, int]) -> Prediction:
        """Segment a `prepare`d image (3, h, w); `size` is the original (H, W) to predict at."""
        return self.predict_variants(tensor, size, [{}])[0]

    def predict_variants(
        self, tensor: Tensor, size: tuple[int, int], variants: Sequence[Mapping], probs: bool = True
    ) -> list[Prediction]:
        """One prediction per variant (overrides of METHOD_KEYS); the trunk runs once for all.

        `probs=False` returns labels only (probs None), which saves C x H x W floats per variant.
        """
        self._classes()
        methods = [self._method(variant) for variant in variants]
        image = tensor.to(self.device, self.dtype)
        if self.slide_crop > 0:
            boxes = window_boxes(*image.shape[-2:], self.slide_crop, self.slide_stride)
        else:
            boxes = [(0, image.shape[-2], 0, image.shape[-1])]
        tokens = torch.cat(
            [
                self.encoder.trunk(crop_windows(image, boxes[start : start + self.window_batch]))
                for start in range(0, len(boxes), self.window_batch)
            ]
        )
        y1, y2, x1, x2 = boxes[0]
        window = (y2 - y1, x2 - x1)
        guides: dict[tuple[int, ...], Tensor] = {}  # PAMR affinities depend only on the image
        results = []
        for method in methods:
            logits = stitch(
                lambda part, m=method: self._window_logits(tokens[part], window, m),
                boxes,
                tuple(image.shape[-2:]),
                self.window_batch,
            )
            results.append(self._finish(logits, image, tuple(size), method, guides, probs))
        return results

    def _method(self, overrides: Mapping) -> dict:
        check_variant_keys(overrides)
        method = {**self.method, **overrides}
        method["pamr_dilations"] = tuple(int(d) for d in method["pamr_dilations"])
        check_method(method)
        return method

    def _window_logits(self, tokens: Tensor, window: tuple[int, int], method: Mapping) -> Tensor:
        """(n, Q, h, w) cosine similarities of window patches to the queries, upsampled to the window."""
        grid = self.encoder.grid(*window)
        features = self.encoder.head(tokens, grid, method["attention"], method["arch"], method["sigma"])
        work = torch.promote_types(self.dtype, torch.float32)  # score half-precision features in float32
        features = F.normalize(features.to(work), dim=-1)
        logits = features @ self.query_features.to(work).T  # (n, h*w, Q)
        logits = logits.transpose(1, 2).reshape(len(tokens), -1, *grid)
        return F.interpolate(logits, size=window, mode="bilinear", align_corners=False)

    def _finish(
        self, logits: Tensor, image: Tensor, size: tuple[int, int], method: Mapping, guides: dict, keep_probs: bool
    ) -> Prediction:
        """Resize to the original size, PAMR, softmax, synonym max, threshold, renormalise."""
        logits = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)
        if method["pamr_steps"] > 0:
            dilations = method["pamr_dilations"]
            if dilations not in guides:
                guide = F.interpolate(image[None].to(logits.dtype), size=size, mode="bilinear", align_corners=False)
                guides[dilations] = affinity(guide, dilations)
            logits = propagate(logits, guides[dilations], dilations, method["pamr_steps"])
        probs = (logits[0] * method["logit_scale"]).softmax(0)
        num_classes = len(self._classes())
        if num_classes != len(self.query_class):
            index = self.query_class[:, None, None].expand_as(probs)
            probs = probs.new_zeros((num_classes, *size)).scatter_reduce_(0, index, probs, "amax")
        top, labels = probs.max(0)
        labels[top < method["prob_threshold"]] = 0
        labels = labels.cpu().numpy().astype(np.int64)
        if not keep_probs:
            return Prediction(labels, None)
        probs = probs / probs.sum(0, keepdim=True)
        return Prediction(labels, probs.cpu().numpy().astype(np.float32))

    # -- inspection ---------------------------------------------------------------------------
    def patch_attention(
        self,
        image: str | os.PathLike | Image.Image | np.ndarray,
        attention: str | None = None,
        sigma: float | None = None,
    ) -> np.ndarray:
        """Head-averaged last-block attention between patches of the whole prepared image.

        Returns (h*w, h, w): entry [i] is where patch i (row-major) attends, as a map on the grid.
        """
        tensor = self.prepare(load_image(image)).to(self.device, self.dtype)
        grid = self.encoder.grid(*tensor.shape[-2:])
        tokens = self.encoder.trunk(tensor[None])
        attention = attention or self.method["attention"]
        sigma = self.method["sigma"] if sigma is None else sigma
        weights = self.encoder.attention_weights(tokens, grid, attention, sigma)[0].float().mean(0)
        return weights[1:, 1:].reshape(-1, *grid).cpu().numpy()
