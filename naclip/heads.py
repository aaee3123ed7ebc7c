"""Heads: how a method turns the trunk's output into patch features.

The default head, ``last_block``, runs the replaced last block (`Settings.attention`, `.arch`,
`.sigma`) on the trunk's tokens. A method that needs more (earlier blocks' tokens or attention
weights, several passes, the text queries or the window images) registers its own head::

    @register_head("mine", taps=lambda settings: Taps(attention=frozenset({5, 6})))
    def mine(inputs: HeadInput, settings: Settings) -> Tensor:
        ...  # inputs.trunk.attention[5]: (n, heads, T, T)
        return features  # (n, h*w, embed_dim)

A head may also say what its last-layer attention is, for inspection (`Segmenter.patch_attention`,
the attention-map study): `register_head(name, taps=..., attention=fn)` with `fn(inputs, settings)`
returning the weights that mix the last layer's values, (n, heads or 1, T, T) over all tokens
([CLS] first) or (n, heads or 1, h*w, h*w) between patches. It should share its computation with
the head (`naclip/methods/resclip.py`, `scclip.py`).

The trunk runs once per image for every variant of a run; it keeps the union of the taps that
the variants' heads declare, and nothing when they declare none.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from naclip.encoder import DenseEncoder, Taps, Trunk
from naclip.settings import Settings

HeadFn = Callable[["HeadInput", Settings], Tensor]
AttentionFn = Callable[["HeadInput", Settings], Tensor]


@dataclass
class HeadInput:
    """Everything a head may use for a batch of n windows."""

    encoder: DenseEncoder
    trunk: Trunk  # tokens entering the last block, and the declared taps
    grid: tuple[int, int]  # (h, w) patch grid of each window
    windows: Tensor  # (n, 3, H, W) the normalised window images the trunk saw (padded if the protocol pads)
    queries: Tensor  # (Q, embed_dim) L2-normalised text embeddings, in the scoring dtype


@dataclass(frozen=True)
class Head:
    name: str
    fn: HeadFn
    taps: Callable[[Settings], Taps]
    attention: AttentionFn | None = None  # the last layer's attention weights, for inspection


HEADS: dict[str, Head] = {}


def register_head(
    name: str, taps: Callable[[Settings], Taps] = lambda settings: Taps(), attention: AttentionFn | None = None
) -> Callable[[HeadFn], HeadFn]:
    """Register `fn(inputs, settings) -> (n, h*w, embed_dim)` features under `name`, with the taps it needs
    and, optionally, `attention(inputs, settings)`: its last layer's attention weights (see the module)."""

    def decorate(fn: HeadFn) -> HeadFn:
        HEADS[name] = Head(name, fn, taps, attention)
        return fn

    return decorate


def get_head(name: str) -> Head:
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; expected one of {sorted(HEADS)}")
    return HEADS[name]


def last_block_attention(inputs: HeadInput, settings: Settings) -> Tensor:
    """The attention variant's last-block weights (n, heads, T, T) on the trunk's tokens."""
    return inputs.encoder.attention_weights(inputs.trunk.tokens, inputs.grid, settings.attention, settings.sigma)


@register_head("last_block", attention=last_block_attention)
def last_block(inputs: HeadInput, settings: Settings) -> Tensor:
    """The last block with an attention variant and architecture: NACLIP, SCLIP, ClearCLIP, MaskCLIP, CLIP."""
    return inputs.encoder.head(inputs.trunk.tokens, inputs.grid, settings.attention, settings.arch, settings.sigma)
