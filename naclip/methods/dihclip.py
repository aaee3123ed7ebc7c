"""DIH-CLIP (ICCV 2025): SC-CLIP's calibrated last block without its anomaly step, with selective head
attention (SHA): only the attention heads of lowest entropy carry values, each over all heads' values.

The head, as the authors' `VisionTransformer.forward` (github:duan-song/DiH-CLIP@775b609, `clip/model.py:
237-303`) computes it per window: block 8's output plus its SHA (the k-k attention of its 4 lowest-entropy
q-k heads, `vanilla_attn` `:361-408`) gives the patch similarity that aggregates the last trunk block's
tokens and guides the last block; the last block's calibrated attention (SC-CLIP's) keeps its 4
lowest-entropy heads, each applied to all heads' values, summed and divided by 12 (`custom_attn`
`:305-359`); then SC-CLIP's [CLS] residual, block-3 aggregation and fusion of blocks 3..9. Their code as
committed cannot run (it unpacks one tensor as two, `clip_segmentor.py:70`); SC-CLIP's line there is
assumed. Notes: docs/methods/dihclip.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from naclip.encoder import DenseEncoder, Taps
from naclip.heads import HeadInput, register_head
from naclip.methods.registry import Method, Protocol, register_method
from naclip.methods.scclip import aggregation, calibrated_weights, mid_attention, similarity
from naclip.settings import Params, Settings, option, positive

ENTROPY_EPS = 1e-6  # -sum p log2(p + 1e-6), clip/model.py:332-333


@dataclass(frozen=True)
class DihclipParams(Params):
    """DIH-CLIP's own parameters; the layer indices are ViT-B/16's (`configs/base_config.py:5-9`)."""

    dihclip_heads: int = option(
        4,
        "method",
        "DIH-CLIP: heads kept by selective head attention, those of lowest attention entropy (ties keep more)",
        positive,
        "> 0",
    )
    dihclip_pre_layer: int = option(
        8,
        "method",
        "DIH-CLIP: trunk block (0-based) whose output plus its selective head attention gives the patch "
        "similarity that aggregates the tokens and guides the last attention",
        lambda v: v >= 1,
        ">= 1",
    )
    dihclip_post_layer: int = option(
        3,
        "method",
        "DIH-CLIP: trunk block (0-based) whose patch similarity aggregates the last block's output",
        lambda v: v >= 0,
        ">= 0",
    )
    dihclip_fusion_layers: tuple[int, ...] = option(
        (3, 4, 5, 6, 7, 8, 9),
        "method",
        "DIH-CLIP: trunk blocks (0-based) whose tokens are summed and passed through the last block again",
        lambda v: len(v) > 0 and min(v) >= 0,
        "block indices >= 0",
    )
    dihclip_beta: float = option(
        0.4,
        "method",
        "DIH-CLIP: patch similarities below this are left out of the aggregations",
        lambda v: -1 <= v <= 1,
        "in [-1, 1]",
    )
    dihclip_res_cls: float = option(
        0.3,
        "method",
        "DIH-CLIP: weight of the [CLS] token added to every patch after the last block",
        lambda v: v >= 0,
        ">= 0",
    )


def attention_entropy(weights: Tensor) -> Tensor:
    """(n, heads) entropy -sum p log2(p + 1e-6) of each head's whole (N x N) attention map (n, heads, N, N)."""
    p = weights.flatten(2)
    return -(p * torch.log2(p + ENTROPY_EPS)).sum(-1)


def lowest_entropy_heads(weights: Tensor, count: int) -> Tensor:
    """(n, heads) bool: the heads whose entropy equals one of the `count` lowest, per window.

    `metrics[i] in sorted_metrics[:count]` (`:334-349`): float equality, so a tie at the last place keeps more
    heads than `count`.
    """
    entropy = attention_entropy(weights)
    lowest = entropy.sort(-1).values[:, :count]  # (n, count)
    return (entropy[:, :, None] == lowest[:, None, :]).any(-1)


def selected_heads_attention(block: nn.Module, weights: Tensor, v: Tensor, selected: Tensor, divisor: float) -> Tensor:
    """out_proj( sum over the selected heads of weights_h @ V / divisor ): (n, N, width), from weights
    (n, heads, N, N), per-head values v (n, heads, N, head_dim) and the heads (n, heads) bool; V is all
    heads' values side by side (n, N, width), which every selected head takes."""
    values = v.transpose(1, 2).flatten(2)  # (n, N, width)
    summed = (weights * selected[:, :, None, None].to(weights.dtype)).sum(1)  # (n, N, N)
    return block.attn.out_proj((summed @ values) / divisor)


def trunk_sha(encoder: DenseEncoder, index: int, entering: Tensor, count: int) -> Tensor:
    """Trunk block `index`'s selective head attention (n, T, width) on the tokens entering it (n, T, width):
    softmax((k / sqrt d) k^T) of the `count` heads whose q-k attention has the lowest entropy, over all heads'
    values, out-projected, not divided (`vanilla_attn`, `:361-408`)."""
    block = encoder.visual.transformer.resblocks[index]
    p = encoder.qkv(block.ln_1(entering), block)
    scale = p.q.shape[-1] ** -0.5
    selected = lowest_entropy_heads(((p.q * scale) @ p.k.transpose(-2, -1)).softmax(-1), count)
    return selected_heads_attention(block, ((p.k * scale) @ p.k.transpose(-2, -1)).softmax(-1), p.v, selected, 1.0)


