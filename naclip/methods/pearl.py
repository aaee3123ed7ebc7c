"""PEARL (CVPR 2026): Procrustes alignment in the last attention block, then text-aware Laplacian propagation.

As the authors' code computes it (github:PGSmall/PEARL@c26062b):

1. `pearl_attention`: NACLIP's reduced last block (attention only, [CLS] kept as a token,
   `clip/model.py:124-125`) with `pa_attn` (`pearl/attn.py:22-78`), in float32: the keys rotated towards the
   queries by the polar factor of their weighted-centred cross-covariance, that factor approximated by
   five coupled Newton-Schulz steps (not an orthogonal matrix), plus a centred key-key term;
2. `tlp`: text-aware Laplacian propagation (`pearl/prop.py:131-176`) of the logits at the original size,
   run as the head's `refine` step: pooled to a coarse grid, a confidence-weighted graph solve by conjugate
   gradients with edges from the image's gray gradient, upsampled back.

`TlpParams` are the propagation's own parameters; `PearlParams` adds the attention's. What is reproduced as
their code has it (the diagonal-only text matrix, the five steps, the pooling that drops leftover pixels, ...)
and what is not: docs/methods/pearl.md.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from naclip.heads import HeadInput, RefineInput, register_head, stacked_head
from naclip.methods.registry import Method, Plugin, Protocol, register_method, register_plugin
from naclip.settings import Params, Settings, option, positive

CENTRE_EPS = 1e-6  # w / (sum w + 1e-6), attn.py:44
ROTATION_EPS = 1e-6  # floor of ||A||_F and ridge added to A / ||A||_F, attn.py:9-10,53
TEXT_TEMPERATURE = 0.5  # softmax(T T^T / 0.5), prop.py:36,46
TEXT_DIAGONAL = 10.0  # S + 10 I before the rows are normalised, prop.py:37,47-50
EDGE_SHARPNESS = 5.0  # exp(-5 |grad gray| / mean |grad gray|), prop.py:38,73-74
MIN_CONFIDENCE = 0.05  # Cw = clamp(conf, 0.05) ** 2 (1 + agree), prop.py:158
TLP_EPS = 1e-6  # TLP(eps=1e-6): gradient means and text-matrix rows, prop.py:32-34
CG_EPS = 1e-12  # the conjugate-gradient denominators, prop.py:120,125
GRAY = (0.299, 0.587, 0.114)  # of the normalised R, G, B channels, prop.py:8-12


# -- text-aware Laplacian propagation (TLP) -----------------------------------------------------------------------
@dataclass(frozen=True)
class TlpParams(Params):
    """The propagation's own parameters (`pearl/prop.py`; the other constants are fixed there and here)."""

    tlp_enabled: bool = option(
        True, "method", "TLP: propagate the logits at the original size (the README's run.sh --prop on)"
    )
    tlp_grid: int = option(
        80,
        "method",
        "TLP: target grid; the logits and image are average-pooled by round(H / grid) x round(W / grid) pixels",
        positive,
        "> 0",
    )
    tlp_steps: int = option(25, "method", "TLP: conjugate-gradient steps of the graph solve", lambda v: v >= 0, ">= 0")
    tlp_fix_text_matrix: bool = option(
        False,
        "method",
        "TLP: use the whole text-similarity matrix (cross-class terms); false keeps the authors' "
        "einsum('cc,...'), which reads its diagonal only",
    )


def pool_sizes(height: int, width: int, grid: int) -> tuple[int, int]:
    """The pooling (rows, columns) that brings (height, width) near `grid`: Python's round (half to even), >= 1."""
    return max(1, round(height / grid)), max(1, round(width / grid))


