"""The NACLIP segmenter: an image and class names in, a label map and class probabilities out.

This is the fast path; `naclip.reference` states the same prediction plainly, and the tests hold one to the
other on every method preset.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from naclip.backbone import load_clip
from naclip.benchmarks import check_class_names, get_benchmark
from naclip.encoder import DenseEncoder, Taps
from naclip.heads import Head, HeadInput, ImageInput, RefineInput, WholeImage
from naclip.io import content_digest
from naclip.labels import best_class
from naclip.methods.registry import get_method
from naclip.pamr import affinity, propagate
from naclip.preprocess import check_size, load_image, prepare
from naclip.second_model import load_second_model, requested_weights, weights_identity, weights_key
from naclip.settings import Settings, check_variant
from naclip.sliding import channels_first, crop_windows, stitch, window_boxes
from naclip.text import ClassSet, QueryCache, parse_classes, read_class_file, warn_cut_prompts
from naclip.workspace import Workspace

UPSAMPLE_BYTES = 24 << 20  # upsampled window logits at a time (see Segmenter._window_logits)
SCORE_BYTES = 512 << 20  # query logits of one image held at once when only labels are asked (Segmenter._labels)


@dataclass
class Prediction:
    labels: np.ndarray  # (H, W) int64 class indices at the original size
    probs: np.ndarray | None  # (C, H, W) float32 class scores as the method returns them (see Settings.renormalise)


def resolve_device(device: str | torch.device) -> torch.device:
    """`auto` picks cuda, then mps, then cpu."""
    if str(device) != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _as_text(overrides: dict[str, Any]) -> dict[str, Any]:
    """torch.device / torch.dtype values as the settings spell them."""
    for key in ("device", "dtype"):
        if isinstance(overrides.get(key), (torch.device, torch.dtype)):
            overrides[key] = str(overrides[key]).removeprefix("torch.")
    return overrides


def window_padding(height: int, width: int, multiple: tuple[int, int]) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) zero padding that brings a window to a multiple of (rows, columns), centred:
    the patch (ClearCLIP) or a protocol's own (`Settings.pad_multiple`, ProxyCLIP's 56).

    ClearCLIP's `compute_padsize`: the odd pixel goes right / bottom.
    """
    pad_h, pad_w = -height % multiple[0], -width % multiple[1]
    return pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2


