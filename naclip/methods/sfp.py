"""SFP (ICCV 2025): outlier tokens found from the [CLS] attention and repaired, SC-CLIP's calibrated last
block with a three-way attention and a value-only fusion pass.

The head, as the authors' `VisionTransformer.forward` (github:Kimsure/SFP@2804f5b, `SFP_ICCV/clip/model.py:
242-356`) computes it from the trunk per window: outlier patches of the last trunk block's attention
(`pm='SOM'`, `:271-287`), repaired by their neighbours' mean (zero where none is left, `:416-441`); the
repaired tokens aggregated by block 8's (repaired, thresholded) patch similarity; the last block reduced to
the mean of the k-k, q-q and similarity attentions, plus 0.3 x [CLS], aggregated by block 3's similarity;
the sum of blocks 3..9's tokens through the similarity attention alone, added. What is reproduced as their
code computes it (the zero fill and its NaN, the outlier placement on non-square grids, ...):
docs/methods/sfp.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from naclip.encoder import DenseEncoder, Taps
from naclip.heads import HeadInput, register_head
from naclip.methods.registry import Method, Protocol, register_method
from naclip.methods.scclip import aggregation, authors_positions, mean_interpolation, mid_attention, neighbour_sum
from naclip.settings import Params, Settings, option, positive

OUTLIER_ORIGIN = "SFP places outlier patch i at (i // rows, i % rows) (SFP_ICCV/clip/model.py:283)"


@dataclass(frozen=True)
class SfpParams(Params):
    """SFP's own parameters; the layer indices are ViT-B/16's (`clip/model.py:229-230,264,269,318-333`)."""

    sfp_outliers: int = option(
        10, "method", "SFP: most patches flagged as outliers per window (the top [CLS]-attended ones)", positive, "> 0"
    )
    sfp_outlier_layer: int = option(
        10,
        "method",
        "SFP: trunk block (0-based) whose attention finds the outliers (the authors': the last trunk block)",
        lambda v: v >= 0,
        ">= 0",
    )
    sfp_res_scale: float = option(
        5.0,
        "method",
        "SFP: the [CLS]-to-patch attention is scaled by sfp_res_cls x this before it is compared with each "
        "patch's attention to itself",
        positive,
        "> 0",
    )
    sfp_pre_layer: int = option(
        8,
        "method",
        "SFP: trunk block (0-based) whose repaired patch similarity aggregates the tokens and guides the attention",
        lambda v: v >= 0,
        ">= 0",
    )
    sfp_post_layer: int = option(
        3,
        "method",
        "SFP: trunk block (0-based) whose patch similarity aggregates the last block's output",
        lambda v: v >= 0,
        ">= 0",
    )
    sfp_fusion_layers: tuple[int, ...] = option(
        (3, 4, 5, 6, 7, 8, 9),
        "method",
        "SFP: trunk blocks (0-based) whose tokens are summed and passed through the similarity attention",
        lambda v: len(v) > 0 and min(v) >= 0,
        "block indices >= 0",
    )
    sfp_beta: float = option(
        0.4,
        "method",
        "SFP: patch similarities below this are set to 0 (aggregations and the similarity attention)",
        lambda v: -1 <= v <= 1,
        "in [-1, 1]",
    )
    sfp_res_cls: float = option(
        0.3,
        "method",
        "SFP: weight of the [CLS] token added to every patch after the last block",
        lambda v: v >= 0,
        ">= 0",
    )
    sfp_fix_repair: bool = option(
        False,
        "method",
        "SFP: keep an outlier none of whose 8 neighbours is unflagged; false fills it with zeros as the authors' "
        "code does, which makes the window's scores NaN (an error)",
    )
    sfp_fix_positions: bool = option(
        False,
        "method",
        "SFP: put outlier patches at their own (row, column); false keeps the authors' (i // rows, i % rows), "
        "the same on square patch grids",
    )


def som_outliers(attention: Tensor, count: int, cls_scale: float) -> Tensor:
    """(n, N) bool: the `count` patches with the highest scaled [CLS] attention among those whose scaled [CLS]
    attention exceeds their attention to themselves, from one block's per-head weights (n, heads, T, T).

    `pm='SOM'` (`clip/model.py:271-282`) after the in-place scaling of `P[:, :, 0, 1:]` by res_cls x res_scale
    (`:264`), on a copy: the scaling changes nothing else their head reads.
    """
    scaled = attention.clone()
    scaled[:, :, 0, 1:] *= cls_scale
    mean = scaled.mean(1)  # (n, T, T) over heads
    to_patch = mean[:, 0, 1:]  # (n, N)
    to_self = mean[:, 1:, 1:].diagonal(dim1=-2, dim2=-1)  # (n, N)
    candidates = to_patch.masked_fill(~(to_patch > to_self), float("-inf"))
    values, index = candidates.topk(min(count, candidates.shape[-1]), dim=-1)
    outliers = torch.zeros_like(to_patch, dtype=torch.bool)
    return outliers.scatter_(1, index, values > float("-inf"))


def zero_fill_interpolation(tokens: Tensor, outliers: Tensor, grid: tuple[int, int]) -> Tensor:
    """Patch tokens (n, N, D) with each flagged one replaced by the mean of its unflagged 3 x 3 neighbours,
    zeros where it has none (`mean_interpolation`, clip/model.py:416-441: the count 0 becomes 1)."""
    n, count, dim = tokens.shape
    keep = (~outliers).to(tokens.dtype).view(n, *grid, 1)  # (n, h, w, 1)
    sums = neighbour_sum(tokens.reshape(n, *grid, dim) * keep).reshape(n, count, dim)
    counts = neighbour_sum(keep).reshape(n, count, 1)  # unflagged neighbours
    return torch.where(outliers[..., None], sums / counts.clamp_min(1), tokens)


def cosine(tokens: Tensor) -> Tensor:
    """(n, N, N) cosine similarities of the tokens (n, N, D), each divided by its norm as the authors do: a
    zero token (a repaired outlier with no unflagged neighbour) gives NaN (`:322-324`)."""
    unit = tokens / tokens.norm(dim=-1, keepdim=True)
    return unit @ unit.transpose(1, 2)


def threshold(similarities: Tensor, beta: float) -> Tensor:
    """Similarities below beta set to 0 (NaN kept, as `sim[sim < 0.4] = 0` keeps it)."""
    return similarities.masked_fill(similarities < beta, 0.0)


def three_way_weights(q: Tensor, k: Tensor, mid: Tensor) -> Tensor:
    """(n, heads, N, N) (softmax(k k^T / sqrt d) + softmax(q q^T / sqrt d) + mid) / 3 from per-head q, k
    (n, heads, N, head_dim) and the similarity attention mid (n, 1, N, N) (`custom_attn`, `:358-378`)."""
    scale = k.shape[-1] ** -0.5
    keys = ((k @ k.transpose(-2, -1)) * scale).softmax(-1)
    queries = ((q @ q.transpose(-2, -1)) * scale).softmax(-1)
    return (keys + queries + mid) / 3


def _layers(settings: Settings) -> frozenset[int]:
    return frozenset({settings.sfp_pre_layer, settings.sfp_post_layer, *settings.sfp_fusion_layers})


def _check_depth(encoder: DenseEncoder, settings: Settings) -> None:
    used = _layers(settings) | {settings.sfp_outlier_layer}
    trunk_blocks = encoder.depth - 1
    if max(used) >= trunk_blocks:
        raise ValueError(
            f"SFP's layers (sfp_outlier_layer={settings.sfp_outlier_layer}, sfp_pre_layer={settings.sfp_pre_layer}, "
            f"sfp_post_layer={settings.sfp_post_layer}, sfp_fusion_layers={settings.sfp_fusion_layers}) need trunk "
            f"blocks 0..{max(used)}; this model has {trunk_blocks} (0..{trunk_blocks - 1}); the defaults are ViT-B/16's"
        )


@register_head(
    "sfp",
    params=SfpParams,
    taps=lambda settings: Taps(layers=_layers(settings), attention=frozenset({settings.sfp_outlier_layer})),
)
@torch.no_grad()
def sfp_head(inputs: HeadInput, settings: Settings) -> Tensor:
    """SFP's patch features (n, h*w, embed_dim), each window on its own (see the module)."""
    encoder, trunk, grid = inputs.encoder, inputs.trunk, inputs.grid
    _check_depth(encoder, settings)
    block, beta, res_cls = encoder.last, settings.sfp_beta, settings.sfp_res_cls
    attention = trunk.attention[settings.sfp_outlier_layer]
    outliers = som_outliers(attention, settings.sfp_outliers, res_cls * settings.sfp_res_scale)  # (n, N)
    if not settings.sfp_fix_positions:
        outliers = authors_positions(outliers, grid, OUTLIER_ORIGIN, "sfp_fix_positions")
    repair = mean_interpolation if settings.sfp_fix_repair else zero_fill_interpolation
    pre = threshold(cosine(repair(trunk.layers[settings.sfp_pre_layer][:, 1:], outliers, grid)), beta)  # (n, N, N)
    mid = mid_attention(pre)  # (n, 1, N, N): from the thresholded similarity
    post = aggregation(cosine(trunk.layers[settings.sfp_post_layer][:, 1:]), beta)
    x = aggregation(pre, beta) @ repair(trunk.tokens[:, 1:], outliers, grid)  # (n, N, width)
    p = encoder.qkv(block.ln_1(x))
    x = block.ls_1(encoder.attend(three_way_weights(p.q, p.k, mid), p.v)) + res_cls * trunk.tokens[:, :1]
    x = post @ x
    fused = sum(trunk.layers[i] for i in settings.sfp_fusion_layers)  # (n, 1 + N, width)
    values = encoder.qkv(block.ln_1(fused[:, 1:])).v
    fused = block.ls_1(encoder.attend(mid, values)) + res_cls * fused[:, :1]  # `sinkhorn_attn`: values only
    x = x + post @ fused
    return encoder.project(x, drop_cls=False)  # patch tokens only already


