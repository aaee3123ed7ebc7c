"""ResCLIP (Yang, Deng, Li, Duan, CVPR 2025): residual cross-correlation self-attention (RCS) and
semantic feedback refinement (SFR) on NACLIP's last block.

Run as github:yvhangyang/ResCLIP@0e085f7 runs it (`test_all.sh wo_resi resclip 5`); the head follows
their `clip/model.py`:
- RCS: the mean of the q-k attention maps of blocks 6-9 (indices 5..8), mixed into the last block's
  attention after its softmax, A <- tau ((1 - lambda) A + lambda RCS);
- SFR: a first pass through the last block with RCS, upsampled to the window, refined by PAMR and
  soft-maxed, labels each patch; the prior built from those labels is mixed into the last block's
  logits before the bias and the softmax, tau ((1 - lambda) L + lambda P).
Where each value comes from and what is reproduced as their code computes it (float16 prior, the
path check, query labels, ...): docs/methods/resclip.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from naclip.attention import neighbourhood_bias
from naclip.encoder import DenseEncoder, Taps, Trunk
from naclip.heads import HeadInput, LastBlockParams, register_head
from naclip.methods.registry import Method, Plugin, Protocol, register_method, register_plugin
from naclip.pamr import pamr
from naclip.settings import Settings, option

SFR_PAMR_STEPS, SFR_PAMR_DILATIONS = 10, (8, 16)  # the first pass's PAMR, fixed (model.py:279)


# Their similarities scale after the product, (k k^T) / sqrt(d), where `QKV.kk` scales k first, as open_clip
# does: the same in exact arithmetic, rounded differently, so the strategies keep their own.
def _kk(q: Tensor, k: Tensor) -> Tensor:
    return (k @ k.transpose(-2, -1)) * k.shape[-1] ** -0.5


def _qq(q: Tensor, k: Tensor) -> Tensor:
    return (q @ q.transpose(-2, -1)) * q.shape[-1] ** -0.5


def _qk(q: Tensor, k: Tensor) -> Tensor:
    return (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)


# Their attention strategies (custom_attn, model.py:473-585) by our attention name: the logits that
# each take the SFR prior and a softmax (summed when two). Only 'naclip' adds the Gaussian bias.
STRATEGIES: dict[str, tuple[Callable[[Tensor, Tensor], Tensor], ...]] = {
    "naclip": (_kk,),  # their 'resclip' (and 'naclip', the same code)
    "csa": (_qq, _kk),  # their 'sclip'
    "qq": (_qq,),  # their 'clearclip'
    "vanilla": (_qk,),  # their 'vanilla'
}


@dataclass(frozen=True)
class ResclipParams(LastBlockParams):
    """NACLIP's last block (attention: one of ResCLIP's strategies) with RCS and SFR."""

    resclip_rcs_layers: tuple[int, ...] = option(
        (5, 6, 7, 8),
        "method",
        "ResCLIP: trunk blocks (0-based) whose q-k attention maps RCS averages",
        lambda v: len(v) > 0 and min(v) >= 0,
        "block indices >= 0",
    )
    resclip_rcs_weights: tuple[float, ...] = option(
        (2.0, 0.6),
        "method",
        "ResCLIP: (tau, lambda) of RCS, attention <- tau ((1 - lambda) attention + lambda RCS); 1,0 turns RCS off",
        lambda v: len(v) == 2 and v[0] > 0 and 0 <= v[1] <= 1,
        "tau > 0 and 0 <= lambda <= 1, like 2,0.3",
    )
    resclip_sfr_weights: tuple[float, ...] = option(
        (2.1, 0.6),
        "method",
        "ResCLIP: (tau, lambda) of SFR, logits <- tau ((1 - lambda) logits + lambda prior); 1,0: off, no first pass",
        lambda v: len(v) == 2 and v[0] > 0 and 0 <= v[1] <= 1,
        "tau > 0 and 0 <= lambda <= 1, like 1.8,0.7",
    )
    resclip_temp_threshold: float = option(
        0.1,
        "method",
        "ResCLIP: first-pass pixels whose top query probability is below this take query 0",
        lambda v: 0 <= v <= 1,
        "0..1",
    )
    resclip_delete_same_entity: bool = option(
        True, "method", "ResCLIP: decay the prior between patches of one query whose path leaves that query"
    )
    resclip_whole_path: bool = option(
        False,
        "method",
        "ResCLIP: check the whole path between two patches (the authors' code checks only its first distance/max part)",
    )

    def check(self) -> None:
        super().check()
        if self.attention not in STRATEGIES:
            raise ValueError(
                f"the resclip head runs ResCLIP's attention strategies, expected attention naclip (their "
                f"'resclip'), csa ('sclip'), qq ('clearclip') or vanilla; got {self.attention!r}"
            )
        if self.resclip_sfr_weights[1] > 0 and not self.sigma > 0:
            raise ValueError(
                f"SFR smooths its prior with a Gaussian of std sigma; expected sigma > 0, got {self.sigma}"
            )


def residual_mix(x: Tensor, other: Tensor | None, weights: Sequence[float]) -> Tensor:
    """tau ((1 - lambda) x + lambda other) for weights (tau, lambda); tau x when lambda is 0."""
    tau, share = weights
    return tau * ((1 - share) * x + share * other) if share else tau * x


def resclip_attention(
    q: Tensor,
    k: Tensor,
    omega: Tensor | None,
    attention: str,
    rcs: Tensor | None = None,
    rcs_weights: Sequence[float] = (1.0, 0.0),
    prior: Tensor | None = None,
    sfr_weights: Sequence[float] = (1.0, 0.0),
) -> Tensor:
    """Attention weights (n, heads, T, T) from q, k (n, heads, T, d): each strategy's logits mixed with
    the SFR prior (n, 1, T, T), plus omega, soft-maxed (and summed), then mixed with RCS (n, heads, T, T)."""
    parts = []
    for logits_of in STRATEGIES[attention]:
        logits = logits_of(q, k)
        logits = residual_mix(logits, prior, sfr_weights).to(logits.dtype)
        if omega is not None:
            logits = logits + omega
        parts.append(logits.softmax(-1))
    return residual_mix(sum(parts[1:], parts[0]), rcs, rcs_weights)


def mixed_attention(
    encoder: DenseEncoder,
    q: Tensor,
    k: Tensor,
    grid: tuple[int, int],
    settings: Settings,
    rcs: Tensor | None,
    prior: Tensor | None = None,
    sfr_weights: Sequence[float] = (1.0, 0.0),
) -> Tensor:
    """The last block's attention weights (n, heads, T, T) from its q, k (n, heads, T, d): the strategy's
    logits with the SFR prior and the Gaussian bias, soft-maxed, then RCS; the head's and the inspection's."""
    omega = neighbourhood_bias(settings.attention, grid, settings.sigma, q)
    return resclip_attention(q, k, omega, settings.attention, rcs, settings.resclip_rcs_weights, prior, sfr_weights)


def last_block(
    encoder: DenseEncoder,
    trunk: Trunk,
    grid: tuple[int, int],
    settings: Settings,
    rcs: Tensor | None,
    prior: Tensor | None = None,
    sfr_weights: Sequence[float] = (1.0, 0.0),
) -> Tensor:
    """Patch features (n, h*w, embed_dim) of the last block with ResCLIP's attention on the trunk's tokens;
    without `sfr_weights` no SFR (the first pass)."""
    p = encoder.last_qkv(trunk)  # projected once for the first pass and the final one
    weights = mixed_attention(encoder, p.q, p.k, grid, settings, rcs, prior, sfr_weights)
    return encoder.project(encoder.finish_block(trunk.tokens, encoder.attend(weights, p.v), settings.arch))


def residual_attention(encoder: DenseEncoder, trunk: Trunk, layers: Sequence[int]) -> Tensor:
    """RCS: the mean of the trunk blocks' attention weights, (n, heads, T, T)."""
    missing = [i for i in layers if i not in trunk.attention]
    if missing:
        last = encoder.depth - 2
        raise ValueError(
            f"resclip_rcs_layers={tuple(layers)} asks for blocks {missing}, but this model's trunk has blocks "
            f"0..{last}; expected indices up to {last}"
        )
    return torch.stack([trunk.attention[i] for i in layers]).mean(0)


