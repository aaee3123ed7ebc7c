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

A head's features lie on CLIP's patch grid, (n, h*w, embed_dim), or on a grid of its own (a second
model's), (n, h', w', embed_dim); either way their scores are upsampled bilinearly to the window.

The default head, ``last_block``, runs the replaced last block (`LastBlockParams`: attention
variant, architecture, sigma) through the encoder's public last-block API (`naclip.encoder`). The
trunk runs once per image for every variant of a run; values a head computes once per trunk for
all of them go through `inputs.trunk.kept`.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from naclip.attention import ATTENTIONS, get_attention
from naclip.encoder import ARCHITECTURES, DenseEncoder, Taps, Trunk
from naclip.registry import Registry
from naclip.second_model import SecondModel
from naclip.settings import Params, Settings, option

HeadFn = Callable[["HeadInput", Settings], Tensor]
AttentionFn = Callable[["HeadInput", Settings], Tensor]
RefineFn = Callable[["RefineInput", Settings], Tensor]


@dataclass
class HeadInput:
    """Everything a head may use for a batch of n windows."""

    encoder: DenseEncoder
    trunk: Trunk  # tokens entering the last block, the declared taps, values kept for the whole sweep
    grid: tuple[int, int]  # (h, w) patch grid of each window
    windows: Tensor  # (n, 3, H, W) the normalised window images the trunk saw (padded if the protocol pads)
    queries: Tensor  # (Q, embed_dim) L2-normalised text embeddings, in the scoring dtype
    models: dict[str, Any] = field(default_factory=dict)  # second model -> its features, e.g. (n, D, h', w')


@dataclass
class RefineInput:
    """What a head's `refine` step gets for one image at its original size (H, W) (see the module)."""

    logits: Tensor  # (1, Q, H, W) cosine similarities, stitched and resized; before the logit scale
    image: Tensor  # (1, 3, H, W) the prepared (normalised) image resized bilinearly, in the logits' dtype
    queries: Tensor  # (Q, embed_dim) L2-normalised text embeddings, in the scoring dtype


@dataclass(frozen=True)
class Head:
    name: str
    fn: HeadFn
    params: type[Params]
    taps: Callable[[Settings], Taps]
    attention: AttentionFn | None = None  # the last layer's attention weights, for inspection
    models: tuple[SecondModel, ...] | Callable[[Settings], tuple[SecondModel, ...]] = ()
    refine: RefineFn | None = None  # a step on the logits at the original size, before PAMR

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
    refine: RefineFn | None = None,
) -> Callable[[HeadFn], HeadFn]:
    """Register `fn(inputs, settings) -> (n, h*w, embed_dim)` features (or (n, h', w', embed_dim) on a grid of
    its own) under `name`, with its parameters, the taps it needs, optionally its last layer's attention weights,
    its second models and a refinement of the logits at the original size (see the module)."""

    def decorate(fn: HeadFn) -> HeadFn:
        chosen = models if callable(models) else tuple(models)
        HEADS.register(name, Head(name, fn, params, taps, attention, chosen, refine))
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
