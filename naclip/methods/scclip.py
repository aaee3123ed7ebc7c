"""SC-CLIP (Bai, Liu, Han, Zhang, Tang, 2024): Self-Calibrated CLIP.

The head, as the authors' `VisionTransformer.forward` (github:SuleBai/SC-CLIP@0417ba9,
`clip/model.py:254-316`) computes it from the tokens after the last trunk block, per window:
anomaly tokens found by a local outlier factor and replaced by their neighbours' mean; the tokens
aggregated by block 8's patch similarity; the last block reduced to its attention, averaged with
that similarity's attention, plus 0.3 x [CLS], aggregated by block 3's similarity; the sum of
blocks 3..9's tokens through the same attention, added. Where each value comes from, and what is
reproduced as their code computes it (the simplified LOF, the anomaly placement on non-square
grids, ...): docs/methods/scclip.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from naclip.encoder import DenseEncoder, Taps
from naclip.heads import HeadInput, register_head
from naclip.methods.registry import Method, Protocol, register_method
from naclip.settings import Params, Settings, option, positive

MID_SCALE = 3.0  # custom_attn: (s - mean s) * 3.0, clip/model.py:329
AGGREGATE_EPS = 1e-6  # adaptively_aggregate, clip/model.py:344
DISTANCE_ELEMENTS = 2**22  # elements of one chunk of pairwise differences (16 MB in float32: the LOF's memory)


@dataclass(frozen=True)
class ScclipParams(Params):
    """SC-CLIP's own parameters; the layer indices are ViT-B/16's (the init commit's ViT-L/14 config used
    pre 16, post 6, fusion 8..18, res_cls 0.1)."""

    scclip_neighbours: int = option(
        30, "method", "SC-CLIP: neighbours of the outlier factor that finds anomaly patch tokens", positive, "> 0"
    )
    scclip_contamination: float = option(
        0.05,
        "method",
        "SC-CLIP: share of patch tokens flagged as anomalies (outlier factor above this upper quantile)",
        lambda v: 0 <= v < 1,
        "in [0, 1)",
    )
    scclip_pre_layer: int = option(
        8,
        "method",
        "SC-CLIP: trunk block (0-based) whose patch similarity aggregates the tokens and guides the last attention",
        lambda v: v >= 0,
        ">= 0",
    )
    scclip_post_layer: int = option(
        3,
        "method",
        "SC-CLIP: trunk block (0-based) whose patch similarity aggregates the last block's output",
        lambda v: v >= 0,
        ">= 0",
    )
    scclip_fusion_layers: tuple[int, ...] = option(
        (3, 4, 5, 6, 7, 8, 9),
        "method",
        "SC-CLIP: trunk blocks (0-based) whose tokens are summed and passed through the last block again",
        lambda v: len(v) > 0 and min(v) >= 0,
        "block indices >= 0",
    )
    scclip_beta: float = option(
        0.4,
        "method",
        "SC-CLIP: patch similarities below this are left out of the aggregations",
        lambda v: -1 <= v <= 1,
        "in [-1, 1]",
    )
    scclip_res_cls: float = option(
        0.3,
        "method",
        "SC-CLIP: weight of the [CLS] token added to every patch after the last block",
        lambda v: v >= 0,
        ">= 0",
    )
    scclip_fix_positions: bool = option(
        False,
        "method",
        "SC-CLIP: put anomaly patches at their own (row, column); false keeps the authors' (i // rows, i % rows), "
        "the same on square patch grids",
    )


def squared_distances(points: Tensor) -> Tensor:
    """(n, N, N) squared distances ||x_i - x_j|| ** 2 within each of n sets of N points (n, N, D).

    Computed as the authors do (norm of the difference, then squared), in chunks of rows; each
    entry is the same whatever the chunk.
    """
    n, count, dim = points.shape
    rows = max(1, DISTANCE_ELEMENTS // (n * count * dim))
    parts = [
        torch.linalg.vector_norm(points[:, start : start + rows, None] - points[:, None], dim=-1) ** 2
        for start in range(0, count, rows)
    ]  # each (n, rows, N)
    return torch.cat(parts, dim=1)


def lof_scores(points: Tensor, neighbours: int) -> Tensor:
    """The authors' local outlier factor (n, N) of each of n sets of N points (n, N, D).

    Simplified LOF on squared distances: the local reachability density of a point is
    `neighbours / mean(k-distance)` of the point itself, and its score the mean ratio of its
    neighbours' densities to its own (`lof_pytorch`, clip/model.py:208-220).
    """
    count = points.shape[1]
    if count <= neighbours:
        raise ValueError(f"SC-CLIP's LOF needs more than {neighbours} patches per window, got {count}")
    distances, index = torch.topk(squared_distances(points), neighbours + 1, dim=-1, largest=False)
    distances, index = distances[..., 1:], index[..., 1:]  # (n, N, k): the point itself dropped
    reach = torch.maximum(distances, distances[..., -1:])
    density = neighbours / reach.mean(-1).nan_to_num(nan=1e-6)  # (n, N)
    around = density.gather(1, index.flatten(1)).view_as(index)  # (n, N, k)
    return (around / density[..., None]).mean(-1)


def lof_outliers(points: Tensor, neighbours: int, contamination: float) -> Tensor:
    """(n, N) bool: the points whose LOF score is above the (1 - contamination) quantile of their set."""
    scores = lof_scores(points, neighbours)
    threshold = torch.quantile(scores.float(), 1 - contamination, dim=-1, keepdim=True)
    return scores > threshold.to(scores.dtype)  # compared in the scores' precision, as theirs


def authors_positions(
    outliers: Tensor,
    grid: tuple[int, int],
    origin: str = "SC-CLIP places anomaly patch i at (i // rows, i % rows) (clip/model.py:275)",
    fix: str = "scclip_fix_positions",
) -> Tensor:
    """Flagged patches (n, rows*cols) moved where the authors put patch i: row i // rows, column i % rows.

    The identity on square grids. ValueError where their code indexes off the grid; the message says
    which code does (`origin`) and the option that places patches at their own position (`fix`).
    """
    rows, cols = grid
    index = torch.arange(rows * cols, device=outliers.device)
    row, col = index // rows, index % rows
    inside = (row < rows) & (col < cols)
    if (outliers & ~inside).any():
        raise ValueError(
            f"{origin}, off this {rows} x {cols} patch grid, where the authors' code fails; set {fix}=true to place "
            "it at its own position"
        )
    moved = torch.zeros_like(outliers)
    moved[:, row[inside] * cols + col[inside]] = outliers[:, inside]
    return moved


def neighbour_sum(maps: Tensor) -> Tensor:
    """Sum over the 8 neighbours of each cell of (n, h, w, D) maps, zero beyond the border."""
    height, width = maps.shape[1:3]
    padded = F.pad(maps, (0, 0, 1, 1, 1, 1))  # (n, h + 2, w + 2, D)
    shifts = [(dy, dx) for dy in range(3) for dx in range(3) if (dy, dx) != (1, 1)]
    return sum(padded[:, dy : dy + height, dx : dx + width] for dy, dx in shifts)


def mean_interpolation(tokens: Tensor, outliers: Tensor, grid: tuple[int, int]) -> Tensor:
    """Patch tokens (n, N, D) with each flagged one replaced by the mean of its unflagged 3 x 3 neighbours.

    A flagged token with no unflagged neighbour is kept (`mean_interpolation`, clip/model.py:348-373).
    """
    n, count, dim = tokens.shape
    keep = (~outliers).to(tokens.dtype).view(n, *grid, 1)  # (n, h, w, 1)
    sums = neighbour_sum(tokens.reshape(n, *grid, dim) * keep).reshape(n, count, dim)
    counts = neighbour_sum(keep).reshape(n, count, 1)  # unflagged neighbours
    replace = outliers[..., None] & (counts > 0)
    return torch.where(replace, sums / counts.clamp_min(1), tokens)


def similarity(tokens: Tensor) -> Tensor:
    """(n, N, N) cosine similarities between the patch tokens (n, N, D)."""
    unit = F.normalize(tokens, dim=-1)
    return unit @ unit.transpose(1, 2)


def aggregation(similarities: Tensor, beta: float) -> Tensor:
    """(n, N, N) weights that average each token over the patches of similarity >= beta, weighted by it.

    Applied as `weights @ features` (`adaptively_aggregate`, clip/model.py:343-346).
    """
    weights = similarities.masked_fill(similarities < beta, 0.0)
    return weights / (weights.sum(-1, keepdim=True) + AGGREGATE_EPS)


def mid_attention(similarities: Tensor) -> Tensor:
    """(n, 1, N, N) softmax of the centred, scaled similarities, -inf where below their mean (one per head alike)."""
    centred = (similarities - similarities.mean((-2, -1), keepdim=True)) * MID_SCALE
    return centred.masked_fill(centred < 0, float("-inf")).softmax(-1)[:, None]


def calibrated_weights(k: Tensor, mid: Tensor) -> Tensor:
    """(n, heads, N, N) the last block's attention weights (mid + softmax(k k^T / sqrt(d))) / 2 from its keys
    (n, heads, N, head_dim) and the mid-layer attention (n, 1, N, N)."""
    keys = ((k @ k.transpose(-2, -1)) * k.shape[-1] ** -0.5).softmax(-1)
    return (mid + keys) / 2


def calibrated_attention(encoder: DenseEncoder, block: nn.Module, tokens: Tensor, mid: Tensor) -> Tensor:
    """The last block's attention on patch tokens (n, N, width) with weights (mid + softmax(k k^T / sqrt(d))) / 2."""
    p = encoder.qkv(block.ln_1(tokens), block)  # each (n, heads, N, head_dim)
    return block.ls_1(encoder.attend(calibrated_weights(p.k, mid), p.v, block))  # (n, N, width)