def patch_mode(labels: Tensor, patch: tuple[int, int], grid: tuple[int, int]) -> Tensor:
    """(n, h, w) the most frequent value of each patch's pixels in labels (n, H, W), from the top left."""
    (ph, pw), (h, w) = patch, grid
    blocks = labels[:, : h * ph, : w * pw].reshape(len(labels), h, ph, w, pw)
    blocks = blocks.transpose(2, 3).reshape(len(labels), h, w, ph * pw)  # (n, h, w, pixels of a patch)
    return blocks.mode(-1).values


def first_pass_labels(inputs: HeadInput, settings: Settings, rcs: Tensor | None) -> Tensor:
    """(n, h, w) SFR's patch labels: the first pass's window segmentation (PAMR, softmax, temp_thd) per patch."""
    encoder, grid, queries = inputs.encoder, inputs.grid, inputs.queries
    features = last_block(encoder, inputs.trunk, grid, settings, rcs)
    features = F.normalize(features.to(queries.dtype), dim=-1)
    logits = (features @ queries.T).transpose(1, 2).reshape(len(features), -1, *grid)  # (n, Q, h, w)
    size = tuple(inputs.windows.shape[-2:])
    logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)  # (n, Q, H, W)
    logits = pamr(inputs.windows.to(logits.dtype), logits, SFR_PAMR_STEPS, SFR_PAMR_DILATIONS)
    probs = (logits * settings.logit_scale).softmax(1)
    labels = probs.argmax(1)  # (n, H, W) query indices
    labels[probs.amax(1) < settings.resclip_temp_threshold] = 0
    return patch_mode(labels, encoder.patch_size, grid)