def last_sha(encoder: DenseEncoder, tokens: Tensor, mid: Tensor, count: int) -> Tensor:
    """The last block's selective head attention (n, N, width) on patch tokens (n, N, width): SC-CLIP's
    calibrated weights (mid + softmax(k k^T / sqrt d)) / 2, the `count` heads of lowest entropy, over all
    heads' values, divided by the number of heads (`custom_attn`, `:305-359`)."""
    block = encoder.last
    p = encoder.qkv(block.ln_1(tokens))
    weights = calibrated_weights(p.k, mid)  # (n, heads, N, N)
    selected = lowest_entropy_heads(weights, count)
    return block.ls_1(selected_heads_attention(block, weights, p.v, selected, weights.shape[1]))


def _layers(settings: Settings) -> frozenset[int]:
    pre = settings.dihclip_pre_layer
    return frozenset({pre - 1, pre, settings.dihclip_post_layer, *settings.dihclip_fusion_layers})


def _check_depth(encoder: DenseEncoder, settings: Settings) -> None:
    trunk_blocks = encoder.depth - 1
    if max(_layers(settings)) >= trunk_blocks:
        raise ValueError(
            f"DIH-CLIP's layers (dihclip_pre_layer={settings.dihclip_pre_layer}, dihclip_post_layer="
            f"{settings.dihclip_post_layer}, dihclip_fusion_layers={settings.dihclip_fusion_layers}) need trunk "
            f"blocks 0..{max(_layers(settings))}; this model has {trunk_blocks} (0..{trunk_blocks - 1}); the "
            "defaults are ViT-B/16's"
        )


@register_head("dihclip", params=DihclipParams, taps=lambda settings: Taps(layers=_layers(settings)))
@torch.no_grad()
def dihclip_head(inputs: HeadInput, settings: Settings) -> Tensor:
    """DIH-CLIP's patch features (n, h*w, embed_dim), each window on its own (see the module)."""
    encoder, trunk = inputs.encoder, inputs.trunk
    _check_depth(encoder, settings)
    pre_layer, count = settings.dihclip_pre_layer, settings.dihclip_heads
    beta, res_cls = settings.dihclip_beta, settings.dihclip_res_cls
    pre = trunk.layers[pre_layer] + trunk_sha(encoder, pre_layer, trunk.layers[pre_layer - 1], count)
    pre = similarity(pre[:, 1:])  # (n, N, N)
    mid = mid_attention(pre)  # from the raw similarity, as SC-CLIP
    post = aggregation(similarity(trunk.layers[settings.dihclip_post_layer][:, 1:]), beta)
    x = aggregation(pre, beta) @ trunk.tokens[:, 1:]  # (n, N, width)
    x = post @ (last_sha(encoder, x, mid, count) + res_cls * trunk.tokens[:, :1])
    fused = sum(trunk.layers[i] for i in settings.dihclip_fusion_layers)  # (n, 1 + N, width)
    x = x + post @ (last_sha(encoder, fused[:, 1:], mid, count) + res_cls * fused[:, :1])
    return encoder.project(x, drop_cls=False)  # patch tokens only already


@register_method
def dihclip() -> Method:
    """DIH-CLIP as its authors' code computes it (github:duan-song/DiH-CLIP@775b609; files and lines per
    benchmark), with SC-CLIP's `clip_segmentor.py:70` in place of the committed one, which cannot run."""
    return Method(
        "dihclip",
        "DIH-CLIP (SC-CLIP's calibrated attention with selective head attention, no anomaly step)",
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
                source="configs/cfg_voc21.py:6,8,19",
            ),
            "voc20": Protocol(source="configs/cfg_voc20.py:14"),
            "context60": Protocol({"prob_threshold": 0.15}, source="configs/cfg_context60.py:6,15"),
            "context59": Protocol(source="configs/cfg_context59.py:14"),
            "coco_object": Protocol(
                {"logit_scale": 55.0, "prob_threshold": 0.35}, source="configs/cfg_coco_object.py:7,18"
            ),
            "coco_stuff": Protocol(source="configs/cfg_coco_stuff164k.py:14"),
            "cityscapes": Protocol({"short_side": 560}, source="configs/cfg_city_scapes.py:14"),
            "ade20k": Protocol(source="configs/cfg_ade20k.py:14"),
        },
        source="github:duan-song/DiH-CLIP@775b609",
        note="SC-CLIP's protocol (windows 224/112, Cityscapes at 560, area threshold on VOC21, no PAMR). The "
        "published numbers came from code that is not public: the committed code cannot run (clip_segmentor.py:70 "
        "unpacks one tensor as two; eval.py and prompts/ are missing); SC-CLIP's line there, "
        "image_features = encode_image(...), and its 80 templates are assumed.",
        head="dihclip",
        docs="docs/methods/dihclip.md",
    )
