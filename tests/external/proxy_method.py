"""A method defined outside the package, with a second frozen model: CLIP's last-block values mixed by the
patch affinities of a small random timm ViT (the shape of ProxyCLIP, not its numbers). Importing this module
registers it; the tests also load it through a `naclip.methods` entry point."""

from __future__ import annotations

from dataclasses import dataclass

import timm.models.vision_transformer as vit
import torch
import torch.nn.functional as F
from torch import Tensor

from naclip.heads import HeadInput, register_head
from naclip.methods import Method, register_method
from naclip.second_model import SecondModel
from naclip.settings import Params, Settings, option, positive

PATCH = 8
seen: list[tuple[int, ...]] = []  # the shapes of the second model's features each call of the head got


def build() -> torch.nn.Module:
    """A 2-block ViT with 8-pixel patches, any input size (position embeddings resampled)."""
    return vit.VisionTransformer(
        img_size=64, patch_size=PATCH, embed_dim=32, depth=2, num_heads=2, num_classes=0, dynamic_img_size=True
    )


def patch_features(module: torch.nn.Module, images: Tensor) -> Tensor:
    """(B, D, h, w) patch tokens of the last block, [CLS] dropped."""
    tokens = module.forward_features(images)[:, module.num_prefix_tokens :]  # (B, h*w, D)
    h, w = images.shape[-2] // PATCH, images.shape[-1] // PATCH
    return tokens.transpose(1, 2).reshape(len(images), -1, h, w)


TOY_VIT = SecondModel("toyvit", build, patch_features, patch=PATCH, default="toyvit-tag")


@dataclass(frozen=True)
class ProxyParams(Params):
    proxy_temperature: float = option(
        10.0, "method", "proxy: scale of the second model's cosine affinities", positive, "> 0"
    )


def affinity(inputs: HeadInput, settings: Settings) -> Tensor:
    """(n, 1, h*w, h*w) softmax of the second model's patch cosine similarities, on CLIP's patch grid."""
    features = inputs.models["toyvit"]  # (n, D, h', w')
    seen.append(tuple(features.shape))
    features = F.interpolate(features.float(), size=inputs.grid, mode="bilinear", align_corners=False)
    unit = F.normalize(features.flatten(2).transpose(1, 2), dim=-1)  # (n, h*w, D)
    return (settings.proxy_temperature * unit @ unit.transpose(1, 2)).softmax(-1)[:, None]


@register_head("proxy-test", params=ProxyParams, attention=affinity, models=(TOY_VIT,))
def proxy_head(inputs: HeadInput, settings: Settings) -> Tensor:
    """CLIP's last-block values of the patches, mixed by the second model's affinities: (n, h*w, embed_dim)."""
    encoder = inputs.encoder
    values = encoder.last_qkv(inputs.trunk).v[:, :, 1:]  # (n, heads, h*w, head_dim), [CLS] dropped
    weights = affinity(inputs, settings).to(values.dtype)
    return encoder.project(encoder.attend(weights, values), drop_cls=False)


@register_method
def proxy_test() -> Method:
    return Method(
        "proxy-test",
        "CLIP values mixed by a second model's patch affinities (an external test method)",
        dict(pamr_steps=0, slide_crop=0, short_side=64),
        {},
        head="proxy-test",
        source="tests/external/proxy_method.py",
        authors_protocol=False,
    )
