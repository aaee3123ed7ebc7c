"""Attention variants for the last ViT block, and NACLIP's Gaussian neighbourhood bias.

A variant maps the per-head queries and keys, both (B, heads, tokens, head_dim), to attention
weights (B, heads, tokens, tokens). Adding one is one decorated function::

    @register_attention("kq")
    def key_query(q, k, omega):
        return (k @ q.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(-1)

Token 0 is [CLS]; the patch tokens follow in row-major order. `omega` is the Gaussian bias
(tokens, tokens), passed only to variants registered with ``neighbourhood=True``.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

AttentionFn = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


@dataclass(frozen=True)
class AttentionVariant:
    name: str
    fn: AttentionFn
    neighbourhood: bool  # needs the Gaussian bias (and so sigma > 0)


ATTENTIONS: dict[str, AttentionVariant] = {}


def register_attention(name: str, neighbourhood: bool = False) -> Callable[[AttentionFn], AttentionFn]:
    """Register `fn(q, k, omega) -> weights` under `name`."""

    def decorate(fn: AttentionFn) -> AttentionFn:
        ATTENTIONS[name] = AttentionVariant(name, fn, neighbourhood)
        return fn

    return decorate


def get_attention(name: str) -> AttentionVariant:
    if name not in ATTENTIONS:
        raise ValueError(f"unknown attention variant {name!r}; expected one of {sorted(ATTENTIONS)}")
    return ATTENTIONS[name]


@functools.lru_cache(maxsize=64)
def gaussian_bias(
    height: int, width: int, sigma: float, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> Tensor:
    """omega[i, j] = exp(-|p_i - p_j|^2 / (2 sigma^2)) over an h x w patch grid, with a zero [CLS] row/column.

    Returns (1 + h*w, 1 + h*w). Cached per (grid, sigma, device, dtype): treat it as read-only.
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0 for the Gaussian neighbourhood bias, got {sigma}")
    rows = torch.arange(height, dtype=torch.float64).repeat_interleave(width)
    cols = torch.arange(width, dtype=torch.float64).repeat(height)
    squared = (rows[:, None] - rows[None, :]) ** 2 + (cols[:, None] - cols[None, :]) ** 2
    omega = torch.zeros(height * width + 1, height * width + 1, dtype=torch.float64)
    omega[1:, 1:] = torch.exp(-squared / (2 * sigma**2))
    return omega.to(device=device, dtype=dtype)


def _similarity(a: Tensor, b: Tensor) -> Tensor:
    """Scaled dot products a b^T / sqrt(d)."""
    return (a * a.shape[-1] ** -0.5) @ b.transpose(-2, -1)


_self_similarities: dict[int, Tensor] = {}  # see _self_similarity


def _self_similarity(x: Tensor) -> Tensor:
    """x x^T / sqrt(d), read-only; without autograd kept while `x` lives.

    The variants of a sweep get the same q and k of one trunk output (`DenseEncoder._last_qkv`),
    so k k^T and q q^T are computed once for all their sigmas.
    """
    if torch.is_grad_enabled():
        return _similarity(x, x)
    key = id(x)
    kept = _self_similarities.get(key)
    if kept is None:
        kept = _self_similarities[key] = _similarity(x, x)
        weakref.finalize(x, _self_similarities.pop, key, None)
    return kept


@register_attention("vanilla")
def vanilla(q: Tensor, k: Tensor, omega: Tensor | None) -> Tensor:
    """CLIP as trained: softmax(q k^T / sqrt(d))."""
    return _similarity(q, k).softmax(-1)


@register_attention("kk")
def key_key(q: Tensor, k: Tensor, omega: Tensor | None) -> Tensor:
    """softmax(k k^T / sqrt(d))."""
    return _self_similarity(k).softmax(-1)


@register_attention("qq")
def query_query(q: Tensor, k: Tensor, omega: Tensor | None) -> Tensor:
    """ClearCLIP's softmax(q q^T / sqrt(d))."""
    return _self_similarity(q).softmax(-1)


@register_attention("csa")
def correlative(q: Tensor, k: Tensor, omega: Tensor | None) -> Tensor:
    """SCLIP's correlative self-attention: softmax(q q^T / sqrt(d)) + softmax(k k^T / sqrt(d))."""
    return _self_similarity(q).softmax(-1) + _self_similarity(k).softmax(-1)


@register_attention("nonly", neighbourhood=True)
def neighbourhood_only(q: Tensor, k: Tensor, omega: Tensor | None) -> Tensor:
    """softmax(omega * s): the neighbourhood alone, scaled like real logits.

    s is the mean over heads and token pairs of |q_i| |k_j| / sqrt(d), per image.
    """
    scale = q.norm(dim=-1).mean(-1) * k.norm(dim=-1).mean(-1)  # (B, heads)
    scale = scale.mean(-1) * q.shape[-1] ** -0.5  # (B,)
    weights = (omega * scale[:, None, None, None]).softmax(-1)
    return weights.expand(q.shape[0], q.shape[1], -1, -1)


@register_attention("vanilla_gauss", neighbourhood=True)
def query_key_neighbourhood(q: Tensor, k: Tensor, omega: Tensor | None) -> Tensor:
    """softmax(q k^T / sqrt(d) + omega): the Gaussian bias without key-key similarity (an ablation)."""
    return (_similarity(q, k) + omega).softmax(-1)


@register_attention("naclip", neighbourhood=True)
def naclip(q: Tensor, k: Tensor, omega: Tensor | None) -> Tensor:
    """NACLIP: softmax(k k^T / sqrt(d) + omega)."""
    return (_self_similarity(k) + omega).softmax(-1)


@register_attention("identity")
def identity(q: Tensor, k: Tensor, omega: Tensor | None) -> Tensor:
    """MaskCLIP's value path: each token attends only to itself (weights = I)."""
    eye = torch.eye(q.shape[-2], device=q.device, dtype=q.dtype)
    return eye.expand(q.shape[0], q.shape[1], -1, -1)