def paths_stay(labels: Tensor, whole: bool = False) -> Tensor:
    """(h, w, h, w) whether every patch sampled on the way from patch (i, j) to patch (k, l) of the
    patch labels (h, w) carries the label of (i, j).

    Step s = 1..d of a path of Chebyshev length d samples t = s / d_max, as their `check_path` does
    (only the first d / d_max of the way), or t = s / d with `whole`; the points are rounded half to
    even from float32, as theirs.
    """
    h, w = labels.shape
    rows = torch.arange(h, device=labels.device).view(h, 1, 1, 1)
    cols = torch.arange(w, device=labels.device).view(1, w, 1, 1)
    to_rows, to_cols = rows.view(1, 1, h, 1), cols.view(1, 1, 1, w)
    distance = torch.maximum((rows - to_rows).abs(), (cols - to_cols).abs())  # (h, w, h, w)
    longest = max(h, w) - 1
    fractions = torch.linspace(0, 1, longest + 1, device=labels.device)
    start = labels.view(h, w, 1, 1)
    stays = torch.ones_like(distance, dtype=torch.bool)
    for step in range(1, longest + 1):
        t = (step / distance.clamp(min=1)).clamp(max=1) if whole else fractions[step]
        row = (rows * (1 - t) + to_rows * t).round().long()  # (h, 1, h, 1), or (h, w, h, w) with `whole`
        col = (cols * (1 - t) + to_cols * t).round().long()
        stays &= (labels[row, col] == start) | (distance < step)
    return stays


