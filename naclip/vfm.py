"""Second backbones as the second-model methods use them: DINO ViT-B/8 and ViT-B/16, DINOv2 ViT-B/14 with
registers, SAM's ViT-B image encoder, each a `naclip.second_model.SecondModel`.

`vfm(name)` gives the model `name` (one of `VFMS`) whose features are the patch features (B, D, h, w) a head
compares; `vfm(name, full=True)` gives a `BackboneFeatures` instead, with the last block's output tokens, its
per-head q, k, v and its attention probabilities on demand. Each runs as its authors' code does:

- input: the CLIP-normalised window un-normalised with OpenAI's mean/std on the 0..1 scale and renormalised
  with ImageNet's (ProxyCLIP's `UnNormalize` + `Normalize`, `proxyclip_segmentor.py:79-80,113`); SAM squashes
  the window to 1024 x 1024 (`:118-122`), the DINOs take it at its own size;
- DINO (timm `vit_base_patch{8,16}_224.dino`, DINO's state dict loads as is): position embeddings resampled
  by DINO's rule, bicubic with scale factor (g + 0.1) / sqrt(N) per side (`vision_transformer.py:177-197` of
  github:facebookresearch/dino; timm's own resampling differs, 0.03 at 336 for B/8); patch features =
  `get_intermediate_layers(x)[0]`, the last block's output after the final norm, [CLS] dropped;
- DINOv2 with registers (timm `vit_base_patch14_reg4_dinov2`, the hub-format state dict converted by timm's
  `checkpoint_filter_fn`): DINOv2's rule, bicubic with antialias to the grid's size; patch features =
  `get_intermediate_layers(x, reshape=True)[0]` ([CLS] and the 4 registers dropped);
- SAM (`segment_anything.sam_model_registry['vit_b']`, the whole model, so its checkpoint loads as is): the
  image encoder's neck output, 256 x 64 x 64.

The last block is restated (timm's fused attention bypassed) so that its q, k, v and attention are exact.
Weights: `default` is the authors' checkpoint, downloaded once into torch's hub cache
(`torch.hub.load_state_dict_from_url`, weights only); `--vfm-pretrained NAME=/path` names a local file.
Precision: the segmenter's (float16 on CUDA, as the authors' `.half()`; float32 on a CPU, where the authors
also call `.half()`: float16 there is slow and gives no other information), unless `vfm(name, dtype=...)`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from naclip.attention import QKV
from naclip.encoder import interpolate_positions
from naclip.second_model import IMAGENET_MEAN, IMAGENET_STD, SecondModel

# OpenAI CLIP's mean/std on the 0..1 scale, which ProxyCLIP, CASS and Trident un-normalise the window with
# (mmseg normalises it with 122.771/68.501 on 0..255: 1e-5 apart), here on the 0..255 scale.
OPENAI_MEAN = tuple(255 * v for v in (0.48145466, 0.4578275, 0.40821073))
OPENAI_STD = tuple(255 * v for v in (0.26862954, 0.26130258, 0.27577711))
SAM_SIZE = 1024  # SAM's image encoder input side
DOWNLOAD_TIMEOUT = 10.0  # seconds a network operation may block before a download gives up (offline)

DINO_URL = "https://dl.fbaipublicfiles.com/dino/{0}/{0}.pth"
CHECKPOINTS = {  # tag -> URL (the authors' checkpoints; torch.hub caches them)
    "dino_vitbase8_pretrain": DINO_URL.format("dino_vitbase8_pretrain"),
    "dino_vitbase16_pretrain": DINO_URL.format("dino_vitbase16_pretrain"),
    "dinov2_vitb14_reg4_pretrain": "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth",
    "sam_vit_b_01ec64": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
}


@dataclass
class BackboneFeatures:
    """What a full second backbone gives for a batch of B windows; T = prefix + h*w tokens, prefix first.

    `patches` are what a head compares (see the module); `tokens` the last block's output (after the final
    norm for the DINOs; SAM has none, its neck makes `patches`); `qkv` the last block's per-head q, k, v
    (B, heads, T, head_dim) of its normed input; `attention()` its attention probabilities (B, heads, T, T),
    computed when asked for (SAM's with its decomposed relative positions).
    """

    patches: Tensor  # (B, D, h, w)
    tokens: Tensor  # (B, T, width)
    prefix: int  # [CLS] and register tokens before the patches
    qkv: QKV
    _attention: Callable[[], Tensor] = dataclasses.field(repr=False)

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.patches.shape[-2:])

    def attention(self) -> Tensor:
        """The last block's attention probabilities (B, heads, T, T)."""
        return self._attention()


def softmax_attention(q: Tensor, k: Tensor, bias: Tensor | None = None) -> Tensor:
    """softmax(q k^T / sqrt(d) [+ bias]) per head, q and k (B, heads, T, head_dim): (B, heads, T, T)."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    return (scores if bias is None else scores + bias).softmax(-1)


# -- timm ViTs (DINO, DINOv2) --------------------------------------------------------------------------------


def dino_positions(module: nn.Module, grid: tuple[int, int]) -> Tensor:
    """DINO's `interpolate_pos_encoding`: (1, 1 + h*w, width), bicubic with scale factor (g + 0.1) / sqrt(N)."""
    native = module.patch_embed.grid_size
    return interpolate_positions(module.pos_embed[0], native, grid)[None]


def dinov2_positions(module: nn.Module, grid: tuple[int, int]) -> Tensor:
    """DINOv2's `interpolate_pos_encoding` (interpolate_offset 0, antialias): (1, h*w, width) patch positions
    resized bicubically to the grid's size in float32 ([CLS]'s own is folded into the token, as timm loads it)."""
    native = module.patch_embed.grid_size
    if tuple(grid) == tuple(native):
        return module.pos_embed
    width = module.pos_embed.shape[-1]
    patches = module.pos_embed.float().reshape(1, *native, width).permute(0, 3, 1, 2)  # (1, width, H0, W0)
    patches = F.interpolate(patches, size=grid, mode="bicubic", antialias=True)
    return patches.permute(0, 2, 3, 1).reshape(1, -1, width).to(module.pos_embed.dtype)


def check_plain_vit(module: nn.Module) -> None:
    """Refuse a timm ViT whose blocks the restated last block would not reproduce (q/k norms, gates, ...)."""
    attn = module.blocks[-1].attn
    extras = [name for name in ("q_norm", "k_norm", "norm") if not isinstance(getattr(attn, name), nn.Identity)]
    extras += ["gate"] if getattr(attn, "gate", None) is not None else []
    if extras or not isinstance(module.norm_pre, nn.Identity):
        raise ValueError(f"this ViT's last attention uses {extras or ['norm_pre']}; expected plain attention")


def vit_features(module: nn.Module, images: Tensor, positions: Callable[[nn.Module, tuple[int, int]], Tensor]):
    """A timm ViT on images (B, 3, H, W) with position embeddings from `positions(module, grid)`:
    `BackboneFeatures` of the last block, after the final norm; partial patches at the border dropped."""
    x = module.patch_embed.proj(images)  # (B, width, h, w)
    grid = tuple(x.shape[-2:])
    x = module.patch_embed.norm(x.flatten(2).transpose(1, 2))  # (B, h*w, width)
    prefix = [token.expand(len(x), -1, -1) for token in (module.cls_token, module.reg_token) if token is not None]
    if module.no_embed_class:  # DINOv2: positions for the patches only, [CLS] and registers added after
        x = torch.cat([*prefix, x + positions(module, grid).to(x.dtype)], dim=1)
    else:  # DINO: [CLS] has a position too
        x = torch.cat([*prefix, x], dim=1) + positions(module, grid).to(x.dtype)
    for block in module.blocks[:-1]:
        x = block(x)
    block = module.blocks[-1]
    attn = block.attn
    batch, tokens, width = x.shape
    qkv = attn.qkv(block.norm1(x)).reshape(batch, tokens, 3, attn.num_heads, width // attn.num_heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, T, head_dim)
    attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, tokens, width)
    x = x + block.ls1(attn.proj(attended))
    x = module.norm(x + block.ls2(block.mlp(block.norm2(x))))  # (B, T, width)
    start = sum(token.shape[1] for token in prefix)  # [CLS] and registers
    patches = x[:, start:].transpose(1, 2).reshape(batch, width, *grid)  # (B, width, h, w)
    return BackboneFeatures(patches, x, start, QKV(q, k, v), lambda: softmax_attention(q, k))


def _timm_vit(arch: str) -> nn.Module:
    import timm

    module = timm.create_model(arch, pretrained=False, num_classes=0)
    check_plain_vit(module)
    return module


def _dinov2_state(state: Mapping[str, Tensor], module: nn.Module) -> Mapping[str, Tensor]:
    """DINOv2's hub-format state dict in timm's layout (a timm-format one passes through)."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    return checkpoint_filter_fn(dict(state), module)


# -- SAM ------------------------------------------------------------------------------------------------------


def _sam() -> nn.Module:
    from segment_anything import sam_model_registry

    return sam_model_registry["vit_b"](checkpoint=None)


def sam_features(module: nn.Module, images: Tensor) -> BackboneFeatures:
    """SAM's image encoder on images (B, 3, 1024, 1024): the neck output (B, 256, 64, 64) as `patches`; the last
    (global-attention) block restated for its q, k, v and attention (with decomposed relative positions)."""
    from segment_anything.modeling.image_encoder import add_decomposed_rel_pos

    encoder = module.image_encoder
    x = encoder.patch_embed(images)  # (B, h, w, width)
    if encoder.pos_embed is not None:
        x = x + encoder.pos_embed
    for block in encoder.blocks[:-1]:
        x = block(x)
    block = encoder.blocks[-1]
    attn = block.attn
    if block.window_size > 0:
        raise ValueError("SAM's last block uses windowed attention; expected global attention (as SAM ViT-B)")
    batch, height, width, channels = x.shape
    grid = (height, width)
    qkv = attn.qkv(block.norm1(x)).reshape(batch, height * width, 3, attn.num_heads, -1)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, h*w, head_dim)

    def attention() -> Tensor:  # (B, heads, h*w, h*w) as SAM's Attention computes it
        scores = (q * attn.scale) @ k.transpose(-2, -1)
        if attn.use_rel_pos:
            flat = (batch * attn.num_heads, height * width)
            scores = add_decomposed_rel_pos(
                scores.reshape(*flat, -1), q.reshape(*flat, -1), attn.rel_pos_h, attn.rel_pos_w, grid, grid
            ).reshape(scores.shape)
        return scores.softmax(-1)

    weights = attention()  # computed once: kept for `BackboneFeatures.attention` (Trident reads it)
    attended = (weights @ v).permute(0, 2, 1, 3).reshape(batch, height, width, channels)
    x = x + attn.proj(attended)
    x = x + block.mlp(block.norm2(x))  # (B, h, w, width)
    patches = encoder.neck(x.permute(0, 3, 1, 2))  # (B, 256, h, w)
    return BackboneFeatures(patches, x.flatten(1, 2), 0, QKV(q, k, v), lambda: weights)


def sam_input_size(height: int, width: int) -> tuple[int, int]:
    """ProxyCLIP squashes every window to SAM's 1024 x 1024 (`proxyclip_segmentor.py:120`)."""
    return SAM_SIZE, SAM_SIZE


# -- the models ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _network_timeout(seconds: float) -> Iterator[None]:
    """Blocking network operations give up after `seconds` (an offline machine fails fast, not after minutes)."""
    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(before)


def download(tag: str) -> Mapping[str, Tensor]:
    """The state dict of the authors' checkpoint `tag` (a key of `CHECKPOINTS`), from torch's hub cache or the
    network; weights only."""
    if tag not in CHECKPOINTS:
        raise ValueError(f"unknown checkpoint {tag!r}; expected one of {', '.join(CHECKPOINTS)} or a file")
    with _network_timeout(DOWNLOAD_TIMEOUT):
        return torch.hub.load_state_dict_from_url(CHECKPOINTS[tag], map_location="cpu", weights_only=True)


@dataclass(frozen=True)
class _Spec:
    build: Callable[[], nn.Module]
    features: Callable[[nn.Module, Tensor], BackboneFeatures]
    patch: int
    default: str
    convert: Callable[[Mapping[str, Tensor], nn.Module], Mapping[str, Tensor]] | None = None
    input_size: Callable[[int, int], tuple[int, int]] | None = None


def _dino_features(module: nn.Module, images: Tensor) -> BackboneFeatures:
    return vit_features(module, images, dino_positions)


def _dinov2_features(module: nn.Module, images: Tensor) -> BackboneFeatures:
    return vit_features(module, images, dinov2_positions)


_SPECS = {
    "dino_vitb8": _Spec(lambda: _timm_vit("vit_base_patch8_224.dino"), _dino_features, 8, "dino_vitbase8_pretrain"),
    "dino_vitb16": _Spec(lambda: _timm_vit("vit_base_patch16_224.dino"), _dino_features, 16, "dino_vitbase16_pretrain"),
    "dinov2_vitb14_reg": _Spec(
        lambda: _timm_vit("vit_base_patch14_reg4_dinov2"),
        _dinov2_features,
        14,
        "dinov2_vitb14_reg4_pretrain",
        convert=_dinov2_state,
    ),
    "sam_vitb": _Spec(_sam, sam_features, 16, "sam_vit_b_01ec64", input_size=sam_input_size),
}
VFMS = tuple(_SPECS)


def _patches(features: Callable[[nn.Module, Tensor], BackboneFeatures]) -> Callable[[nn.Module, Tensor], Tensor]:
    def forward(module: nn.Module, images: Tensor) -> Tensor:
        return features(module, images).patches

    return forward


def vfm(name: str, full: bool = False, dtype: torch.dtype | None = None) -> SecondModel:
    """The second model `name` (one of `VFMS`): its features are the patch features (B, D, h, w), or with `full`
    the whole `BackboneFeatures`; `dtype` fixes its precision (default: the segmenter's)."""
    if name not in _SPECS:
        raise ValueError(f"unknown second backbone {name!r}; expected one of {', '.join(VFMS)}")
    spec = _SPECS[name]
    return SecondModel(
        name,
        spec.build,
        spec.features if full else _patches(spec.features),
        patch=spec.patch,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        default=spec.default,
        download=download,
        input_size=spec.input_size,
        unnormalise=(OPENAI_MEAN, OPENAI_STD),
        convert=spec.convert,
        dtype=dtype,
    )