def _layers(settings: Settings) -> frozenset[int]:
    return frozenset({settings.scclip_pre_layer, settings.scclip_post_layer, *settings.scclip_fusion_layers})


def _check_depth(encoder: DenseEncoder, settings: Settings) -> None:
    trunk_blocks = encoder.depth - 1
    if max(_layers(settings)) >= trunk_blocks:
        raise ValueError(
            f"SC-CLIP's layers (scclip_pre_layer={settings.scclip_pre_layer}, scclip_post_layer="
            f"{settings.scclip_post_layer}, scclip_fusion_layers={settings.scclip_fusion_layers}) need trunk blocks "
            f"0..{max(_layers(settings))}; this model has {trunk_blocks} (0..{trunk_blocks - 1}); the defaults are "
            "ViT-B/16's"
        )


@dataclass
class Calibration:
    """What SC-CLIP's last block works with, per window: the anomaly-corrected patch tokens aggregated by the
    pre layer's similarity, that similarity's attention, and the post layer's aggregation of the output."""

    tokens: Tensor  # (n, N, width) entering the last block
    mid: Tensor  # (n, 1, N, N) mid_attention of the pre layer's similarity
    post: Tensor  # (n, N, N) aggregation applied to the last block's output


def calibrate(inputs: HeadInput, settings: Settings) -> Calibration:
    """Steps 1-2 of the head (see the module) and the post aggregation, from the trunk's output and taps."""
    encoder, trunk, grid = inputs.encoder, inputs.trunk, inputs.grid
    _check_depth(encoder, settings)
    tokens = trunk.tokens[:, 1:]  # (n, N, width)
    outliers = lof_outliers(tokens, settings.scclip_neighbours, settings.scclip_contamination)  # (n, N)
    if not settings.scclip_fix_positions:
        outliers = authors_positions(outliers, grid)
    pre = similarity(mean_interpolation(trunk.layers[settings.scclip_pre_layer][:, 1:], outliers, grid))
    aggregated = aggregation(pre, settings.scclip_beta) @ mean_interpolation(tokens, outliers, grid)
    post = aggregation(similarity(trunk.layers[settings.scclip_post_layer][:, 1:]), settings.scclip_beta)
    return Calibration(aggregated, mid_attention(pre), post)


