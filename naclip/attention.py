"""Attention variants for the last ViT block, and NACLIP's Gaussian neighbourhood bias.

A variant maps a block's per-head projections `QKV` (q, k, v: (B, heads, tokens, head_dim)) to
attention weights (B, heads, tokens, tokens). Adding one is one decorated function::

    @register_attention("kq")
    def key_query(p: QKV, omega):
        return (p.k @ p.q.transpose(-2, -1) * p.q.shape[-1] ** -0.5).softmax(-1)

Token 0 is [CLS]; the patch tokens follow in row-major order. `omega` is the Gaussian bias
(tokens, tokens), passed only to variants registered with ``neighbourhood=True``. `QKV.kk`, `.qq`
and `.qk` are the scaled similarities, computed once per `QKV`: the variants of a sweep get the
same `QKV` of one trunk output (`DenseEncoder.last_qkv`), so they share k k^T and q q^T.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from naclip.registry import Registry


def similarity(a: Tensor, b: Tensor) -> Tensor:
    """Scaled dot products (a / sqrt(d)) b^T: the scale applied to `a` before the product, as open_clip's
    attention does (`(a @ b^T) / sqrt(d)` rounds differently in low precision)."""
    return (a * a.shape[-1] ** -0.5) @ b.transpose(-2, -1)


@dataclass
class QKV:
    """Per-head queries, keys and values of one block's attention, each (B, heads, tokens, head_dim).

    `kk`, `qq` and `qk` are `similarity` of the pair, (B, heads, tokens, tokens), computed on first use
    and kept with this object: read-only.
    """

    q: Tensor
    k: Tensor
    v: Tensor
    _kept: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def _pair(self, name: str) -> Tensor:
        if name not in self._kept:
            self._kept[name] = similarity(getattr(self, name[0]), getattr(self, name[1]))
        return self._kept[name]

    @property
    def kk(self) -> Tensor:
        return self._pair("kk")

    @property
    def qq(self) -> Tensor:
        return self._pair("qq")

    @property
    def qk(self) -> Tensor:
        return self._pair("qk")


AttentionFn = Callable[[QKV, "Tensor | None"], Tensor]


@dataclass(frozen=True)
class AttentionVariant:
    name: str
    fn: AttentionFn
    neighbourhood: bool  # needs the Gaussian bias (and so sigma > 0)


ATTENTIONS: Registry[AttentionVariant] = Registry("attention variant")


def register_attention(name: str, neighbourhood: bool = False) -> Callable[[AttentionFn], AttentionFn]:
    """Register `fn(qkv, omega) -> weights` under `name`."""

    def decorate(fn: AttentionFn) -> AttentionFn:
        ATTENTIONS.register(name, AttentionVariant(name, fn, neighbourhood))
        return fn

    return decorate


def get_attention(name: str) -> AttentionVariant:
    return ATTENTIONS.get(name)


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


def neighbourhood_bias(attention: str, grid: tuple[int, int], sigma: float, like: Tensor) -> Tensor | None:
    """The Gaussian bias (1 + h*w, 1 + h*w) on `like`'s device and dtype if variant `attention` takes one, else None."""
    if not get_attention(attention).neighbourhood:
        return None
    return gaussian_bias(grid[0], grid[1], float(sigma), like.device, like.dtype)


@register_attention("vanilla")
def vanilla(p: QKV, omega: Tensor | None) -> Tensor:
    """CLIP as trained: softmax(q k^T / sqrt(d))."""
    return p.qk.softmax(-1)


@register_attention("kk")
def key_key(p: QKV, omega: Tensor | None) -> Tensor:
    """softmax(k k^T / sqrt(d))."""
    return p.kk.softmax(-1)


@register_attention("qq")
def query_query(p: QKV, omega: Tensor | None) -> Tensor:
    """ClearCLIP's softmax(q q^T / sqrt(d))."""
    return p.qq.softmax(-1)


@register_attention("csa")
def correlative(p: QKV, omega: Tensor | None) -> Tensor:
    """SCLIP's correlative self-attention: softmax(q q^T / sqrt(d)) + softmax(k k^T / sqrt(d))."""
    return p.qq.softmax(-1) + p.kk.softmax(-1)


@register_attention("nonly", neighbourhood=True)
def neighbourhood_only(p: QKV, omega: Tensor | None) -> Tensor:
    """softmax(omega * s): the neighbourhood alone, scaled like real logits.

    s is the mean over heads and token pairs of |q_i| |k_j| / sqrt(d), per image.
    """
    q, k = p.q, p.k
    scale = q.norm(dim=-1).mean(-1) * k.norm(dim=-1).mean(-1)  # (B, heads)
    scale = scale.mean(-1) * q.shape[-1] ** -0.5  # (B,)
    weights = (omega * scale[:, None, None, None]).softmax(-1)
    return weights.expand(q.shape[0], q.shape[1], -1, -1)


@register_attention("vanilla_gauss", neighbourhood=True)
def query_key_neighbourhood(p: QKV, omega: Tensor | None) -> Tensor:
    """softmax(q k^T / sqrt(d) + omega): the Gaussian bias without key-key similarity (an ablation)."""
    return (p.qk + omega).softmax(-1)


@register_attention("naclip", neighbourhood=True)
def naclip(p: QKV, omega: Tensor | None) -> Tensor:
    """NACLIP: softmax(k k^T / sqrt(d) + omega)."""
    return (p.kk + omega).softmax(-1)


@register_attention("identity")
def identity(p: QKV, omega: Tensor | None) -> Tensor:
    """MaskCLIP's value path: each token attends only to itself (weights = I)."""
    q = p.q
    eye = torch.eye(q.shape[-2], device=q.device, dtype=q.dtype)
    return eye.expand(q.shape[0], q.shape[1], -1, -1)
