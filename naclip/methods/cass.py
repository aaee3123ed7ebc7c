"""CASS (Kim, Ju, Han, Yang, Hwang, CVPR 2025): Distilling Spectral Graph for Object-Context Aware
Open-Vocabulary Semantic Segmentation; CLIP's last attention distilled from DINO's.

The head, as the authors' code computes it per window (github:MICV-yonsei/CASS@228ecdd: `cass_segmentor.py`,
`clip/model.py`, `dino/dino_attention.py`), on NACLIP's reduced last block (no residual, no FFN, no [CLS]):

1. DINO ViT-B/8 (float32) sees the window through a uint8 PIL round trip: the CLIP-normalised window
   un-normalised with ImageNet's statistics (0.255 for 0.225), truncated to uint8, resized bicubically to a
   square of its short side; its last block's keys per head, resized bilinearly to CLIP's patch grid, in
   float16, min-max mapped onto the range of CLIP's last-block keys;
2. per head, CLIP's key graph C = k k^T / sqrt(d) and DINO's D = Kd Kd^T / sqrt(d); heads are paired by the
   distance between their top-20 eigenvalue spectra (Hungarian matching), and each CLIP head's attention is
   softmax((10 w Dt + C) / (10 w + 1) + omega), Dt a randomised rank-10 approximation of its DINO head's graph
   (singular values stretched, diagonal zeroed, range mapped onto C's), w the pair's spectral distance, omega
   NACLIP's Gaussian;
3. the queries adjusted per window: in each Ward cluster of queries, the one most similar to the image's
   [CLS] (a vanilla pass over the whole image) is moved towards the mean of its two closest patches; logits
   = (1 - gsw) f T'^T + gsw g, g the [CLS]'s similarity to each query.

The randomised SVD draws from a generator seeded before each window (the authors' seeds once per run); what
is reproduced as their code computes it (the pairing's swapped roles, the float16 keys, the DINO input) and
what is offered as a fix: docs/methods/cass.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import squareform
from torch import Tensor

from naclip.attention import gaussian_bias
from naclip.encoder import DenseEncoder, Trunk, attention_softmax
from naclip.heads import HeadInput, register_head
from naclip.methods.registry import Method, Protocol, register_method
from naclip.preprocess import PIXEL_MEAN, PIXEL_STD
from naclip.second_model import SecondModel
from naclip.settings import Params, Settings, option, positive
from naclip.vfm import vfm

K_EIGEN = 20  # eigenvalues per spectrum, custom_attn's 'k_eigen' (clip/model.py:256)
SCALE_FACTOR = 10.0  # weight of DINO's graph per unit of spectral distance, 'scale_factor' (clip/model.py:255)
SVD_RANK = 10  # optimal_q's first q, at which it always returns (clip/model.py:206-217, 412-417)
TOP_PATCHES = 2  # patches averaged into an adjusted query (cass_segmentor.py:121)
# The authors' inverse of ImageNet's normalisation (cass_segmentor.py:78-81), 0.255 for 0.225 in blue.
INVERSE_MEAN = (0.485, 0.456, 0.406)
INVERSE_STD = (0.229, 0.224, 0.255)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # DINO's input (dino_attention.py:81)


@dataclass(frozen=True)
class CassParams(Params):
    """CASS's own parameters; the defaults are Context59's (`configs/cfg_context59.py:8-10`)."""

    sigma: float = option(5.0, "method", "std of the Gaussian neighbourhood bias, in patches", positive, "> 0")
    cass_global_weight: float = option(
        0.25,
        "method",
        "CASS: weight of the global similarity (the image [CLS] to each query) in every patch's logits",
        lambda v: 0 <= v <= 1,
        "in [0, 1]",
    )
    cass_mean_weight: float = option(
        0.04,
        "method",
        "CASS: weight of the mean of the two closest patches mixed into each cluster's chosen query",
        lambda v: 0 <= v <= 1,
        "in [0, 1]",
    )
    cass_cluster_threshold: float = option(
        0.09,
        "method",
        "CASS: Ward-linkage height (on cosine distances) below which queries share a cluster",
        lambda v: v >= 0,
        ">= 0",
    )
    cass_eigen_scaling: bool = option(
        True, "method", "CASS: stretch the singular values of DINO's low-rank graph (all but VOC20 and Cityscapes)"
    )
    cass_global: str = option(
        "image",
        "method",
        "CASS: whose [CLS] the global similarity takes: the whole image's (a vanilla pass over it) or the window's",
        choices=("image", "window"),
    )
    cass_seed: int = option(
        42,
        "method",
        "CASS: seed of the randomised SVD's draws, set before each window (the authors' run seed)",
        lambda v: 0 <= v < 2**63,
        f"0..{2**63 - 1}",
    )
    cass_fix_dino_input: bool = option(
        False,
        "backbone",
        "CASS: give DINO the window's own pixels (CLIP's normalisation inverted); false keeps the authors' inverse "
        "of ImageNet's normalisation, with 0.255 for 0.225, on the CLIP-normalised window (cass_segmentor.py:78-81)",
    )
    cass_fix_pairing: bool = option(
        False,
        "method",
        "CASS: mix each DINO head into the CLIP head the matching paired it with, with that pair's distance; false "
        "keeps the authors' swapped roles (CLIP head i takes DINO head col[i], clip/model.py:405-410)",
    )


# -- the DINO input ------------------------------------------------------------------------------------------
def dino_pixels(windows: Tensor, fix: bool = False) -> list[np.ndarray]:
    """The authors' uint8 images (h, w, 3) of CLIP-normalised windows (n, 3, h, w): ImageNet's normalisation
    inverted with 0.255 for 0.225 (torchvision's Normalize, then x 255 in float32), truncated to uint8
    (`cass_segmentor.py:78-81,180-181`). `fix`: the window's own pixels, CLIP's normalisation inverted, rounded."""
    if fix:
        mean, std = (torch.tensor(v, dtype=torch.float32)[:, None, None] for v in (PIXEL_MEAN, PIXEL_STD))
        pixels = (windows.float().cpu() * std + mean).round().clamp(0, 255).to(torch.uint8)  # (n, 3, h, w)
        return list(pixels.permute(0, 2, 3, 1).numpy())
    mean = torch.tensor([-m / s for m, s in zip(INVERSE_MEAN, INVERSE_STD)], dtype=torch.float32)
    std = torch.tensor([1 / s for s in INVERSE_STD], dtype=torch.float32)
    inverted = (windows.float().cpu() - mean[:, None, None]) / std[:, None, None]  # (n, 3, h, w)
    return [(image.permute(1, 2, 0).numpy() * 255).astype(np.uint8) for image in inverted]


def dino_input(windows: Tensor, fix: bool = False) -> Tensor:
    """DINO's input (n, 3, m', m') from CLIP-normalised windows (n, 3, h, w): the uint8 round trip (`dino_pixels`),
    PIL's bicubic resize to m x m, m = min(h, w) (`clip/model.py:107-108`), ImageNet-normalised, cut to a multiple
    of 8 pixels (`dino_attention.py:78-86`)."""
    side = min(windows.shape[-2:])
    mean, std = (torch.tensor(v, dtype=torch.float32)[:, None, None] for v in (IMAGENET_MEAN, IMAGENET_STD))
    images = []
    for pixels in dino_pixels(windows, fix):
        resized = np.asarray(Image.fromarray(pixels).resize((side, side), Image.BICUBIC))
        image = torch.from_numpy(resized.copy()).permute(2, 0, 1).float().div(255)  # torchvision's ToTensor
        images.append((image - mean) / std)
    cut = side - side % 8
    return torch.stack(images)[..., :cut, :cut].to(windows.device)


# DINO ViT-B/8 in float32 (dino_attention.py:34,58: never cast), its last block's q, k, v, fed the round trip;
# the same model fed the window's own pixels under cass_fix_dino_input.
DINO = dataclasses.replace(vfm("dino_vitb8", full=True, dtype=torch.float32), preprocess=dino_input)
FIXED_DINO = dataclasses.replace(DINO, preprocess=functools.partial(dino_input, fix=True))


def dino_model(settings: Settings) -> tuple[SecondModel]:
    """The DINO the settings feed: the authors' input, or the window's own pixels (`cass_fix_dino_input`)."""
    return (FIXED_DINO if settings.cass_fix_dino_input else DINO,)


# -- spectral matching of heads ------------------------------------------------------------------------------
def spectrum(graphs: Tensor, count: int = K_EIGEN) -> Tensor:
    """(heads, count) the largest eigenvalues, descending, of symmetric graphs (heads, N, N), in float64
    (`compute_spectrum`, clip/model.py:224-232)."""
    return torch.linalg.eigvalsh(graphs.double()).flip(-1)[:, :count]


def spectral_distances(dino: Tensor, clip: Tensor) -> Tensor:
    """W (heads, heads): W[i, j] = sum |sort(p_i) - sort(c_j)|, p_i DINO head i's spectrum and c_j CLIP head j's,
    each L2- then L1-normalised (`wasserstein_distance_pytorch`, clip/model.py:235-238,385-398)."""
    p, c = (F.normalize(F.normalize(s, p=2, dim=1), p=1, dim=1).sort(-1).values for s in (dino, clip))
    return (p[:, None] - c[None]).abs().sum(-1)


def head_pairs(distances: Tensor, fix: bool) -> list[tuple[int, int, Tensor]]:
    """(CLIP head, DINO head, w) for each CLIP head: the Hungarian matching on the float32 cost 1 - W (rows DINO
    heads), w = 1 - cost (float32, as `w_d`). The authors then use CLIP head i with DINO head col[i]: the matched
    roles swapped (`clip/model.py:400-410`); `fix` pairs CLIP head col[i] with DINO head i, as matched."""
    cost = (1 - distances).float()
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    weights = 1 - cost
    if fix:
        return [(int(j), int(i), weights[i, j]) for i, j in zip(rows, cols)]
    return [(int(i), int(j), weights[i, j]) for i, j in zip(rows, cols)]


# -- the mixed attention -------------------------------------------------------------------------------------
def range_mapped(source: Tensor, target: Tensor) -> Tensor:
    """`source` min-max mapped onto [min target, max target], in the promoted dtype of the authors' expression
    (`_normalize_key_range`, `_normalize_attention_range`, clip/model.py:344-351,475-481)."""
    low, high = source.min(), source.max()
    target_low, target_high = target.min(), target.max()
    return (source - low) / (high - low) * (target_high - target_low) + target_low


def eigen_scaled(values: Tensor) -> Tensor:
    """Singular values stretched: (s - min) / (max - min) (1.5 max - 0.5 min) + 0.5 min (clip/model.py:465-473)."""
    low, high = values.min(), values.max()
    return (values - low) / (high - low) * (1.5 * high - 0.5 * low) + 0.5 * low


def low_rank(graph: Tensor, scaling: bool) -> Tensor:
    """(N, N) float64: torch.svd_lowrank(graph, q=10) recomposed, singular values stretched if `scaling`, the
    diagonal zeroed (`optimal_q`, clip/model.py:206-217,412-422). Draws from the device's generator."""
    u, s, v = torch.svd_lowrank(graph.double(), q=SVD_RANK)
    if scaling:
        s = eigen_scaled(s)
    approx = u @ torch.diag(s) @ v.T
    return approx.fill_diagonal_(0)


def dino_keys_on_grid(keys: Tensor, dino_grid: tuple[int, int], grid: tuple[int, int], clip_keys: Tensor) -> Tensor:
    """(heads, h*w, d) DINO's patch keys of one window (DINO heads, h'*w', d') in float16, as the authors'
    (`.half()`, clip/model.py:112), their channels split into CLIP's heads (the same heads for ViT-B/16 and
    B/8), each head resized bilinearly to CLIP's grid and min-max mapped onto the range of CLIP's keys
    (heads, h*w, d) of all heads (`_get_dino_key`, `_process_dino_key`, `_normalize_key_range`,
    clip/model.py:315-351)."""
    heads = clip_keys.shape[0]
    per_head = keys.half().permute(0, 2, 1).reshape(heads, -1, *dino_grid)  # (heads, d, h', w')
    resized = F.interpolate(per_head, size=grid, mode="bilinear", align_corners=False)
    resized = resized.reshape(heads, per_head.shape[1], grid[0] * grid[1]).permute(0, 2, 1)  # (heads, h*w, d)
    return range_mapped(resized, clip_keys)


def mixed_attention(k: Tensor, dino_keys: Tensor, grid: tuple[int, int], settings: Settings) -> Tensor:
    """(heads, N, N) CASS's attention of one window from CLIP's patch keys (heads, N, d) and DINO's on CLIP's grid
    (heads, N, d'): each CLIP head's graph mixed with its paired DINO head's low-rank graph, plus NACLIP's
    Gaussian, soft-maxed (`_apply_spectral_strategy`, clip/model.py:367-428, then :299-301)."""
    scale = k.shape[-1] ** -0.5
    clip = torch.bmm(k, k.transpose(1, 2)) * scale
    dino = torch.bmm(dino_keys, dino_keys.transpose(1, 2)) * scale
    distances = spectral_distances(spectrum(dino), spectrum(clip))
    combined = torch.zeros_like(clip)
    for clip_head, dino_head, w in head_pairs(distances, settings.cass_fix_pairing):
        detail = range_mapped(low_rank(dino[dino_head], settings.cass_eigen_scaling), clip[clip_head])
        combined[clip_head] = (w * SCALE_FACTOR * detail + clip[clip_head]) / (w * SCALE_FACTOR + 1)
    omega = gaussian_bias(*grid, settings.sigma, k.device, k.dtype)[1:, 1:]  # patches only
    return (combined + omega).softmax(-1)


@contextlib.contextmanager
def seeded(device: torch.device, seed: int) -> Iterator[None]:
    """The generator that draws on `device` seeded with `seed` while the block runs, its state restored after."""
    if device.type == "cuda":
        with torch.random.fork_rng(devices=[device]), torch.cuda.device(device):
            torch.cuda.manual_seed(seed)
            yield
    elif device.type == "cpu":
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            yield
    else:
        with torch.random.fork_rng(devices=[device], device_type=device.type):
            torch.manual_seed(seed)
            yield


@torch.no_grad()
def cass_attention(inputs: HeadInput, settings: Settings) -> Tensor:
    """(n, heads, N, N) between patches: each window's mixed attention, its SVD draws seeded per window."""
    k = inputs.encoder.last_qkv(inputs.trunk).k[:, :, 1:]  # (n, heads, N, d), [CLS] dropped (clip/model.py:271)
    dino = inputs.models[DINO.name]  # BackboneFeatures of the DINO windows
    keys = dino.qkv.k[:, :, dino.prefix :]  # (n, DINO heads, h'*w', d'), [CLS] dropped (clip/model.py:318)
    weights = []
    for window in range(len(k)):
        on_grid = dino_keys_on_grid(keys[window], dino.grid, inputs.grid, k[window])
        with seeded(k.device, settings.cass_seed):
            weights.append(mixed_attention(k[window], on_grid, inputs.grid, settings))
    return torch.stack(weights)


# -- the text side -------------------------------------------------------------------------------------------
def vanilla_cls(encoder: DenseEncoder, trunk: Trunk) -> Tensor:
    """(n, embed_dim) the [CLS] embedding of CLIP's own last block (residual and FFN kept) on the trunk's output."""
    p = encoder.last_qkv(trunk)
    weights = attention_softmax(p.q[:, :, :1], p.k)  # (n, heads, 1, T): [CLS]'s row
    cls = encoder.finish_block(trunk.tokens[:, :1], encoder.attend(weights, p.v), "vanilla")  # (n, 1, width)
    return encoder.project(cls, drop_cls=False)[:, 0]


def global_similarity(inputs: HeadInput, settings: Settings) -> Tensor:
    """(n, Q) cosine of each query with the [CLS] of a vanilla pass: over the whole image, or over each window
    (`cass_global`; `cass_segmentor.py:188-200,240-243`). A window that is the whole image uses its own pass."""
    encoder, image = inputs.encoder, inputs.image
    whole = image is not None and tuple(image.pixels.shape[-2:]) == tuple(inputs.windows.shape[-2:])
    if settings.cass_global == "window" or whole:
        cls = vanilla_cls(encoder, inputs.trunk)  # (n, embed_dim)
    elif image is None:
        raise ValueError("CASS's global similarity reads the whole image; HeadInput.image is not set")
    else:
        cls = image.kept("cass_cls", lambda: vanilla_cls(encoder, encoder.run_trunk(image.pixels)))  # (1, embed_dim)
    cls = cls.to(inputs.queries.dtype)
    return (cls / cls.norm(dim=-1, keepdim=True)) @ inputs.queries.T


@functools.lru_cache(maxsize=16)
def _clusters(data: bytes, count: int, threshold: float) -> tuple[int, ...]:
    vectors = np.frombuffer(data, dtype=np.float64).reshape(count, -1)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    distances = np.clip(1 - unit @ unit.T, 0, 2)  # sklearn's cosine_distances (a @ a.T: exactly symmetric)
    np.fill_diagonal(distances, 0)
    tree = linkage(squareform(distances), method="ward")
    return tuple(int(c) for c in fcluster(tree, t=threshold, criterion="distance") - 1)


def query_clusters(queries: Tensor, threshold: float) -> np.ndarray:
    """(Q,) cluster index (0-based) of each query: Ward linkage on their cosine distances, cut at `threshold`
    (`hierarchical_clustering`, cass_segmentor.py:98-106), in float64; cached per query set and threshold."""
    if len(queries) < 2:
        return np.zeros(len(queries), dtype=np.int64)
    data = queries.detach().double().cpu().contiguous().numpy()
    return np.array(_clusters(data.tobytes(), len(data), float(threshold)))


def adjusted_queries(
    features: Tensor, queries: Tensor, similarity: Tensor, clusters: np.ndarray, weight: float
) -> Tensor:
    """(n, Q, D) the queries (Q, D) of each window of unit patch features (n, N, D): in each cluster, the query
    most similar to the [CLS] (`similarity` (n, Q); the first on ties) becomes normalise((1 - a) t + a m), m the
    normalised mean of the 2 patches closest to t, a = `weight` (`hierarchical_prompt`, cass_segmentor.py:138-173)."""
    n, count = features.shape[:2]
    text = F.normalize(queries, dim=-1)
    closest = (F.normalize(features, dim=-1) @ text.T).topk(min(TOP_PATCHES, count), dim=1).indices  # (n, 2, Q)
    picked = features[torch.arange(n, device=features.device)[:, None, None], closest]  # (n, 2, Q, D)
    mean = F.normalize(picked.mean(1), dim=-1)  # (n, Q, D)
    candidates = F.normalize((1 - weight) * text + weight * mean, dim=-1)
    labels = torch.as_tensor(clusters, device=features.device)
    members = labels[None] == torch.arange(int(labels.max()) + 1, device=features.device)[:, None]  # (K, Q)
    chosen = similarity[:, None].masked_fill(~members, float("-inf")).argmax(-1)  # (n, K)
    moved = torch.zeros(n, len(queries), dtype=torch.bool, device=features.device).scatter_(1, chosen, True)
    return torch.where(moved[..., None], candidates, queries)


@register_head("cass", params=CassParams, attention=cass_attention, models=dino_model, scores=True)
@torch.no_grad()
def cass_head(inputs: HeadInput, settings: Settings) -> Tensor:
    """CASS's logits (n, h*w, Q) per window: (1 - gsw) f T'^T + gsw g (`forward_feature`, cass_segmentor.py:176-205)."""
    encoder = inputs.encoder
    v = encoder.last_qkv(inputs.trunk).v[:, :, 1:]  # (n, heads, N, d), [CLS] dropped
    out = encoder.project(encoder.attend(cass_attention(inputs, settings), v), drop_cls=False)  # (n, N, embed_dim)
    features = out.to(inputs.queries.dtype)
    features = features / features.norm(dim=-1, keepdim=True)
    similarity = global_similarity(inputs, settings).expand(len(features), -1)  # (n, Q)
    clusters = query_clusters(inputs.queries, settings.cass_cluster_threshold)
    adjusted = adjusted_queries(features, inputs.queries, similarity, clusters, settings.cass_mean_weight)
    weight = settings.cass_global_weight
    return (features @ adjusted.transpose(1, 2)) * (1 - weight) + similarity[:, None] * weight


@register_method
def cass() -> Method:
    """CASS as its authors ran it (github:MICV-yonsei/CASS@228ecdd, files and lines per benchmark)."""
    return Method(
        "cass",
        "CASS (CLIP's last attention distilled with DINO's spectrally matched heads, queries adjusted per window)",
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
                {
                    "slide_crop": 0,
                    "prob_threshold": 0.1,
                    "cass_global_weight": 0.1,
                    "cass_mean_weight": 0.03,
                    "cass_cluster_threshold": 0.10,
                },
                source="configs/cfg_voc21.py:6-7,10-12,21",
            ),
            "voc20": Protocol(
                {
                    "cass_global_weight": 0.4,
                    "cass_mean_weight": 0.02,
                    "cass_cluster_threshold": 0.10,
                    "cass_eigen_scaling": False,
                },
                source="configs/cfg_voc20.py:8-10,20; clip/model.py:467",
            ),
            "context60": Protocol({"prob_threshold": 0.1}, source="configs/cfg_context60.py:6,9-11,21"),
            "context59": Protocol(source="configs/cfg_context59.py:8-10,20"),
            "coco_object": Protocol(
                {
                    "prob_threshold": 0.1,
                    "cass_global_weight": 0.25,
                    "cass_mean_weight": 0.01,
                    "cass_cluster_threshold": 0.10,
                },
                source="configs/cfg_coco_object.py:6,9-11,21",
            ),
            "coco_stuff": Protocol(
                {"cass_global_weight": 0.2, "cass_mean_weight": 0.02, "cass_cluster_threshold": 0.02},
                source="configs/cfg_coco_stuff164k.py:8-10,20",
            ),
            "cityscapes": Protocol(
                {
                    "short_side": 560,
                    "cass_global_weight": 0.1,
                    "cass_mean_weight": 0.03,
                    "cass_cluster_threshold": 0.14,
                    "cass_eigen_scaling": False,
                    "cass_global": "window",
                },
                source="configs/cfg_city_scapes.py:8-10,21; clip/model.py:467; cass_segmentor.py:240-241",
            ),
            "ade20k": Protocol(
                {"cass_global_weight": 0.3, "cass_mean_weight": 0.05, "cass_cluster_threshold": 0.06},
                source="configs/cfg_ade20k.py:8-10,20",
            ),
        },
        source="github:MICV-yonsei/CASS@228ecdd",
        note="DINO ViT-B/8 beside CLIP; windows 224/112 (VOC21: whole image), no PAMR (eval_all.sh:7).",
        head="cass",
        docs="docs/methods/cass.md",
    )
