"""Heads: how a method turns the trunk's output into patch features.

A head is one decorated function with what it needs declared beside it::

    @register_head("mine", params=MineParams, taps=lambda settings: Taps(attention=frozenset({5})))
    def mine(inputs: HeadInput, settings: Settings) -> Tensor:
        ...  # inputs.trunk.attention[5]: (n, heads, T, T); settings.params: a MineParams
        return features  # (n, h*w, embed_dim) on CLIP's patch grid, or (n, h', w', embed_dim) on a grid of its own

- `params`: the `Params` dataclass of the method's own parameters (flags, variants, provenance);
- `taps`: the earlier blocks' tokens or attention weights it reads (kept only when asked);
- `attention`: optionally, what its last layer applies, for inspection (`Segmenter.patch_attention`,
  the attention-map study): `fn(inputs, settings)` returning (n, heads or 1, T, T) over all tokens
  ([CLS] first) or (n, heads or 1, h*w, h*w) between patches, computed by the function the head uses;
- `models`: second frozen models (`naclip.second_model.SecondModel`, `naclip.vfm`) whose features it reads
  from `inputs.models[name]`: a tuple, or `fn(settings)` giving them when a parameter picks them (only
  those are loaded);
- `refine`: optionally, a step on the stitched logits at the original size, `fn(inputs: RefineInput,
  settings) -> logits` (PEARL's propagation): `inputs.logits` (1, Q, H, W) are the cosine similarities
  of every query, windows stitched and resized bilinearly to the original (H, W), before the logit scale
  and the softmax; `inputs.image` (1, 3, H, W) the prepared (normalised) image resized bilinearly to
  the same size, in the logits' precision (what PAMR is guided by); `inputs.queries` (Q, D) the
  L2-normalised text embeddings. It returns refined logits (1, Q, H, W), a new tensor or its input.
  It runs once per prediction and setting, before PAMR (when `pamr_steps` > 0): the head's own
  refinement is part of what the method predicts, PAMR a shared post-processing of it.
- `whole_image`: the head sees the whole image at once instead of one batch of windows: it gets an
  `ImageInput` (the prepared image, the loaded models, the original image when it declares `original`)
  and returns cosine logits (Q, H, W) at the original size, on whatever grid it computed them (a second
  model's, stitched windows' features); the segmenter then applies the shared post-processing and the
  head's `relabel` (labels and class scores in, labels and class scores out, after the thresholds), if any.
- `scores`: True when the head scores its windows itself and returns logits (n, h*w, Q) against
  `inputs.queries` (queries adjusted per window, terms besides cosines) instead of features.

A head's features lie on CLIP's patch grid, (n, h*w, embed_dim), or on a grid of its own (a second
model's), (n, h', w', embed_dim); either way their scores are upsampled bilinearly to the window.

The default head, ``last_block``, runs the replaced last block (`LastBlockParams`: attention
variant, architecture, sigma) through the encoder's public last-block API (`naclip.encoder`). The
trunk runs once per image for every variant of a run; values a head computes once per trunk for
all of them go through `inputs.trunk.kept`, and once per image for every window batch through
`inputs.image.kept` (`inputs.image.pixels` is the whole working image, before windows).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor, nn

from naclip.attention import ATTENTIONS, get_attention
from naclip.encoder import ARCHITECTURES, DenseEncoder, Taps, Trunk
from naclip.registry import Registry
from naclip.second_model import SecondModel
from naclip.settings import Params, Settings, option

HeadFn = Callable[["HeadInput", Settings], Tensor]
AttentionFn = Callable[["HeadInput", Settings], Tensor]
RefineFn = Callable[["RefineInput", Settings], Tensor]
# relabel(inputs, settings, labels (H, W) int64, scores (C, H, W)) -> (labels, scores), after the thresholds
RelabelFn = Callable[["ImageInput", Settings, Tensor, Tensor], tuple[Tensor, Tensor]]


@dataclass
class WholeImage:
    """The whole working image of one prediction (resized and normalised, before windows), and the values heads
    compute once from it for every window batch and setting (`kept`)."""

    pixels: Tensor  # (1, 3, H, W) in the model's dtype
    _kept: dict[Any, Any] = field(default_factory=dict, repr=False)

    def kept(self, key: Any, compute: Callable[[], Any]) -> Any:
        """`compute()` the first time `key` is asked for on this image, the same object after that."""
        if key not in self._kept:
            self._kept[key] = compute()
        return self._kept[key]


@dataclass
class HeadInput:
    """Everything a head may use for a batch of n windows."""

    encoder: DenseEncoder
    trunk: Trunk  # tokens entering the last block, the declared taps, values kept for the whole sweep
    grid: tuple[int, int]  # (h, w) patch grid of each window
    windows: Tensor  # (n, 3, H, W) the normalised window images the trunk saw (padded if the protocol pads)
    queries: Tensor  # (Q, embed_dim) L2-normalised text embeddings, in the scoring dtype
    models: dict[str, Any] = field(default_factory=dict)  # second model -> its features, e.g. (n, D, h', w')
    image: WholeImage | None = None  # the whole working image the windows are cut from


@dataclass
class RefineInput:
    """What a head's `refine` step gets for one image at its original size (H, W) (see the module)."""

    logits: Tensor  # (1, Q, H, W) cosine similarities, stitched and resized; before the logit scale
    image: Tensor  # (1, 3, H, W) the prepared (normalised) image resized bilinearly, in the logits' dtype
    queries: Tensor  # (Q, embed_dim) L2-normalised text embeddings, in the scoring dtype


