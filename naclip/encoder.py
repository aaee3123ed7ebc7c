"""Dense patch features from an open_clip ViT whose last block is replaced at inference time.

The forward pass is split in two so that sweeps reuse work: `trunk` runs every block but the
last (it depends only on the image), `head` runs the modified last block, `ln_post` and `proj`
(it depends on the attention variant, the architecture and sigma).
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer
from torch import Tensor, nn

from naclip.attention import gaussian_bias, get_attention

Attend = Callable[[Tensor], Tensor]
ArchitectureFn = Callable[[nn.Module, Tensor, Attend], Tensor]
ARCHITECTURES: dict[str, ArchitectureFn] = {}


def register_architecture(name: str) -> Callable[[ArchitectureFn], ArchitectureFn]:
    """Register `fn(block, x, attend) -> x` for the last block under `name`."""

    def decorate(fn: ArchitectureFn) -> ArchitectureFn:
        ARCHITECTURES[name] = fn
        return fn

    return decorate


def check_architecture(name: str) -> None:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; expected one of {sorted(ARCHITECTURES)}")


@register_architecture("vanilla")
def vanilla_block(block: nn.Module, x: Tensor, attend: Attend) -> Tensor:
    """The block as trained: residual connections and the feed-forward network kept."""
    x = x + block.ls_1(attend(block.ln_1(x)))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


@register_architecture("reduced")
def reduced_block(block: nn.Module, x: Tensor, attend: Attend) -> Tensor:
    """NACLIP's reduced block: attention only, no residual, no feed-forward network."""
    return block.ls_1(attend(block.ln_1(x)))


def interpolate_positions(positions: Tensor, native: tuple[int, int], grid: tuple[int, int]) -> Tensor:
    """Position embeddings (1 + n, width) resized bicubically from the native patch grid to `grid`.

    Follows the reference implementation: the scale factor is (g + 0.1) / n per side with
    align_corners=False, and the [CLS] embedding is kept as is.
    """
    if tuple(grid) == tuple(native):
        return positions
    width = positions.shape[-1]
    patches = positions[1:].float().reshape(1, native[0], native[1], width).permute(0, 3, 1, 2)
    patches = F.interpolate(
        patches,
        scale_factor=((grid[0] + 0.1) / native[0], (grid[1] + 0.1) / native[1]),
        mode="bicubic",
        align_corners=False,
        recompute_scale_factor=False,
    )
    patches = patches.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], width)
    return torch.cat([positions[:1].float(), patches]).to(positions.dtype)


@dataclass(frozen=True)
class Taps:
    """What a head needs from the trunk besides its output: block indices (0-based) to keep."""

    layers: frozenset[int] = frozenset()  # these blocks' output tokens
    attention: frozenset[int] = frozenset()  # these blocks' attention weights

    def __or__(self, other: Taps) -> Taps:
        return Taps(self.layers | other.layers, self.attention | other.attention)


@dataclass
class Trunk:
    """The trunk's output for a batch of images, with the taps that were asked for."""

    tokens: Tensor  # (B, 1 + h*w, width) entering the last block
    layers: dict[int, Tensor] = field(default_factory=dict)  # block -> output tokens (B, 1 + h*w, width)
    attention: dict[int, Tensor] = field(default_factory=dict)  # block -> attention weights (B, heads, T, T)


def attention_softmax(q: Tensor, k: Tensor) -> Tensor:
    """CLIP's own attention weights softmax(q k^T / sqrt(d)), per head."""
    return ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).softmax(-1)


ATTENTION_PARTS = ("in_proj_weight", "in_proj_bias", "out_proj", "num_heads")
# Extras of open_clip's custom attention blocks that change the maths the last block restates.
ATTENTION_EXTRAS = ("logit_scale", "head_scale", "ln_q", "ln_k", "ln_inner", "bias_k", "bias_v")


def check_last_block(block: nn.Module) -> None:
    """Refuse a last ViT block whose attention NACLIP cannot restate (packed q/k/v, heads, out_proj only)."""
    attn = getattr(block, "attn", None)
    missing = [name for name in ATTENTION_PARTS if not hasattr(attn, name)]
    if missing or attn.in_proj_weight is None:
        raise ValueError(
            f"the last ViT block's attention ({type(attn).__name__}) has no packed q/k/v projection "
            f"(missing {', '.join(missing) or 'in_proj_weight'}); expected a module with in_proj_weight, "
            "in_proj_bias, out_proj and num_heads, such as nn.MultiheadAttention or open_clip's Attention"
        )
    parts = [(attn, name) for name in ATTENTION_EXTRAS] + [(block, "ln_attn")]
    active = [name for owner, name in parts if not isinstance(getattr(owner, name, None), (type(None), nn.Identity))]
    if active:
        raise ValueError(
            f"the last ViT block's attention uses {', '.join(active)}, which NACLIP's last block does not "
            "restate; expected plain scaled dot-product attention (no scaled-cosine, head scale, q/k/inner norm)"
        )


