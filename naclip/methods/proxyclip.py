"""ProxyCLIP (Lan, Chen, Meng, Yang, Loy, Wu, ECCV 2024): CLIP's last block attends by a second model's
patch affinities (the proxy attention).

As the authors' `VisionTransformer.forward` and `custom_attn` (github:mc-lan/ProxyCLIP@e7b767f, vendored
`open_clip/transformer.py:503-531,560-587`) compute it per window: CLIP's blocks 0..10 unchanged; the second
model's patch features F (`naclip.vfm`: DINO ViT-B/8 by default) give
A = softmax(gamma (S - beta mean(S))), -inf where negative, S the cosine similarity of F's patches (beta 1.2,
gamma 3.0, one A for all heads); CLIP's last-block values of the patches are resized bilinearly to F's grid,
attended by A, out-projected, `ln_post`, `proj`: patch features on F's grid, whose scores are resized to the
(padded) window. Windows are zero-padded, centred, to a multiple of 56 (`proxyclip_segmentor.py:218-231`).
Deviations and quirks: docs/methods/proxyclip.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from naclip.heads import HeadInput, register_head
from naclip.methods.registry import Method, Protocol, register_method
from naclip.second_model import SecondModel
from naclip.settings import Params, Settings, option, positive
from naclip.vfm import VFMS, vfm


@dataclass(frozen=True)
class ProxyclipParams(Params):
    """ProxyCLIP's own parameters (`proxyclip_segmentor.py:30-31`, `configs/base_config.py:6`)."""

    proxyclip_vfm: str = option(
        "dino_vitb8",
        "backbone",
        "ProxyCLIP: the second model whose patch affinities CLIP's last block attends by",
        choices=VFMS,
    )
    proxyclip_beta: float = option(
        1.2, "method", "ProxyCLIP: affinities below beta x their mean are ignored", lambda v: v >= 0, ">= 0"
    )
    proxyclip_gamma: float = option(
        3.0, "method", "ProxyCLIP: sharpness of the proxy attention (scale before the softmax)", positive, "> 0"
    )


def second_models(settings: Settings) -> tuple[SecondModel, ...]:
    """The one second model ProxyCLIP reads: `proxyclip_vfm`."""
    return (vfm(settings.proxyclip_vfm),)


def proxy_attention(features: Tensor, beta: float, gamma: float) -> Tensor:
    """(n, I*J, I*J) proxy attention of each window's patch features (n, D, I, J): the softmax over j of
    gamma (S_ij - beta mean(S)), where negative -inf, S the cosine similarities of the window's patches.

    The mean is the window's own (the authors run one window at a time, `torch.mean` over that batch of one).
    A row with no positive entry is NaN, as theirs (the segmenter refuses NaN scores).
    """
    unit = F.normalize(features.flatten(2), dim=1)  # (n, D, I*J)
    similarity = unit.transpose(1, 2) @ unit  # (n, I*J, I*J)
    scores = (similarity - similarity.mean((1, 2), keepdim=True) * beta) * gamma
    return scores.masked_fill(scores < 0, float("-inf")).softmax(-1)


def proxy_values(inputs: HeadInput, grid: tuple[int, int]) -> Tensor:
    """CLIP's last-block values of the patches (n, heads, h*w, head_dim) resized bilinearly from CLIP's grid to
    `grid` (I, J): (n, heads, I*J, head_dim)."""
    v = inputs.encoder.last_qkv(inputs.trunk).v[:, :, 1:]  # (n, heads, h*w, head_dim), [CLS] dropped
    n, heads, _, dim = v.shape
    v = v.transpose(2, 3).reshape(n * heads, dim, *inputs.grid)  # (n*heads, head_dim, h, w)
    v = F.interpolate(v, size=grid, mode="bilinear", align_corners=False)  # (n*heads, head_dim, I, J)
    return v.reshape(n, heads, dim, -1).transpose(2, 3)


@register_head("proxyclip", params=ProxyclipParams, models=second_models)
@torch.no_grad()
def proxyclip_head(inputs: HeadInput, settings: Settings) -> Tensor:
    """ProxyCLIP's patch features (n, I, J, embed_dim) on the second model's grid."""
    features = inputs.models[settings.proxyclip_vfm]  # (n, D, I, J)
    grid = tuple(features.shape[-2:])
    values = proxy_values(inputs, grid)
    weights = proxy_attention(features, settings.proxyclip_beta, settings.proxyclip_gamma).to(values.dtype)
    encoder = inputs.encoder
    out = encoder.project(encoder.attend(weights[:, None], values), drop_cls=False)  # (n, I*J, embed_dim)
    return out.reshape(len(out), *grid, -1)


@register_method
def proxyclip() -> Method:
    """ProxyCLIP as its authors ran it (github:mc-lan/ProxyCLIP@e7b767f, files and lines per benchmark)."""
    return Method(
        "proxyclip",
        "ProxyCLIP (CLIP's last block attends by a second model's patch affinities)",
        dict(
            logit_scale=40.0,
            prob_threshold=0.0,
            area_threshold=0.0,
            short_side=336,
            slide_crop=336,
            slide_stride=112,
            pad_windows=True,
            pad_multiple=56,
            pamr_steps=0,
            renormalise=False,
        ),
        {
            "voc21": Protocol({"prob_threshold": 0.2}, "proxyclip/voc21.txt", "configs/cfg_voc21.py:5-6,15"),
            "voc20": Protocol({}, "clearclip/voc20.txt", "configs/cfg_voc20.py:5,14"),
            "context60": Protocol({"prob_threshold": 0.15}, source="configs/cfg_context60.py:6,15"),
            "context59": Protocol(source="configs/cfg_context59.py:14"),
            "coco_object": Protocol(
                {"prob_threshold": 0.25}, "proxyclip/coco_object.txt", "configs/cfg_coco_object.py:5-6,15"
            ),
            "coco_stuff": Protocol(source="configs/cfg_coco_stuff164k.py:14"),
            "cityscapes": Protocol({"short_side": 448, "slide_crop": 224}, source="configs/cfg_city_scapes.py:6-7,16"),
            "ade20k": Protocol({"short_side": 448}, source="configs/cfg_ade20k.py:14"),
        },
        head="proxyclip",
        source="github:mc-lan/ProxyCLIP@e7b767f",
        note="DINO ViT-B/8 proxy attention; short side 336 (448 on Cityscapes and ADE20K), windows 336/112 "
        "(224/112 on Cityscapes) padded to a multiple of 56; own VOC21/COCO-Object class files.",
        docs="docs/methods/proxyclip.md",
    )