def text_matrix(queries: Tensor) -> Tensor:
    """(Q, Q) float32 `bind_text` (prop.py:43-51): row softmax of the queries' cosines / 0.5, plus 10 I, rows
    normalised to 1 (less the 1e-6); computed in the queries' precision."""
    unit = F.normalize(queries, dim=-1)
    matrix = torch.softmax(unit @ unit.T / TEXT_TEMPERATURE, dim=1)
    matrix = matrix + TEXT_DIAGONAL * torch.eye(len(matrix), device=matrix.device, dtype=matrix.dtype)
    return (matrix / (matrix.sum(dim=1, keepdim=True) + TLP_EPS)).float()


def text_mix(probs: Tensor, matrix: Tensor, full: bool) -> Tensor:
    """(B, Q, H, W): the text matrix (Q, Q) applied to the probabilities (B, Q, H, W) of each pixel.

    The authors' `einsum('cc,bcij->bcij', S, p)` (prop.py:63,79,84) takes the diagonal of S only: S_cc p_c.
    `full`: (S p)_c = sum_d S_cd p_d, the cross-class (text-aware) version.
    """
    if full:
        return torch.einsum("cd,bdij->bcij", matrix, probs)
    return matrix.diagonal()[:, None, None] * probs


def gray(image: Tensor) -> Tensor:
    """(B, 1, H, W) luma of (B, 3, H, W) normalised channels (prop.py:8-12)."""
    r, g, b = image[:, 0:1], image[:, 1:2], image[:, 2:3]
    return GRAY[0] * r + GRAY[1] * g + GRAY[2] * b