def smooth_rows(prior: Tensor, sigma: float) -> Tensor:
    """Rows of (P, P) convolved with a normalised 1-D Gaussian (odd size near 6 sigma + 1, zero padded),
    clipped at 0 and normalised to sum to 1."""
    size = min(len(prior), int(6 * sigma + 1))
    size += 1 - size % 2
    offsets = torch.arange(size, device=prior.device) - size // 2
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    smoothed = F.conv1d(prior[:, None], kernel.view(1, 1, -1), padding=size // 2)[:, 0].relu()  # (P, P)
    return smoothed / (smoothed.sum(1, keepdim=True) + 1e-8)


def semantic_prior(labels: Tensor, sigma: float, delete_same_entity: bool, whole_path: bool = False) -> Tensor:
    """SFR's attention prior (1 + h*w, 1 + h*w), float32, zero [CLS] row and column, from patch labels (h, w)."""
    h, w = labels.shape
    flat = labels.flatten()  # (P,) row-major
    same = (flat[:, None] == flat[None, :]).float()  # (P, P)
    if delete_same_entity:
        positions = torch.arange(h * w, device=labels.device)
        rows, cols = positions // w, positions % w
        distance = torch.maximum((rows[:, None] - rows).abs(), (cols[:, None] - cols).abs())  # (P, P) Chebyshev
        stays = paths_stay(labels, whole_path).view(h * w, h * w)
        same = torch.where(stays, same, same * torch.exp(-distance / (max(h, w) - 1)))
    prior = same.new_zeros(h * w + 1, h * w + 1)
    prior[1:, 1:] = smooth_rows(same, sigma)
    return prior


def _taps(settings: Settings) -> Taps:
    uses_rcs = settings.resclip_rcs_weights[1] > 0
    return Taps(attention=frozenset(settings.resclip_rcs_layers if uses_rcs else ()))


def rcs_and_prior(inputs: HeadInput, settings: Settings) -> tuple[Tensor | None, Tensor | None]:
    """RCS (n, heads, T, T) from the trunk and SFR's prior (n, 1, T, T, float16) from a first pass; None when off."""
    rcs = None
    if settings.resclip_rcs_weights[1] > 0:
        rcs = residual_attention(inputs.encoder, inputs.trunk, settings.resclip_rcs_layers)
    prior = None
    if settings.resclip_sfr_weights[1] > 0:
        if not len(inputs.queries):
            raise ValueError(
                "SFR's prior comes from a first pass scored against the text queries, and there are none: set the "
                "classes first (Segmenter.set_classes), or turn SFR off with resclip_sfr_weights=1,0"
            )
        labels = first_pass_labels(inputs, settings, rcs)
        delete, whole = settings.resclip_delete_same_entity, settings.resclip_whole_path
        priors = [semantic_prior(window, settings.sigma, delete, whole) for window in labels]
        prior = torch.stack([p / p.amax() for p in priors])[:, None].to(torch.float16)  # (n, 1, T, T)
    return rcs, prior


@torch.no_grad()
def resclip_last_attention(inputs: HeadInput, settings: Settings) -> Tensor:
    """The attention weights (n, heads, T, T) that the head's last block applies: RCS and SFR mixed in.

    Rows sum to tau of RCS (2 with the defaults; twice that for the two-softmax 'csa' strategy).
    """
    rcs, prior = rcs_and_prior(inputs, settings)
    p = inputs.encoder.last_qkv(inputs.trunk)
    return mixed_attention(inputs.encoder, p.q, p.k, inputs.grid, settings, rcs, prior, settings.resclip_sfr_weights)


@register_head("resclip", params=ResclipParams, taps=_taps, attention=resclip_last_attention)
@torch.no_grad()
def resclip_head(inputs: HeadInput, settings: Settings) -> Tensor:
    """ResCLIP's patch features (n, h*w, embed_dim): RCS from the trunk, SFR from a first pass."""
    rcs, prior = rcs_and_prior(inputs, settings)
    sfr_weights = settings.resclip_sfr_weights
    return last_block(inputs.encoder, inputs.trunk, inputs.grid, settings, rcs, prior, sfr_weights)


DEFAULTS = dict(
    attention="naclip",
    arch="reduced",
    sigma=5.0,
    logit_scale=40.0,
    prob_threshold=0.0,
    area_threshold=0.0,
    short_side=336,
    slide_crop=224,
    slide_stride=112,
    pamr_steps=0,
    renormalise=True,
    resclip_rcs_layers=(5, 6, 7, 8),
    resclip_rcs_weights=(2.0, 0.6),
    resclip_sfr_weights=(2.1, 0.6),
    resclip_temp_threshold=0.1,
    resclip_delete_same_entity=True,
    resclip_whole_path=False,
)


def _protocol(temp: float, rcs: tuple[float, float], sfr: tuple[float, float], source: str, **more: object) -> Protocol:
    settings = dict(resclip_temp_threshold=temp, resclip_rcs_weights=rcs, resclip_sfr_weights=sfr, **more)
    return Protocol(settings, source=source)


@register_method
def resclip() -> Method:
    """The README's main results: `test_all.sh wo_resi resclip 5`, each benchmark's config."""
    return Method(
        "resclip",
        "ResCLIP (RCS and SFR on NACLIP's last block)",
        DEFAULTS,
        {
            "voc21": _protocol(
                0.5, (2.0, 0.3), (2.2, 0.7), "configs/cfg_voc21.py:6-11,20", prob_threshold=0.1, slide_crop=0
            ),
            "voc20": _protocol(0.1, (2.0, 0.6), (2.1, 0.6), "configs/cfg_voc20.py:6-10,19", slide_crop=0),
            "context60": _protocol(0.3, (2.0, 0.3), (1.8, 0.7), "configs/cfg_context60.py:6-10,19", prob_threshold=0.1),
            "context59": _protocol(0.25, (2.0, 0.4), (1.8, 0.7), "configs/cfg_context59.py:6-9,18"),
            "coco_object": _protocol(
                0.11, (2.0, 0.4), (1.8, 0.7), "configs/cfg_coco_object.py:6-10,19", prob_threshold=0.1
            ),
            "coco_stuff": _protocol(0.11, (2.0, 0.4), (1.8, 0.7), "configs/cfg_coco_stuff164k.py:6-9,18"),
            "cityscapes": _protocol(0.1, (2.0, 0.2), (2.1, 0.6), "configs/cfg_city_scapes.py:6-9,18", short_side=560),
            "ade20k": _protocol(0.25, (2.0, 0.3), (2.1, 0.7), "configs/cfg_ade20k.py:6-9,18"),
        },
        source="github:yvhangyang/ResCLIP@0e085f7",
        note="RCS and SFR on the reduced k-k block with the Gaussian bias; no final PAMR; whole image on VOC.",
        head="resclip",
        docs="docs/methods/resclip.md",
    )


def _on_last_block(base: Method, in_code: bool) -> Method:
    """`base` with its last block run through the resclip head: its attention strategy and architecture kept."""
    if base.head != "last_block":
        raise ValueError(
            f"the resclip plug-in remakes a replaced last block (head 'last_block'); method {base.name!r} has head "
            f"{base.head!r}"
        )
    block = base.head_spec.params(**base.own_params(base.defaults))
    if block.attention not in STRATEGIES:
        raise ValueError(
            f"the resclip plug-in runs ResCLIP's attention strategies ({', '.join(STRATEGIES)}); method {base.name!r} "
            f"uses {block.attention!r}"
        )
    own = dict(attention=block.attention, arch=block.arch)
    if in_code:
        return dataclasses.replace(resclip(), defaults={**DEFAULTS, **own})
    plugin_defaults = {key: value for key, value in DEFAULTS.items() if key.startswith("resclip_")}
    return dataclasses.replace(base, head="resclip", defaults={**base.defaults, **plugin_defaults, **own})


@register_plugin
def resclip_plugin() -> Plugin:
    """RCS and SFR on another method's last block (``sclip+resclip``, ``clearclip+resclip``).

    Their code runs the plug-in with `--arch w_resi --attn sclip` or `--attn clearclip`
    (`clip/model.py:97-104`) under ResCLIP's own per-benchmark configs, which the published combinations
    therefore take; on other bases the base's protocol stands, with ResCLIP's default RCS and SFR.
    """
    return Plugin(
        "resclip",
        "ResCLIP's RCS and SFR",
        _on_last_block,
        published={"sclip": "github:yvhangyang/ResCLIP@0e085f7", "clearclip": "github:yvhangyang/ResCLIP@0e085f7"},
        in_code=frozenset({"sclip", "clearclip"}),
    )