class DenseEncoder:
    """Patch features of an open_clip `VisionTransformer` with a configurable last block."""

    def __init__(self, visual: VisionTransformer):
        check_last_block(visual.transformer.resblocks[-1])
        self.visual = visual
        self.patch_size = visual.conv1.kernel_size
        self.native_grid = tuple(visual.grid_size)
        self._positions = functools.lru_cache(maxsize=16)(self._interpolated_positions)
        self._head_qkv: dict[int, tuple[Tensor, tuple[Tensor, Tensor, Tensor]]] = {}  # see _last_qkv

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """The patch grid of an input of this size (partial patches at the border are dropped)."""
        return height // self.patch_size[0], width // self.patch_size[1]

    def _interpolated_positions(self, grid: tuple[int, int]) -> Tensor:
        return interpolate_positions(self.visual.positional_embedding, self.native_grid, grid).to(self.dtype)

    def trunk(self, images: Tensor) -> Tensor:
        """Tokens entering the last block, (B, 1 + h*w, width), for images (B, 3, H, W)."""
        return self.run_trunk(images).tokens

    @torch.no_grad()
    def run_trunk(self, images: Tensor, taps: Taps = Taps()) -> Trunk:
        """The trunk (every block but the last) on images (B, 3, H, W), keeping what `taps` asks for.

        Blocks without a tap run as open_clip runs them; a block whose attention is tapped is
        restated step by step (same result) so that its attention weights can be kept.
        """
        visual = self.visual
        x = visual.conv1(images.to(self.dtype))  # (B, width, h, w)
        grid = tuple(x.shape[-2:])
        x = x.flatten(2).transpose(1, 2)  # (B, h*w, width)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self._positions(grid)  # (B, 1 + h*w, width)
        x = visual.ln_pre(visual.patch_dropout(x))
        batch_first = getattr(visual.transformer, "batch_first", False)  # older open_clip: blocks take (T, B, D)
        out = Trunk(x)
        for index, block in enumerate(visual.transformer.resblocks[:-1]):
            if index in taps.attention:
                x, out.attention[index] = self._block_with_attention(block, x)
            else:
                x = block(x) if batch_first else block(x.transpose(0, 1)).transpose(0, 1)
            if index in taps.layers:
                out.layers[index] = x
        out.tokens = x
        return out

    def _block_with_attention(self, block: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
        """One trunk block on (B, T, width) tokens, restated; also its attention weights (B, heads, T, T)."""
        check_last_block(block)
        q, k, v = self._qkv(block.ln_1(x), block)
        weights = attention_softmax(q, k)
        attended = block.attn.out_proj((weights @ v).transpose(1, 2).reshape(x.shape))
        x = x + block.ls_1(attended)
        return x + block.ls_2(block.mlp(block.ln_2(x))), weights

    def _qkv(self, x: Tensor, block: nn.Module | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Per-head q, k, v (B, heads, T, head_dim) of a block's attention (default: the last block's)."""
        attn = (block or self.visual.transformer.resblocks[-1]).attn
        batch, tokens, width = x.shape
        qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)
        qkv = qkv.reshape(batch, tokens, 3, attn.num_heads, width // attn.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, tokens, head_dim)
        return q, k, v

    def _last_qkv(self, tokens: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The last block's q, k, v of `x`, computed once per trunk output for all the variants of a sweep.

        Kept while `tokens` (the trunk's output) lives, and reused only for an identical `x`.
        """
        key = id(tokens)
        kept = self._head_qkv.get(key)
        if kept is not None and kept[0].shape == x.shape and torch.equal(kept[0], x):
            return kept[1]
        qkv = self._qkv(x)
        if kept is None:
            weakref.finalize(tokens, self._head_qkv.pop, key, None)
        self._head_qkv[key] = (x, qkv)
        return qkv

    def _omega(self, attention: str, grid: tuple[int, int], sigma: float, like: Tensor) -> Tensor | None:
        if not get_attention(attention).neighbourhood:
            return None
        return gaussian_bias(grid[0], grid[1], float(sigma), like.device, like.dtype)

    @torch.no_grad()
    def attention_weights(self, tokens: Tensor, grid: tuple[int, int], attention: str, sigma: float) -> Tensor:
        """Last-block attention weights (B, heads, T, T) of a variant on trunk tokens."""
        q, k, _ = self._last_qkv(tokens, self.visual.transformer.resblocks[-1].ln_1(tokens))
        return get_attention(attention).fn(q, k, self._omega(attention, grid, sigma, q))

    @torch.no_grad()
    def head(self, tokens: Tensor, grid: tuple[int, int], attention: str, arch: str, sigma: float) -> Tensor:
        """Patch features (B, h*w, embed_dim) from trunk tokens through the modified last block."""
        variant = get_attention(attention)
        check_architecture(arch)
        block = self.visual.transformer.resblocks[-1]

        def attend(x: Tensor) -> Tensor:
            q, k, v = self._last_qkv(tokens, x)
            weights = variant.fn(q, k, self._omega(attention, grid, sigma, q))
            out = (weights @ v).transpose(1, 2).reshape(x.shape)
            return block.attn.out_proj(out)

        x = ARCHITECTURES[arch](block, tokens, attend)
        x = self.visual.ln_post(x)
        if self.visual.proj is not None:
            x = x @ self.visual.proj
        return x[:, 1:]

    def features(self, images: Tensor, attention: str, arch: str, sigma: float) -> Tensor:
        """Patch features (B, h*w, embed_dim) for images (B, 3, H, W)."""
        grid = self.grid(*images.shape[-2:])
        return self.head(self.trunk(images), grid, attention, arch, sigma)