@dataclass
class ImageInput:
    """Everything a whole-image head (`register_head(..., whole_image=True)`) may use for one image."""

    encoder: DenseEncoder
    image: Tensor  # (3, h, w) the prepared image (protocol resize, CLIP normalisation), in the model's dtype
    size: tuple[int, int]  # (H, W) the original size: the head returns its logits at this size
    queries: Tensor  # (Q, embed_dim) L2-normalised text embeddings, in the scoring dtype
    models: dict[str, tuple[SecondModel, nn.Module]]  # the loaded second models: the head runs them itself
    original: np.ndarray | None = None  # (H, W, 3) uint8 RGB original image, given to heads that declare `original`
    kept: dict[Any, Any] = field(default_factory=dict)  # values shared by the settings of one prediction (a sweep)


@dataclass(frozen=True)
class Head:
    name: str
    fn: HeadFn
    params: type[Params]
    taps: Callable[[Settings], Taps]
    attention: AttentionFn | None = None  # the last layer's attention weights, for inspection
    models: tuple[SecondModel, ...] | Callable[[Settings], tuple[SecondModel, ...]] = ()
    refine: RefineFn | None = None  # a step on the logits at the original size, before PAMR
    whole_image: bool = False  # fn(ImageInput, settings) -> (Q, H, W) logits at the original size
    original: bool = False  # the head reads the original image file (ImageInput.original)
    relabel: RelabelFn | None = None  # the head's post-processing after the thresholds (whole-image heads)
    scores: bool = False  # fn returns logits (n, h*w, Q) against inputs.queries, not features

    def second_models(self, settings: Settings) -> tuple[SecondModel, ...]:
        """The second models the head reads under `settings`."""
        return tuple(self.models(settings) if callable(self.models) else self.models)


HEADS: Registry[Head] = Registry("head")