def edge_weights(image: Tensor, probs: Tensor, mix: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
    """Weights of the edges between horizontal (B, 1, H, W-1) and vertical (B, 1, H-1, W) neighbours.

    exp(-5 |grad gray| / mean |grad gray|) times 1 + the neighbours' text agreement sum_c p_c(x) mix(p(x'))_c
    (clamped to [0, 1]), the product clamped to [0, 1] (`_edge_weights`, prop.py:68-96).
    """
    luma = gray(image)
    weights = []
    for dim in (-1, -2):  # horizontal, then vertical neighbours
        count = luma.shape[dim] - 1
        step = luma.narrow(dim, 1, count) - luma.narrow(dim, 0, count)
        step = step.abs() / (step.abs().mean() + TLP_EPS)
        agree = (probs.narrow(dim, 1, count) * mix(probs.narrow(dim, 0, count))).sum(dim=1, keepdim=True)
        weights.append((torch.exp(-EDGE_SHARPNESS * step) * (1.0 + agree.clamp(0.0, 1.0))).clamp(0.0, 1.0))
    return weights[0], weights[1]


def laplacian(x: Tensor, horizontal: Tensor, vertical: Tensor) -> Tensor:
    """(L x) of maps (B, Q, H, W) on the 4-neighbour grid: sum over neighbours n of w(x, n) (x - x_n)
    (`_apply_laplacian`, prop.py:99-110)."""
    out = torch.zeros_like(x)
    flow = horizontal * (x[..., 1:] - x[..., :-1])  # (B, Q, H, W-1)
    out[..., 1:] += flow
    out[..., :-1] -= flow
    flow = vertical * (x[..., 1:, :] - x[..., :-1, :])  # (B, Q, H-1, W)
    out[..., 1:, :] += flow
    out[..., :-1, :] -= flow
    return out


def conjugate_gradient(apply: Callable[[Tensor], Tensor], b: Tensor, x: Tensor, steps: int) -> Tensor:
    """`steps` conjugate-gradient steps on apply(x) = b from `x`, each image (B, ...) a single vector over all its
    maps (`_cg_solve`, prop.py:113-128, with its 1e-12 guards)."""
    dims = tuple(range(1, b.dim()))
    residual = b - apply(x)
    direction = residual.clone()
    norm = (residual * residual).sum(dim=dims, keepdim=True)
    for _ in range(steps):
        applied = apply(direction)
        alpha = norm / ((direction * applied).sum(dim=dims, keepdim=True) + CG_EPS)
        x = x + alpha * direction
        residual = residual - alpha * applied
        new_norm = (residual * residual).sum(dim=dims, keepdim=True)
        direction = residual + new_norm / (norm + CG_EPS) * direction
        norm = new_norm
    return x


@dataclass
class TlpSystem:
    """The graph system (diag(confidence) + L) F = confidence * logits on the pooled grid."""

    confidence: Tensor  # (B, 1, h, w) Cw, each pixel's data weight
    horizontal: Tensor  # (B, 1, h, w - 1) edge weights
    vertical: Tensor  # (B, 1, h - 1, w)

    def apply(self, x: Tensor) -> Tensor:
        return self.confidence * x + laplacian(x, self.horizontal, self.vertical)


def tlp_system(logits: Tensor, image: Tensor, matrix: Tensor, full: bool) -> TlpSystem:
    """The system of pooled logits (B, Q, h, w) and image (B, 3, h, w) (prop.py:154-166): p = softmax of the
    cosines (not scaled by the logit scale), Cw = clamp(max p, 0.05)^2 (1 + clamp(sum_c p_c mix(p)_c, 0, 1))."""
    probs = torch.softmax(logits, dim=1)
    mix = functools.partial(text_mix, matrix=matrix, full=full)
    agree = (probs * mix(probs)).sum(dim=1, keepdim=True).clamp(0.0, 1.0)
    confidence = probs.amax(dim=1, keepdim=True).clamp_min(MIN_CONFIDENCE) ** 2 * (1.0 + agree)
    return TlpSystem(confidence, *edge_weights(image, probs, mix))


def tlp(
    logits: Tensor, image: Tensor, queries: Tensor, grid: int = 80, steps: int = 25, full_text_matrix: bool = False
) -> Tensor:
    """PEARL's text-aware Laplacian propagation (`TLP.forward`, prop.py:131-176), in float32.

    logits (B, Q, H, W): cosine similarities; image (B, 3, H, W): the normalised image at the same size;
    queries (Q, D): the text embeddings. Both maps are average-pooled by `pool_sizes` (floor mode: leftover
    rows and columns dropped), the system of `tlp_system` solved by `steps` conjugate-gradient steps from the
    pooled logits, and the solution resized bilinearly to (H, W). Returns float32 (B, Q, H, W).
    """
    height, width = logits.shape[-2:]
    rows, cols = pool_sizes(height, width, grid)
    image, logits = image.float(), logits.float()
    pooled = rows > 1 or cols > 1
    if pooled:
        image = F.avg_pool2d(image, (rows, cols), (rows, cols))  # (B, 3, h, w)
        logits = F.avg_pool2d(logits, (rows, cols), (rows, cols))  # (B, Q, h, w)
    system = tlp_system(logits, image, text_matrix(queries), full_text_matrix)
    solution = conjugate_gradient(system.apply, system.confidence * logits, logits, steps)
    if pooled:
        solution = F.interpolate(solution, size=(height, width), mode="bilinear", align_corners=False)
    return solution


def tlp_refine(inputs: RefineInput, settings: Settings) -> Tensor:
    """The head's `refine` step: `tlp` with the settings' `TlpParams` (the logits unchanged when disabled)."""
    if not settings.tlp_enabled:
        return inputs.logits
    refined = tlp(
        inputs.logits, inputs.image, inputs.queries, settings.tlp_grid, settings.tlp_steps, settings.tlp_fix_text_matrix
    )
    return refined.to(inputs.logits.dtype)


# -- Procrustes-aligned attention (PA) ----------------------------------------------------------------------------
@dataclass(frozen=True)
class PearlParams(TlpParams):
    """PEARL's own parameters: the attention's, after the propagation's (`TlpParams`)."""

    pearl_alpha_kk: float = option(
        0.08, "method", "PEARL: weight of the centred key-key term in the last attention", lambda v: v >= 0, ">= 0"
    )
    pearl_rotation_steps: int = option(
        5,
        "method",
        "PEARL: Newton-Schulz steps of the key rotation's inverse square root (5: the authors' polar_iters; "
        "more steps approach the exact orthogonal Procrustes rotation)",
        lambda v: v >= 0,
        ">= 0",
    )


def weighted_centre(q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    """q and k (..., T, d) less their means weighted by ||q_t||, [CLS] (token 0) weighted 0 (attn.py:41-49)."""
    weights = q.norm(dim=-1, keepdim=True)  # (..., T, 1)
    weights[..., 0, :] = 0.0
    weights = weights / (weights.sum(dim=-2, keepdim=True) + CENTRE_EPS)
    return q - (weights * q).sum(dim=-2, keepdim=True), k - (weights * k).sum(dim=-2, keepdim=True)


def newton_schulz_rotation(m: Tensor, steps: int = 5) -> Tensor:
    """M (A / ||A||_F + 1e-6 I)^(-1/2) / sqrt(||A||_F), A = M^T M, for matrices M (..., d, d): the polar factor
    of M, the inverse square root by `steps` coupled Newton-Schulz steps Y <- Y T, Z <- T Z, T = (3 I - Z Y) / 2
    from Y = A / ||A||_F + 1e-6 I, Z = I (`_polar_unitary_newton_schulz`, attn.py:5-19). Five steps leave it
    far from orthogonal."""
    eye = torch.eye(m.shape[-1], device=m.device, dtype=m.dtype).expand_as(m)
    a = m.transpose(-2, -1) @ m
    norm = a.flatten(-2).norm(dim=-1).clamp_min(ROTATION_EPS)[..., None, None]  # ||A||_F
    y, z = a / norm + ROTATION_EPS * eye, eye
    for _ in range(steps):
        t = 0.5 * (3.0 * eye - z @ y)
        y, z = y @ t, t @ z
    return m @ (z / norm.sqrt())


def procrustes_logits(q: Tensor, k: Tensor, steps: int) -> tuple[Tensor, Tensor]:
    """The two terms of PA's attention logits from q, k (..., T, d), in their precision (attn.py:38-68):
    (q / sqrt d)(k R)^T with R the rotation of the centred cross-covariance kc^T qc, and kc kc^T / sqrt d."""
    scale = q.shape[-1] ** -0.5
    q_centred, k_centred = weighted_centre(q, k)
    rotation = newton_schulz_rotation(k_centred.transpose(-2, -1) @ q_centred, steps)  # (..., d, d)
    aligned = (q * scale) @ (k @ rotation).transpose(-2, -1)  # raw keys rotated
    return aligned, (k_centred @ k_centred.transpose(-2, -1)) * scale


@torch.no_grad()
def pearl_attention(inputs: HeadInput, settings: Settings) -> Tensor:
    """(n, heads, T, T) float32 weights of the last block over all tokens: softmax(aligned + alpha_kk kk).
    The two terms are computed once per trunk for every alpha_kk of a sweep."""
    p = inputs.encoder.last_qkv(inputs.trunk)
    steps = settings.pearl_rotation_steps
    aligned, keys = inputs.trunk.kept(("pearl", steps), lambda: procrustes_logits(p.q.float(), p.k.float(), steps))
    return (aligned + settings.pearl_alpha_kk * keys).softmax(dim=-1)


@register_head("pearl", params=PearlParams, attention=pearl_attention, refine=tlp_refine)
@torch.no_grad()
def pearl_head(inputs: HeadInput, settings: Settings) -> Tensor:
    """PEARL's patch features (n, h*w, embed_dim): PA applied to the float32 values, the product cast back to the
    model's precision and out-projected, the reduced block, `ln_post`, `proj` (clip/model.py:124-132)."""
    encoder = inputs.encoder
    values = encoder.last_qkv(inputs.trunk).v.float()  # (n, heads, T, head_dim)
    attended = encoder.attend(pearl_attention(inputs, settings), values)  # (n, T, width)
    return encoder.project(encoder.finish_block(inputs.trunk.tokens, attended, "reduced"))


# -- presets ------------------------------------------------------------------------------------------------------
_WHOLE = {"slide_crop": 0}
BENCHMARKS = {
    "voc21": Protocol({**_WHOLE, "prob_threshold": 0.1}, source="configs/cfg_voc21.py:6-7,16"),
    "voc20": Protocol(_WHOLE, source="configs/cfg_voc20.py:6,15"),
    "context60": Protocol({"prob_threshold": 0.1}, source="configs/cfg_context60.py:6,15"),
    "context59": Protocol(source="configs/cfg_context59.py:14"),
    "coco_object": Protocol({"prob_threshold": 0.1}, source="configs/cfg_coco_object.py:6,15"),
    "coco_stuff": Protocol(source="configs/cfg_coco_stuff164k.py:14"),
    "cityscapes": Protocol(
        {"short_side": 560, "pearl_alpha_kk": 0.3, "tlp_grid": 224}, source="configs/cfg_city_scapes.py:6-7,16"
    ),
    "ade20k": Protocol({"pearl_alpha_kk": 0.3}, source="configs/cfg_ade20k.py:6,15"),
}
DEFAULTS = dict(  # PEARL.__init__ defaults, pearl_ovss.py:20-24; postprocess (renormalised) :183-204
    logit_scale=40.0,
    prob_threshold=0.0,
    area_threshold=0.0,
    short_side=336,
    slide_crop=224,
    slide_stride=112,
    pad_windows=False,
    pamr_steps=0,
    renormalise=True,
    pearl_alpha_kk=0.08,
    pearl_rotation_steps=5,
    tlp_enabled=True,
    tlp_grid=80,
    tlp_steps=25,
    tlp_fix_text_matrix=False,
)
SOURCE = "github:PGSmall/PEARL@c26062b"


@register_method
def pearl() -> Method:
    """PEARL as the README's `run.sh` runs it (`--prop on`, run.sh:4,36): attention and propagation."""
    return Method(
        "pearl",
        "PEARL (Procrustes-aligned attention, text-aware Laplacian propagation)",
        DEFAULTS,
        BENCHMARKS,
        head="pearl",
        source=SOURCE,
        note="TLP on, as the README's run.sh runs it (eval.py's own default is off: pearl-notlp). "
        "Windows 224/112 but on VOC; alpha_kk 0.3 on Cityscapes and ADE20K.",
        docs="docs/methods/pearl.md",
    )


@register_method
def pearl_notlp() -> Method:
    """The attention alone: `eval.py`'s default `--prop off` (eval.py:17; `run.sh pearl off`, README.md:105)."""
    return Method(
        "pearl-notlp",
        "PEARL's Procrustes-aligned attention without propagation",
        {**DEFAULTS, "tlp_enabled": False},
        BENCHMARKS,
        head="pearl",
        source=SOURCE,
        note="TLP off: eval.py's default and the README's `run.sh pearl off`.",
        docs="docs/methods/pearl.md",
    )


def _with_tlp(base: Method, in_code: bool) -> Method:
    """`base` with TLP run on its logits at the original size (before any PAMR)."""
    if issubclass(base.head_spec.params, TlpParams):
        raise ValueError(f"method {base.name!r} already propagates its logits with TLP")
    head = stacked_head(base.head_spec, "tlp", TlpParams, tlp_refine)
    return dataclasses.replace(base, head=head.name)


@register_plugin
def tlp_plugin() -> Plugin:
    """PEARL's propagation on another method's logits (``sclip+tlp``): the base's head and protocol, TLP's
    defaults (grid 80, 25 steps). PEARL's paper reports it on SCLIP, NACLIP and SFP; their settings for those
    runs are not in its code (`run.sh` runs PEARL's own attention only), so none is run as published code."""
    paper = "PEARL's paper (CVPR 2026)"
    return Plugin(
        "tlp",
        "PEARL's text-aware Laplacian propagation",
        _with_tlp,
        published={"sclip": paper, "naclip-nopamr": paper, "sfp": paper},
    )
