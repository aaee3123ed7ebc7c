"""Dense patch features from an open_clip ViT whose last block is replaced at inference time.

The forward pass is split in two so that sweeps reuse work: `trunk` runs every block but the
last (it depends only on the image), `head` runs the modified last block, `ln_post` and `proj`
(it depends on the attention variant, the architecture and sigma).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

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

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """The patch grid of an input of this size (partial patches at the border are dropped)."""
        return height // self.patch_size[0], width // self.patch_size[1]

    def _interpolated_positions(self, grid: tuple[int, int]) -> Tensor:
        return interpolate_positions(self.visual.positional_embedding, self.native_grid, grid).to(self.dtype)

    @torch.no_grad()
    def trunk(self, images: Tensor) -> Tensor:
        """Tokens entering the last block, (B, 1 + h*w, width), for images (B, 3, H, W)."""
        visual = self.visual
        x = visual.conv1(images.to(self.dtype))
        grid = tuple(x.shape[-2:])
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self._positions(grid)
        x = visual.ln_pre(visual.patch_dropout(x))
        batch_first = getattr(visual.transformer, "batch_first", False)  # older open_clip: blocks take (T, B, D)
        if not batch_first:
            x = x.transpose(0, 1)
        for block in visual.transformer.resblocks[:-1]:
            x = block(x)
        return x if batch_first else x.transpose(0, 1)

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        attn = self.visual.transformer.resblocks[-1].attn
        batch, tokens, width = x.shape
        qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)
        qkv = qkv.reshape(batch, tokens, 3, attn.num_heads, width // attn.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, tokens, head_dim)
        return q, k, v

    def _omega(self, attention: str, grid: tuple[int, int], sigma: float, like: Tensor) -> Tensor | None:
        if not get_attention(attention).neighbourhood:
            return None
        return gaussian_bias(grid[0], grid[1], float(sigma), like.device, like.dtype)

    @torch.no_grad()
    def attention_weights(self, tokens: Tensor, grid: tuple[int, int], attention: str, sigma: float) -> Tensor:
        """Last-block attention weights (B, heads, T, T) of a variant on trunk tokens."""
        q, k, _ = self._qkv(self.visual.transformer.resblocks[-1].ln_1(tokens))
        return get_attention(attention).fn(q, k, self._omega(attention, grid, sigma, q))

    @torch.no_grad()
    def head(self, tokens: Tensor, grid: tuple[int, int], attention: str, arch: str, sigma: float) -> Tensor:
        """Patch features (B, h*w, embed_dim) from trunk tokens through the modified last block."""
        variant = get_attention(attention)
        check_architecture(arch)
        block = self.visual.transformer.resblocks[-1]

        def attend(x: Tensor) -> Tensor:
            q, k, v = self._qkv(x)
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