@register_method
def sfp() -> Method:
    """SFP as its authors' code runs it (github:Kimsure/SFP@2804f5b, folder SFP_ICCV; files and lines per
    benchmark)."""
    return Method(
        "sfp",
        "SFP (outlier tokens from the [CLS] attention repaired, three-way calibrated attention, value-only fusion)",
        dict(
            logit_scale=40.0,
            prob_threshold=0.0,
            area_threshold=0.0,
            short_side=336,
            slide_crop=224,
            slide_stride=112,
            pad_windows=False,
            pamr_steps=0,
            renormalise=False,
        ),
        {
            "voc21": Protocol(
                {"logit_scale": 50.0, "prob_threshold": 0.15, "area_threshold": 0.1},
                "sfp/voc21.txt",
                "SFP_ICCV/configs/cfg_voc21.py:5-6,8,19",
            ),
            "voc20": Protocol({}, "sfp/voc20.txt", "SFP_ICCV/configs/cfg_voc20.py:5,14"),
            "context60": Protocol({"prob_threshold": 0.15}, source="SFP_ICCV/configs/cfg_context60.py:6,15"),
            "context59": Protocol(source="SFP_ICCV/configs/cfg_context59.py:14"),
            "coco_object": Protocol(
                {"logit_scale": 55.0, "prob_threshold": 0.35}, source="SFP_ICCV/configs/cfg_coco_object.py:7,18"
            ),
            "coco_stuff": Protocol(source="SFP_ICCV/configs/cfg_coco_stuff164k.py:14"),
            "cityscapes": Protocol(
                {"short_side": 560}, "sfp/city_scapes.txt", "SFP_ICCV/configs/cfg_city_scapes.py:5,14"
            ),
            "ade20k": Protocol({"short_side": 384}, source="SFP_ICCV/configs/cfg_ade20k.py:14"),
        },
        source="github:Kimsure/SFP@2804f5b (SFP_ICCV/)",
        note="Windows 224/112 everywhere (Cityscapes at 560, ADE20K at 384), no PAMR; area threshold on VOC21; "
        "own VOC and Cityscapes class files ('people' for 'person'). The authors' zero fill of an outlier with no "
        "unflagged neighbour makes a window's scores NaN (an error naming the image; sfp_fix_repair=true keeps "
        "the token).",
        head="sfp",
        docs="docs/methods/sfp.md",
    )
