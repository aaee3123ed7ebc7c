"""Dense patch features from an open_clip ViT whose last block is replaced at inference time.

The forward pass is split in two so that sweeps reuse work: `run_trunk` runs every block but the
last (it depends only on the image); a head then runs a modified last block on its output. The
public last-block API that heads build on (shapes for a batch of B windows of h x w patches,
T = 1 + h*w tokens, [CLS] first):

- `last_qkv(trunk)`: the last block's per-head q, k, v of `ln_1(trunk.tokens)`, a `QKV` of
  (B, heads, T, head_dim) each, computed once per trunk and kept on it for every setting of a sweep;
- `qkv(x, block)`: the same for any block and tokens (B, N, width);
- `attend(weights, v)`: weights (B, heads, T, T) applied to values, heads merged, out-projected:
  (B, T, width);
- `finish_block(tokens, attended, arch)`: the rest of the block per architecture (residual, FFN);
- `project(x)`: `ln_post`, then `proj`, [CLS] dropped: (B, h*w, embed_dim);
- `last_block(trunk, grid, attention, arch, sigma)`: all of it with an attention variant.
The Gaussian bias is `naclip.attention.neighbourhood_bias`; earlier blocks' tokens and attention
weights come with the trunk when a head's `Taps` ask for them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer
from torch import Tensor, nn

from naclip.attention import QKV, get_attention, neighbourhood_bias
from naclip.registry import Registry

# fn(block, tokens, attended) -> the block's output tokens, where `attended` is the out-projected
# attention of ln_1(tokens) (see `DenseEncoder.attend`).
ArchitectureFn = Callable[[nn.Module, Tensor, Tensor], Tensor]
ARCHITECTURES: Registry[ArchitectureFn] = Registry("architecture")


def register_architecture(name: str) -> Callable[[ArchitectureFn], ArchitectureFn]:
    """Register `fn(block, tokens, attended) -> tokens` for the last block under `name`."""
    return ARCHITECTURES.decorator(name)


@register_architecture("vanilla")
def vanilla_block(block: nn.Module, tokens: Tensor, attended: Tensor) -> Tensor:
    """The block as trained: residual connections and the feed-forward network kept."""
    x = tokens + block.ls_1(attended)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


@register_architecture("reduced")
def reduced_block(block: nn.Module, tokens: Tensor, attended: Tensor) -> Tensor:
    """NACLIP's reduced block: attention only, no residual, no feed-forward network."""
    return block.ls_1(attended)


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
    """The trunk's output for a batch of images, with the taps that were asked for.

    It is also the context of everything computed once from it for all the settings of a sweep
    (`kept`): the last block's projections (`DenseEncoder.last_qkv`), a head's own shared values.
    """

    tokens: Tensor  # (B, 1 + h*w, width) entering the last block
    layers: dict[int, Tensor] = field(default_factory=dict)  # block -> output tokens (B, 1 + h*w, width)
    attention: dict[int, Tensor] = field(default_factory=dict)  # block -> attention weights (B, heads, T, T)
    _kept: dict[Any, Any] = field(default_factory=dict, repr=False)

    def kept(self, key: Any, compute: Callable[[], Any]) -> Any:
        """`compute()` the first time `key` is asked for on this trunk, the same object after that."""
        if key not in self._kept:
            self._kept[key] = compute()
        return self._kept[key]


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

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    @property
    def last(self) -> nn.Module:
        """The last residual block, the one heads replace."""
        return self.visual.transformer.resblocks[-1]

    @property
    def depth(self) -> int:
        """The number of blocks; the trunk runs blocks 0 .. depth - 2."""
        return len(self.visual.transformer.resblocks)

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
        p = self.qkv(block.ln_1(x), block)
        weights = attention_softmax(p.q, p.k)
        x = x + block.ls_1(self.attend(weights, p.v, block))
        return x + block.ls_2(block.mlp(block.ln_2(x))), weights

    def qkv(self, x: Tensor, block: nn.Module | None = None) -> QKV:
        """Per-head q, k, v (B, heads, N, head_dim) of a block's attention (default: the last), tokens (B, N, width)."""
        attn = (block or self.last).attn
        batch, tokens, width = x.shape
        qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)  # (B, N, 3 * width)
        qkv = qkv.reshape(batch, tokens, 3, attn.num_heads, width // attn.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, N, head_dim)
        return QKV(q, k, v)

    def last_qkv(self, trunk: Trunk) -> QKV:
        """The last block's q, k, v of `ln_1(trunk.tokens)`, computed once per trunk for every setting of a sweep."""
        return trunk.kept("last_qkv", lambda: self.qkv(self.last.ln_1(trunk.tokens)))

    def attend(self, weights: Tensor, v: Tensor, block: nn.Module | None = None) -> Tensor:
        """Attention weights (B, heads or 1, N, N) applied to values (B, heads, N, head_dim), heads side by side,
        then the block's (default: the last) out-projection: (B, N, width).

        The product runs in the precision of its operands (a head may attend in float32 in a float16 model)
        and goes into the out-projection in the block's precision."""
        block = block or self.last
        out = weights @ v  # (B, heads, N, head_dim)
        out = out.transpose(1, 2).flatten(2)  # (B, N, width)
        return block.attn.out_proj(out.to(block.attn.out_proj.weight.dtype))

    def finish_block(self, tokens: Tensor, attended: Tensor, arch: str) -> Tensor:
        """The last block's output (B, T, width) from its input `tokens` and their `attend`ed attention."""
        return ARCHITECTURES.get(arch)(self.last, tokens, attended)

    def project(self, x: Tensor, drop_cls: bool = True) -> Tensor:
        """`ln_post`, then the projection to the joint embedding (when the model has one) of tokens (B, T, width);
        (B, T - 1, embed_dim) without [CLS] (first) by default."""
        x = self.visual.ln_post(x)
        if self.visual.proj is not None:
            x = x @ self.visual.proj
        return x[:, 1:] if drop_cls else x

    @torch.no_grad()
    def attention_weights(self, trunk: Trunk, grid: tuple[int, int], attention: str, sigma: float) -> Tensor:
        """A variant's last-block attention weights (B, heads, T, T) on the trunk's tokens."""
        p = self.last_qkv(trunk)
        return get_attention(attention).fn(p, neighbourhood_bias(attention, grid, sigma, p.q))

    @torch.no_grad()
    def last_block(self, trunk: Trunk, grid: tuple[int, int], attention: str, arch: str, sigma: float) -> Tensor:
        """Patch features (B, h*w, embed_dim): the last block with an attention variant and architecture."""
        weights = self.attention_weights(trunk, grid, attention, sigma)
        attended = self.attend(weights, self.last_qkv(trunk).v)
        return self.project(self.finish_block(trunk.tokens, attended, arch))

    def features(self, images: Tensor, attention: str, arch: str, sigma: float) -> Tensor:
        """Patch features (B, h*w, embed_dim) for images (B, 3, H, W)."""
        grid = self.grid(*images.shape[-2:])
        return self.last_block(self.run_trunk(images), grid, attention, arch, sigma)