def register_head(
    name: str,
    params: type[Params] = Params,
    taps: Callable[[Settings], Taps] = lambda settings: Taps(),
    attention: AttentionFn | None = None,
    models: tuple[SecondModel, ...] | Callable[[Settings], tuple[SecondModel, ...]] = (),
    whole_image: bool = False,
    original: bool = False,
    refine: RefineFn | None = None,
    relabel: RelabelFn | None = None,
    scores: bool = False,
) -> Callable[[HeadFn], HeadFn]:
    """Register `fn(inputs, settings) -> (n, h*w, embed_dim)` features (or (n, h', w', embed_dim) on a grid of
    its own; with `scores`, logits (n, h*w, Q) against `inputs.queries`) under `name`, with its parameters, the
    taps it needs, optionally its last layer's attention weights, its second models and a refinement of the
    logits at the original size (see the module).

    With `whole_image`, `fn(ImageInput, settings)` returns (Q, H, W) logits at the original size instead;
    `original` asks for the original image, `relabel` post-processes its labels and class scores.
    """
    if (original or relabel is not None) and not whole_image:
        raise ValueError(f"head {name!r}: original and relabel are for whole-image heads (whole_image=True)")

    def decorate(fn: HeadFn) -> HeadFn:
        chosen = models if callable(models) else tuple(models)
        HEADS.register(
            name, Head(name, fn, params, taps, attention, chosen, refine, whole_image, original, relabel, scores)
        )
        return fn

    return decorate


def get_head(name: str) -> Head:
    return HEADS.get(name)


def stacked_params(base: type[Params], extra: type[Params]) -> type[Params]:
    """A `Params` dataclass with the fields of `base` and of `extra` (a plug-in's), each class's `check` run.

    Made once per pair, and kept in this module under its name so that settings holding it pickle.
    """
    name = f"{base.__name__}And{extra.__name__}"
    made = getattr(sys.modules[__name__], name, None)
    if made is not None:
        return made

    def check(self: Params) -> None:
        base.check(self)
        extra.check(self)

    doc = f"{base.__name__}'s fields and a plug-in's ({extra.__name__})."
    made = dataclasses.make_dataclass(
        name, [], bases=(base, extra), frozen=True, namespace={"check": check, "__doc__": doc, "__module__": __name__}
    )
    setattr(sys.modules[__name__], name, made)
    return made


def stacked_head(base: Head, plugin: str, extra: type[Params], refine: RefineFn) -> Head:
    """`base` with a plug-in's parameters `extra` and its `refine` step (after `base`'s own, if any), registered
    as ``<base>+<plugin>``: how a refinement such as PEARL's propagation goes on any method."""
    if issubclass(base.params, extra):
        raise ValueError(f"head {base.name!r} already has the parameters of {extra.__name__}")
    first = base.refine

    def both(inputs: RefineInput, settings: Settings) -> Tensor:
        return refine(dataclasses.replace(inputs, logits=first(inputs, settings)), settings)

    name = f"{base.name}+{plugin}"
    stacked = dataclasses.replace(
        base, name=name, params=stacked_params(base.params, extra), refine=refine if first is None else both
    )
    return HEADS.register(name, stacked)


@dataclass(frozen=True)
class LastBlockParams(Params):
    """The replaced last block: its attention variant, its architecture, and the Gaussian bias's sigma."""

    attention: str = option("naclip", "method", "last-block attention variant", choices=lambda: sorted(ATTENTIONS))
    arch: str = option(
        "reduced",
        "method",
        "last-block architecture: reduced drops the residual and FFN",
        choices=lambda: sorted(ARCHITECTURES),
    )
    sigma: float = option(5.0, "method", "std of the Gaussian neighbourhood bias, in patches", lambda v: v >= 0, ">= 0")

    def check(self) -> None:
        if get_attention(self.attention).neighbourhood and not self.sigma > 0:
            raise ValueError(f"attention {self.attention!r} needs sigma > 0, got sigma={self.sigma}")


def last_block_attention(inputs: HeadInput, settings: Settings) -> Tensor:
    """The attention variant's last-block weights (n, heads, T, T) on the trunk's tokens."""
    p = settings.params
    return inputs.encoder.attention_weights(inputs.trunk, inputs.grid, p.attention, p.sigma)


@register_head("last_block", params=LastBlockParams, attention=last_block_attention)
def last_block(inputs: HeadInput, settings: Settings) -> Tensor:
    """The last block with an attention variant and architecture: NACLIP, SCLIP, ClearCLIP, MaskCLIP, CLIP."""
    p = settings.params
    return inputs.encoder.last_block(inputs.trunk, inputs.grid, p.attention, p.arch, p.sigma)