class Segmenter:
    """Training-free open-vocabulary segmentation with any open_clip ViT.

    `Segmenter(method="clearclip")` runs a method with its own default protocol, and keyword
    overrides of any setting of it (`Segmenter(sigma=3, pamr_steps=0)`); `Segmenter(settings)`
    takes ready `Settings` (the method is theirs). `Segmenter.for_benchmark("voc21", method="sclip")`
    applies that method's protocol on that benchmark, class file included. A method's second
    models (`naclip.second_model`) are loaded once here, beside CLIP.
    """

    def __init__(self, settings: Settings | None = None, *, method: str | None = None, **overrides: Any):
        overrides = _as_text(overrides)
        if settings is None:
            settings = get_method(method or "naclip").settings(**overrides)
        else:
            if method is not None and method != settings.method:
                raise ValueError(
                    f"method={method!r} given with settings of method {settings.method!r}; expected one of the two "
                    f"(get_method({method!r}).settings(...) makes settings of {method!r})"
                )
            if overrides:
                settings = settings.replace(**overrides)
        self.settings, self.benchmark = settings, None
        self.protocol, self.class_names_kind = "authors", "synonyms"  # as `for_benchmark` chose them
        self.device = resolve_device(settings.device)
        default = torch.float16 if self.device.type == "cuda" else torch.float32
        self.dtype = getattr(torch, settings.dtype) if settings.dtype else default
        with torch.random.fork_rng(devices=[]):  # random weights are reproducible across processes
            torch.manual_seed(settings.seed)
            clip, self.tokenizer = load_clip(settings.model, settings.pretrained, self.device, settings.cache_dir)
        self.clip = clip.to(self.dtype)
        self.encoder = DenseEncoder(self.clip.visual)
        patch = max(self.encoder.patch_size)
        if 0 < settings.slide_crop < patch and not settings.pad_windows:
            raise ValueError(
                f"slide_crop={settings.slide_crop} is smaller than the {patch}-pixel patch of {settings.model}; "
                f"expected 0 (whole image) or at least {patch}"
            )
        models = self.head(settings).second_models(settings)
        self.second_weights = requested_weights(settings.vfm_pretrained, models, settings.pretrained is None)
        self.models = {  # name -> (spec, frozen module)
            model.name: (
                model,
                load_second_model(model, self.second_weights[model.name], self.device, self.dtype, settings.seed),
            )
            for model in models
        }
        cache_dir = Path(settings.cache_dir) if settings.cache_dir else None
        self.text_cache = QueryCache(self._weights_key(), directory=cache_dir)
        self.classes: ClassSet | None = None
        self._queries: tuple[Tensor, tuple[tuple[int, int], ...]] | None = None

    @classmethod
    def for_benchmark(
        cls,
        benchmark: str | None,
        method: str = "naclip",
        classes: str | os.PathLike | Sequence[str] | None = None,
        protocol: str = "authors",
        class_names: str = "synonyms",
        **overrides: Any,
    ) -> Segmenter:
        """`method` on `benchmark` under `protocol` (its settings and class file there), `overrides` on top.

        `benchmark`: a key of `naclip.benchmarks.BENCHMARKS` (an alias, or an embedded sample's name, takes
        that benchmark's protocol), or None for the method's default protocol. `protocol`: ``authors`` (as the
        method's authors ran it) or ``shared`` (`naclip.benchmarks.SHARED`: the same protocol fields for every
        method). `classes` (class lines or a class file) replaces the class file: the method's own on that
        benchmark under its authors' protocol, else the benchmark's. `class_names`: ``synonyms`` (the class
        lines as they are) or ``plain`` (one name per class, `ClassSet.plain`).
        """
        chosen = get_method(method)
        known = get_benchmark(benchmark) if benchmark is not None else None
        key = known.key if known is not None else None
        segmenter = cls(chosen.settings(key, protocol, **_as_text(overrides)))
        segmenter.benchmark, segmenter.protocol = benchmark, protocol
        if classes is None and known is not None:
            classes = chosen.class_file(key, protocol) or known.class_path
        if classes is not None:
            if check_class_names(class_names) == "plain":
                lines = read_class_file(classes) if isinstance(classes, (str, os.PathLike)) else parse_classes(classes)
                classes = lines.plain(background=known is not None and known.background)
            segmenter.set_classes(classes)
        segmenter.class_names_kind = class_names
        return segmenter

    @property
    def method(self) -> str:
        """The method these settings belong to."""
        return self.settings.method

    @staticmethod
    def head(settings: Settings) -> Head:
        """The head that makes the patch features of `settings`' method."""
        return get_method(settings.method).head_spec

    @property
    def random_weights(self) -> bool:
        """Whether any weights (CLIP's or a second model's) are random: every result is meaningless."""
        return self.settings.random_weights or any(weights is None for weights in self.second_weights.values())

    @property
    def score_dtype(self) -> torch.dtype:
        """What features and queries are scored in: the model's precision, at least float32."""
        return torch.promote_types(self.dtype, torch.float32)

    @property
    def pad_multiple(self) -> tuple[int, int]:
        """What windows are zero-padded to a multiple of (where the protocol pads): `pad_multiple`, else the patch."""
        multiple = self.settings.pad_multiple
        return (multiple, multiple) if multiple else tuple(self.encoder.patch_size)

    @property
    def min_side(self) -> int:
        """The smallest usable side of a resized image: one patch (1 when windows are padded to patches)."""
        return 1 if self.settings.pad_windows else max(self.encoder.patch_size)

    def _weights_key(self) -> str:
        """What the text embeddings depend on: the weights (random ones by the model and seed, a checkpoint file
        by its content), and the precision and device type they ran in."""
        pretrained = self.settings.pretrained
        weights = f"{self.settings.model}|{pretrained}"
        if pretrained is None:
            weights = f"{self.settings.model}|random|seed={self.settings.seed}"
        elif os.path.isfile(pretrained):
            weights = f"{self.settings.model}|sha256={content_digest(pretrained)}"
        second = "".join(f"|{name}={weights_key(w)}" for name, w in self.second_weights.items())
        return f"{weights}{second}|{self.dtype}|{self.device.type}"

    @property
    def config(self) -> dict[str, Any]:
        """Every setting that shapes a prediction, the method's own parameters among them, with the device
        actually used and each second model's weights (provenance)."""
        values = self.settings.to_dict(("method", "backbone", "protocol"))
        return {
            **values,
            "vfm_pretrained": tuple(f"{name}={weights_identity(w)}" for name, w in self.second_weights.items()),
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    # -- classes ------------------------------------------------------------------------------
    def set_classes(self, classes: Sequence[str] | str | os.PathLike) -> None:
        """Class lines ("name[, synonym...]") as a list, or the path of a class file.

        The text embeddings are computed on the first prediction.
        """
        if isinstance(classes, (str, os.PathLike)):
            self.classes, source = read_class_file(classes), str(classes)
        else:
            self.classes, source = parse_classes(list(classes)), "class list"
        warn_cut_prompts(self.classes, self.tokenizer, self.text_cache.templates, source)
        self._queries = None

    @property
    def class_names(self) -> list[str]:
        return self._classes().names

    def _classes(self) -> ClassSet:
        if self.classes is None:
            raise RuntimeError("no classes set; call set_classes([...]) or pass --classes first")
        return self.classes

    def _query_features(self) -> tuple[Tensor, tuple[tuple[int, int], ...]]:
        """(Q, D) query embeddings, embedded on first use, and each class's span of queries."""
        if self._queries is None:
            classes = self._classes()
            features = self.text_cache.embed(self.clip, self.tokenizer, classes.queries).to(self.device, self.dtype)
            self._queries = features, classes.spans
        return self._queries

    # -- prediction ---------------------------------------------------------------------------
    def predict(self, image: str | os.PathLike | Image.Image | np.ndarray, probs: bool = True) -> Prediction:
        """Segment one original-size image (path, PIL image or (H, W, 3) uint8 RGB array) per the protocol.

        `probs=False` returns the labels only, in memory bounded whatever the number of classes.
        """
        array = load_image(image)
        name = str(image) if isinstance(image, (str, os.PathLike)) else "image"
        check_size(name, array.shape[:2], self.settings.short_side, self.settings.long_side, self.min_side)
        return self.predict_variants(self.prepare(array), array.shape[:2], [{}], probs, original=array)[0]

    @property
    def needs_original(self) -> bool:
        """Whether the method reads the original image beside the prepared one (`predict_variants`' `original`)."""
        return self.head(self.settings).original

    def prepare(self, image: np.ndarray) -> Tensor:
        """The protocol's resize and normalisation with this segmenter's sizes."""
        return prepare(image, self.settings.short_side, self.settings.long_side)

    def predict_prepared(self, tensor: Tensor, size: tuple[int, int], original: np.ndarray | None = None) -> Prediction:
        """Segment a `prepare`d image (3, h, w); `size` is the original (H, W) to predict at; `original` the
        original (H, W, 3) uint8 RGB image, for methods that read it (`needs_original`)."""
        return self.predict_variants(tensor, size, [{}], original=original)[0]

    @torch.no_grad()
    def predict_variants(
        self,
        tensor: Tensor,
        size: tuple[int, int],
        variants: Sequence[Mapping[str, Any]],
        probs: bool = True,
        original: np.ndarray | None = None,
    ) -> list[Prediction]:
        """One prediction per variant (overrides of the method settings); the trunk runs once for all.

        `probs=False` returns labels only (probs None), which saves C x H x W floats per variant; the query
        logits are then scored `SCORE_BYTES` at a time (`_labels`), so that large vocabularies fit in memory.
        `original`: the original (H, W, 3) uint8 RGB image, which whole-image heads that declare it read.
        Nothing is recorded for autograd, whatever a head does.
        """
        settings = [self.variant(overrides) for overrides in variants]
        queries, spans = self._query_features()
        queries = queries.to(self.score_dtype)
        image = tensor.to(self.device, self.dtype)
        if any(self.head(setting).whole_image for setting in settings):
            return self._predict_whole(image, tuple(size), settings, queries, spans, probs, original)
        crop, stride = self.settings.slide_crop, self.settings.slide_stride
        if crop > 0:
            boxes = window_boxes(*image.shape[-2:], crop, stride)
        else:
            boxes = [(0, image.shape[-2], 0, image.shape[-1])]
        y1, y2, x1, x2 = boxes[0]
        window = (y2 - y1, x2 - x1)  # every window has this size
        padding = window_padding(*window, self.pad_multiple) if self.settings.pad_windows else (0, 0, 0, 0)
        batch = self.settings.window_batch
        taps = Taps()
        for setting in settings:
            taps = taps | self.head(setting).taps(setting)
        # per batch of windows: (n, 3, h, w) images, the trunk's output, the second models' features
        windows, trunks, features = [], [], []
        for start in range(0, len(boxes), batch):
            part = crop_windows(image, boxes[start : start + batch])  # (n, 3, h, w)
            if any(padding):
                part = F.pad(part, padding)  # zeros in normalised space: the mean colour
            windows.append(part)
            trunks.append(self.encoder.run_trunk(part, taps))
            features.append({name: spec.features(module, part) for name, (spec, module) in self.models.items()})
        whole = WholeImage(image[None])  # what heads compute once per image
        guides: dict[object, Tensor] = {}  # what depends only on the image (see _guide), shared by the settings
        workspace = Workspace()  # large buffers, reused by each setting in turn
        grid = self.encoder.grid(*windows[0].shape[-2:])
        pixels = max(size[0] * size[1], image.shape[-2] * image.shape[-1])
        chunk = max(1, SCORE_BYTES // (pixels * queries.element_size()))  # queries whose logits fit SCORE_BYTES
        results = []
        for setting in settings:
            head = self.head(setting)
            unit = []  # per batch of windows: (n, h*w, D) unit patch features (or the head's own scores), their grid
            for trunk, part, models in zip(trunks, windows, features):
                inputs = HeadInput(self.encoder, trunk, grid, part, queries, models, whole)
                found, found_grid = head_features(head, inputs, setting)
                found = found.to(self.score_dtype)
                unit.append((found if head.scores else F.normalize(found, dim=-1), found_grid, head.scores))

            def logits(chosen: Tensor, unit: list[tuple[Tensor, tuple[int, int], bool]] = unit) -> Tensor:
                """(Q, h, w) window-averaged logits of the `chosen` queries (Q, D) on the prepared image."""
                return stitch(
                    lambda span: self._window_logits(*unit[span.start // batch], chosen, window, padding, workspace),
                    boxes,
                    tuple(image.shape[-2:]),
                    batch,
                    workspace,
                )

            if probs or setting.area_threshold > 0 or head.refine or head.scores or chunk >= len(queries):
                results.append(
                    self._finish(
                        logits(queries), tensor, tuple(size), setting, queries, spans, guides, workspace, probs
                    )
                )
            else:  # a head's refinement or own scores see every query at once: no chunks then
                results.append(
                    self._labels(logits, queries, chunk, tensor, tuple(size), setting, spans, guides, workspace)
                )
        return results

    def _predict_whole(
        self,
        image: Tensor,
        size: tuple[int, int],
        settings: list[Settings],
        queries: Tensor,
        spans: tuple[tuple[int, int], ...],
        probs: bool,
        original: np.ndarray | None,
    ) -> list[Prediction]:
        """`predict_variants` for whole-image heads: each head's logits at the original size, then `_finish` with
        the head's refinement. Values a head computes once per image are shared through `ImageInput.kept`."""
        heads = [self.head(setting) for setting in settings]
        if not all(head.whole_image for head in heads):
            raise ValueError(
                f"variants of methods {sorted({s.method for s in settings})} mix whole-image and window heads; "
                "expected variants of one kind in one call"
            )
        if original is None and any(head.original for head in heads):
            raise ValueError(
                f"method {self.method!r} reads the original image: pass it (predict(image) does; "
                "predict_variants(..., original=array) with the (H, W, 3) uint8 RGB image)"
            )
        if original is not None and tuple(original.shape[:2]) != size:
            raise ValueError(f"the original image is {original.shape[:2]}, expected the size {size} to predict at")
        kept: dict[Any, Any] = {}
        results = []
        for setting, head in zip(settings, heads):
            inputs = ImageInput(self.encoder, image, size, queries, self.models, original, kept)
            logits = head.fn(inputs, setting).to(self.score_dtype)  # (Q, H, W)
            relabel = None if head.relabel is None else functools.partial(head.relabel, inputs, setting)
            results.append(self._finish(logits, image, size, setting, queries, spans, {}, Workspace(), probs, relabel))
        return results

    def variant(self, overrides: Mapping[str, Any]) -> Settings:
        """These settings with method-group `overrides` (anything else would change the shared trunk).

        `method` in `overrides` switches to that method's own parameters (its preset's; the other
        overrides apply on top) on this segmenter's trunk: its second models must be this one's.
        """
        check_variant(overrides, self.settings.method)
        settings = self.settings.replace(**overrides)
        missing = [model.name for model in self.head(settings).second_models(settings) if model.name not in self.models]
        if missing:
            raise ValueError(
                f"a variant of method {settings.method!r} needs second models {missing} that this segmenter (method "
                f"{self.settings.method!r}) did not load; expected a segmenter of {settings.method!r}"
            )
        return settings

    def _window_logits(
        self,
        features: Tensor,
        grid: tuple[int, int],
        scores: bool,
        queries: Tensor,
        window: tuple[int, int],
        padding: tuple[int, ...],
        workspace: Workspace,
    ) -> Iterator[Tensor]:
        """Per window of unit patch `features` (n, h*w, D) on `grid` (CLIP's or the head's own), (Q, h, w) cosine
        similarities of its patches to the `queries` (Q, D), or the head's own `scores` (n, h*w, Q) for all queries,
        upsampled to the window (cut back to it where the protocol pads).

        Upsampled a few windows at a time (the same values as all at once) into one buffer of
        `workspace`; each window is read before the next chunk overwrites it.
        """
        left, right, top, bottom = padding
        padded = (window[0] + top + bottom, window[1] + left + right)
        logits = features if scores else features @ queries.T  # (n, h*w, Q)
        logits = logits.transpose(1, 2).reshape(len(features), -1, *grid)  # (n, Q, h, w), stored channels-last
        per_window = logits.shape[1] * padded[0] * padded[1] * logits.element_size()
        chunk = max(1, min(UPSAMPLE_BYTES // per_window, self.settings.window_batch))
        for part in logits.split(chunk):
            upsampled = workspace.resized("upsampled windows", part, padded, rows=chunk)  # (k, Q, H, W)
            yield from upsampled[..., top : top + window[0], left : left + window[1]]

    def _refined(
        self,
        logits: Tensor,
        image: Tensor,
        size: tuple[int, int],
        settings: Settings,
        guides: dict,
        workspace: Workspace,
        queries: Tensor | None = None,
    ) -> Tensor:
        """(Q, h, w) logits (stored in any layout) resized to the original `size`, refined by the head's own step
        (given all the `queries`) and by PAMR: (Q, H, W) channels-first, in a buffer of `workspace` that this
        call's caller owns."""
        logits = logits[None]  # (1, Q, h, w)
        if tuple(logits.shape[-2:]) != size:  # bilinear to the same size is the identity
            logits = workspace.resized("resized logits", self._channels_first(logits, workspace), size)
        refine = self.head(settings).refine
        if refine is not None:
            guide = self._guide(image, size, logits, guides)
            logits = refine(RefineInput(self._channels_first(logits, workspace), guide, queries), settings)
        if settings.pamr_steps > 0:
            dilations = settings.pamr_dilations
            if dilations not in guides:
                guides[dilations] = affinity(self._guide(image, size, logits, guides), dilations)
            logits = propagate(logits, guides[dilations], dilations, settings.pamr_steps, workspace)
        return self._channels_first(logits, workspace)[0]

    def _labels(
        self,
        logits: Callable[[Tensor], Tensor],
        queries: Tensor,
        chunk: int,
        image: Tensor,
        size: tuple[int, int],
        settings: Settings,
        spans: tuple[tuple[int, int], ...],
        guides: dict,
        workspace: Workspace,
    ) -> Prediction:
        """The labels of `_finish` (no area threshold, no scores kept), `chunk` of the (Q, D) `queries` at a time.

        `logits(part)` gives the (q, h, w) logits of a slice of the queries. Each chunk is resized and refined
        (PAMR acts on each query alone) and reduced to its best query and its log-sum-exp, so that the buffers
        hold `chunk` queries, not all of them: the best query's class is the label (classes score their best
        query), its probability exp(best - logsumexp) meets the threshold. Large vocabularies (847 classes at
        2048 x 512) stay within memory this way.
        """
        owner = torch.tensor([c for c, (a, b) in enumerate(spans) for _ in range(a, b)], device=queries.device)
        best = winner = total = None
        for start in range(0, len(queries), chunk):
            part = self._refined(logits(queries[start : start + chunk]), image, size, settings, guides, workspace)
            part = part.mul_(settings.logit_scale)  # (q, H, W)
            value, index = part.max(0)
            spread = part.logsumexp(0)
            if best is None:
                best, winner, total = value, index, spread
                continue
            winner = torch.where(value > best, index + start, winner)  # ties keep the earlier query, as argmax
            best, total = torch.maximum(best, value), torch.logaddexp(total, spread)
        top = (best - total).exp()  # the best query's probability
        if torch.isnan(top).any():  # a numerical failure (an overflowing logit scale, a head's own): never class 0
            raise FloatingPointError("the class scores hold NaN")
        labels = owner[winner]
        labels[top < settings.prob_threshold] = 0
        return Prediction(labels.cpu().numpy().astype(np.int64), None)

    def _finish(
        self,
        logits: Tensor,
        image: Tensor,
        size: tuple[int, int],
        settings: Settings,
        queries: Tensor,
        spans: tuple[tuple[int, int], ...],
        guides: dict,
        workspace: Workspace,
        keep_probs: bool,
        relabel: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
    ) -> Prediction:
        """Resize to the original size, the head's refinement, PAMR, softmax, synonym max, area and probability
        thresholds, then a
        whole-image head's `relabel` of the labels and class scores.

        `logits` (Q, h, w) may be stored (h, w, Q), as `stitch` leaves them: PAMR reads any layout;
        the resize, the refinement and the softmax get them channels-first, as the authors' code has them.
        """
        logits = self._refined(logits, image, size, settings, guides, workspace, queries)
        logits = logits.mul_(settings.logit_scale)  # (Q, H, W), this call's own
        probs = torch.softmax(logits, 0, out=logits)  # in place: the same values, twice as fast as into another buffer
        scores = None  # class scores (C, H, W), when they are needed beyond the labels
        if len(spans) != len(probs) and (keep_probs or settings.area_threshold > 0):
            scores = workspace.empty("class probabilities", (len(spans), *size), probs)
        top, labels = best_class(probs, spans, scores)  # each class scores its best query (synonyms)
        probs = probs if scores is None else scores
        if settings.area_threshold > 0:
            probs = drop_small_classes(probs, labels, settings.area_threshold)
            top, labels = best_class(probs)
        if torch.isnan(top).any():  # a numerical failure (an overflowing logit scale, a head's own): never class 0
            raise FloatingPointError("the class scores hold NaN")
        labels[top < settings.prob_threshold] = 0
        if relabel is not None:
            labels, probs = relabel(labels, probs)
        labels = labels.cpu().numpy().astype(np.int64)
        if not keep_probs:
            return Prediction(labels, None)
        if settings.renormalise:
            probs = probs / probs.sum(0, keepdim=True)
        return Prediction(labels, probs.cpu().numpy().astype(np.float32))

    @staticmethod
    def _guide(image: Tensor, size: tuple[int, int], logits: Tensor, guides: dict) -> Tensor:
        """The prepared image (3, h, w) resized bilinearly to `size` in the logits' precision, (1, 3, H, W): what
        PAMR and a head's refinement are guided by (the full-precision image, as the authors'); made once per
        image, kept in `guides`."""
        if "image" not in guides:
            guide = image[None].to(logits.device, logits.dtype)
            guides["image"] = F.interpolate(guide, size=size, mode="bilinear", align_corners=False)
        return guides["image"]

    @staticmethod
    def _channels_first(logits: Tensor, workspace: Workspace) -> Tensor:
        """`logits` (1, Q, H, W) as they are when contiguous, else a contiguous copy in `workspace`."""
        if logits.is_contiguous():
            return logits
        return channels_first(logits[0], workspace.empty("channels first", logits.shape[1:], logits))[None]

    # -- inspection ---------------------------------------------------------------------------
    def patch_attention(
        self,
        image: str | os.PathLike | Image.Image | np.ndarray,
        attention: str | None = None,
        sigma: float | None = None,
        **overrides: Any,
    ) -> np.ndarray:
        """Head-averaged last-layer attention between patches of the whole prepared image.

        The method settings are this segmenter's with `attention`, `sigma` and any other method-group
        `overrides` (as a variant); the attention is what their head says it applies (`register_head`'s
        `attention`): the variant's for the default head, ResCLIP's with RCS and SFR mixed in (SFR scores
        the first pass against this segmenter's classes), SC-CLIP's calibrated and post-aggregated one.
        Returns (h*w, h, w): entry [i] is where patch i (row-major) attends, as a map on the grid.
        """
        given = {key: value for key, value in (("attention", attention), ("sigma", sigma)) if value is not None}
        settings = self.variant({**overrides, **given})
        head = self.head(settings)
        if head.attention is None:
            raise ValueError(
                f"head {head.name!r} (method {settings.method!r}) registers no attention function to inspect"
            )
        tensor = self.prepare(load_image(image)).to(self.device, self.dtype)[None]  # (1, 3, H, W)
        grid = self.encoder.grid(*tensor.shape[-2:])
        trunk = self.encoder.run_trunk(tensor, head.taps(settings))
        if self.classes is not None:
            queries = self._query_features()[0].to(self.score_dtype)
        else:
            queries = torch.zeros(0, self.clip.visual.output_dim, device=self.device, dtype=self.score_dtype)
        models = {name: spec.features(module, tensor) for name, (spec, module) in self.models.items()}
        inputs = HeadInput(self.encoder, trunk, grid, tensor, queries, models, WholeImage(tensor))
        weights = head.attention(inputs, settings)[0]
        weights = weights.float().mean(0)
        if weights.shape[-1] == 1 + grid[0] * grid[1]:
            weights = weights[1:, 1:]  # [CLS] first: patches only
        return weights.reshape(-1, *grid).cpu().numpy()


def head_features(head: Head, inputs: HeadInput, settings: Settings) -> tuple[Tensor, tuple[int, int]]:
    """The head's patch features (n, h*w, D) (a `scores` head's logits (n, h*w, Q)) and their grid (h, w):
    CLIP's, or the head's own when it returns (n, h', w', D) (see `naclip.heads`)."""
    features = head.fn(inputs, settings)
    if features.dim() == 4:  # (n, h', w', D) on a grid of its own
        return features.flatten(1, 2), tuple(features.shape[1:3])
    return features, inputs.grid


def drop_small_classes(probs: Tensor, labels: Tensor, share: float) -> Tensor:
    """SCLIP's area threshold on (C, H, W) scores, class 0 being the background; `labels` their argmax.

    A foreground class that is the argmax of at most `share` of the foreground-argmax pixels gets
    its scores zeroed (not renormalised), so its pixels go to their next-best kept class.
    """
    counts = torch.bincount(labels.flatten(), minlength=len(probs))[1:]  # (C - 1,) pixels won per foreground class
    keep = counts > share * counts.sum()
    probs = probs.clone()
    probs[1:] *= keep[:, None, None].to(probs.dtype)
    return probs