@torch.no_grad()
def scclip_attention(inputs: HeadInput, settings: Settings) -> Tensor:
    """(n, heads, N, N) between patches: the weights with which the head's output patch i takes patch j's value
    in the last block, the calibrated attention followed by the post aggregation, post @ (mid + K) / 2.

    The fusion pass (step 4) goes through the same mid term with its own keys; the aggregation before the
    block mixes the tokens before their values are taken. Rows sum to 1 (less the aggregation's 1e-6).
    """
    calibration = calibrate(inputs, settings)
    encoder = inputs.encoder
    k = encoder.qkv(encoder.last.ln_1(calibration.tokens)).k
    return calibration.post[:, None] @ calibrated_weights(k, calibration.mid)


@register_head(
    "scclip", params=ScclipParams, taps=lambda settings: Taps(layers=_layers(settings)), attention=scclip_attention
)
@torch.no_grad()
def scclip_head(inputs: HeadInput, settings: Settings) -> Tensor:
    """SC-CLIP's patch features (n, h*w, embed_dim), each window on its own."""
    encoder, trunk = inputs.encoder, inputs.trunk
    block = encoder.last
    calibration, res_cls = calibrate(inputs, settings), settings.scclip_res_cls
    x = calibrated_attention(encoder, block, calibration.tokens, calibration.mid) + res_cls * trunk.tokens[:, :1]
    x = calibration.post @ x
    fused = sum(trunk.layers[i] for i in settings.scclip_fusion_layers)  # (n, 1 + N, width)
    fused = calibrated_attention(encoder, block, fused[:, 1:], calibration.mid) + res_cls * fused[:, :1]
    x = x + calibration.post @ fused
    return encoder.project(x, drop_cls=False)  # patch tokens only already


@register_method
def scclip() -> Method:
    """SC-CLIP as its authors ran it (github:SuleBai/SC-CLIP@0417ba9, files and lines per benchmark)."""
    return Method(
        "scclip",
        "SC-CLIP (anomaly tokens resolved, mid-layer calibrated attention, multi-level fusion)",
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
                source="configs/cfg_voc21.py:6-7,16",
            ),
            "voc20": Protocol(source="configs/cfg_voc20.py:14"),
            "context60": Protocol({"prob_threshold": 0.15}, source="configs/cfg_context60.py:6,15"),
            "context59": Protocol(source="configs/cfg_context59.py:14"),
            "coco_object": Protocol(
                {"logit_scale": 55.0, "prob_threshold": 0.35}, source="configs/cfg_coco_object.py:6,15"
            ),
            "coco_stuff": Protocol(source="configs/cfg_coco_stuff164k.py:14"),
            "cityscapes": Protocol({"short_side": 560}, source="configs/cfg_city_scapes.py:14"),
            "ade20k": Protocol(source="configs/cfg_ade20k.py:14"),
        },
        source="github:SuleBai/SC-CLIP@0417ba9",
        note="Windows 224/112 everywhere (Cityscapes at 560), no PAMR; area threshold on VOC21.",
        head="scclip",
        docs="docs/methods/scclip.md",
    )
