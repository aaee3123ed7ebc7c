"""PEARL: its rotation, centring, attention and head against plain computations; TLP against a dense solve and a
plain statement; the refine hook's place in the pipeline; the presets against the authors' configs."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from naclip.benchmarks import TABLE
from naclip.cli import main
from naclip.heads import HeadInput, LastBlockParams, RefineInput, get_head, last_block, register_head
from naclip.methods import Method, get_method
from naclip.methods import pearl as pe
from naclip.preprocess import load_image
from naclip.reference import predict_plain
from naclip.segmenter import Segmenter
from tests.conftest import VOC_IMAGE, make_segmenter
from tests.helpers_data import build_folder

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
TINY = dict(model="naclip-tiny", pretrained=None, device="cpu")

# (short side, crop, prob_thd, alpha_kk, TLP grid) per benchmark, from github:PGSmall/PEARL at c26062b:
# configs/cfg_<benchmark>.py (model dict, Resize scale), defaults pearl_ovss.py:20-24 (stride 112, logit 40).
PEARL = {
    "voc21": (336, 0, 0.1, 0.08, 80),
    "voc20": (336, 0, 0.0, 0.08, 80),
    "context60": (336, 224, 0.1, 0.08, 80),
    "context59": (336, 224, 0.0, 0.08, 80),
    "coco_object": (336, 224, 0.1, 0.08, 80),
    "coco_stuff": (336, 224, 0.0, 0.08, 80),  # cfg_coco_stuff164k.py
    "cityscapes": (560, 224, 0.0, 0.3, 224),
    "ade20k": (336, 224, 0.0, 0.3, 80),
}


# -- the attention -----------------------------------------------------------------------------------------------
def plain_newton_schulz(m: np.ndarray, steps: int) -> np.ndarray:
    """attn.py:5-19 for one matrix, written out."""
    d = len(m)
    a = m.T @ m
    norm = max(np.sqrt((a**2).sum()), 1e-6)
    y, z = a / norm + 1e-6 * np.eye(d), np.eye(d)
    for _ in range(steps):
        t = 0.5 * (3 * np.eye(d) - z @ y)
        y = y @ t
        z = t @ z
    return m @ z / np.sqrt(norm)


def plain_centre(q: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """attn.py:41-49 for one head (T, d): weights ||q_t||, 0 for token 0, summing to 1 (less 1e-6)."""
    w = np.array([0.0] + [np.linalg.norm(q[t]) for t in range(1, len(q))])
    w = w / (w.sum() + 1e-6)
    return q - sum(w[t] * q[t] for t in range(len(q))), k - sum(w[t] * k[t] for t in range(len(k)))


def plain_pa_weights(q: np.ndarray, k: np.ndarray, alpha: float, steps: int) -> np.ndarray:
    """pa_attn's softmax weights (attn.py:35-70) for one head, in float64."""
    qc, kc = plain_centre(q, k)
    rotation = plain_newton_schulz(kc.T @ qc, steps)
    logits = (q / np.sqrt(q.shape[1])) @ (k @ rotation).T + alpha * (kc @ kc.T) / np.sqrt(q.shape[1])
    logits = np.exp(logits - logits.max(1, keepdims=True))
    return logits / logits.sum(1, keepdims=True)


def test_the_rotation_is_five_newton_schulz_steps_not_the_procrustes_solution():
    torch.manual_seed(0)
    q = torch.randn(2, 3, 40, 16, dtype=torch.float64)
    k = torch.randn(2, 3, 40, 16, dtype=torch.float64) + 0.5 + 0.5 * q  # keys that partly follow the queries
    q_centred, k_centred = pe.weighted_centre(q, k)
    m = k_centred.transpose(-2, -1) @ q_centred  # (2, 3, 16, 16)
    rotation = pe.newton_schulz_rotation(m, 5)
    for i, j in [(0, 0), (1, 2)]:
        np.testing.assert_allclose(rotation[i, j].numpy(), plain_newton_schulz(m[i, j].numpy(), 5), rtol=1e-10)
    u, _, vh = torch.linalg.svd(m)
    procrustes = u @ vh  # the orthogonal Procrustes rotation (their unused 'svd' solver)
    eye = torch.eye(16, dtype=m.dtype)
    far = torch.linalg.matrix_norm(rotation - procrustes) / torch.linalg.matrix_norm(procrustes)
    assert far.min() > 0.1  # five steps: far from it ...
    assert torch.linalg.matrix_norm(rotation.transpose(-2, -1) @ rotation - eye).min() > 0.5  # ... and not orthogonal
    # More steps converge to M (A / |A| + 1e-6 I)^(-1/2) / sqrt|A| (the ridge kept), which is the Procrustes rotation
    # up to the ridge's effect on the smallest singular values.
    a = m.transpose(-2, -1) @ m
    norm = torch.linalg.matrix_norm(a)[..., None, None]
    values, vectors = torch.linalg.eigh(a / norm + 1e-6 * eye)
    ridged = m @ (vectors @ torch.diag_embed(values**-0.5) @ vectors.transpose(-2, -1)) / norm.sqrt()
    torch.testing.assert_close(pe.newton_schulz_rotation(m, 60), ridged, rtol=0, atol=1e-9)
    closer = torch.linalg.matrix_norm(pe.newton_schulz_rotation(m, 60) - procrustes) / torch.linalg.matrix_norm(
        procrustes
    )
    assert closer.max() < 0.02 and (closer < far / 10).all()


def test_the_centring_weights_tokens_by_their_query_norm_and_leaves_cls_out():
    torch.manual_seed(1)
    q, k = torch.randn(1, 2, 9, 4, dtype=torch.float64), torch.randn(1, 2, 9, 4, dtype=torch.float64)
    q_centred, k_centred = pe.weighted_centre(q, k)
    for head in range(2):
        plain_q, plain_k = plain_centre(q[0, head].numpy(), k[0, head].numpy())
        np.testing.assert_allclose(q_centred[0, head].numpy(), plain_q, rtol=0, atol=1e-12)
        np.testing.assert_allclose(k_centred[0, head].numpy(), plain_k, rtol=0, atol=1e-12)
    moved = q.clone()
    moved[..., 0, :] *= 100  # [CLS] weighs nothing in the means
    torch.testing.assert_close(pe.weighted_centre(moved, k)[1], k_centred)


@torch.no_grad()
def test_the_head_is_pa_in_the_reduced_block():
    """Attention weights and features of one window against attn.py / clip/model.py:124-132 in float64."""
    seg = make_segmenter(method="pearl", seed=2)
    settings = seg.settings.replace(pearl_alpha_kk=0.3)
    image = torch.randn(1, 3, 48, 64)
    trunk = seg.encoder.run_trunk(image)
    inputs = HeadInput(seg.encoder, trunk, (3, 4), image, torch.empty(0))
    block, visual = seg.encoder.last, seg.encoder.visual
    x = block.ln_1(trunk.tokens)[0].double().numpy()  # (T, width)
    qkv = x @ block.attn.in_proj_weight.double().numpy().T + block.attn.in_proj_bias.double().numpy()
    heads, width = block.attn.num_heads, x.shape[1]
    q, k, v = (qkv[:, i * width : (i + 1) * width].reshape(len(x), heads, -1).transpose(1, 0, 2) for i in range(3))
    weights = np.stack([plain_pa_weights(q[h], k[h], 0.3, 5) for h in range(heads)])  # (heads, T, T)
    np.testing.assert_allclose(pe.pearl_attention(inputs, settings)[0].numpy(), weights, rtol=0, atol=1e-5)
    out = (weights @ v).transpose(1, 0, 2).reshape(len(x), width)
    out = out @ block.attn.out_proj.weight.double().numpy().T + block.attn.out_proj.bias.double().numpy()
    out = F.layer_norm(torch.from_numpy(out), (width,), visual.ln_post.weight.double(), visual.ln_post.bias.double())
    expected = (out @ visual.proj.double())[1:]  # patch tokens
    features = get_head("pearl").fn(inputs, settings)[0]
    np.testing.assert_allclose(features.numpy(), expected.numpy(), rtol=0, atol=1e-4)


# -- TLP -----------------------------------------------------------------------------------------------------------
def dense_laplacian(horizontal: np.ndarray, vertical: np.ndarray) -> np.ndarray:
    """(h w, h w) graph Laplacian D - W of the 4-neighbour grid with these edge weights (h, w-1) and (h-1, w)."""
    height, width = vertical.shape[0] + 1, horizontal.shape[1] + 1
    index = np.arange(height * width).reshape(height, width)
    lap = np.zeros((height * width, height * width))
    edges = [(index[y, x], index[y, x + 1], horizontal[y, x]) for y in range(height) for x in range(width - 1)]
    edges += [(index[y, x], index[y + 1, x], vertical[y, x]) for y in range(height - 1) for x in range(width)]
    for i, j, w in edges:
        lap[i, i] += w
        lap[j, j] += w
        lap[i, j] -= w
        lap[j, i] -= w
    return lap


def plain_tlp(logits: np.ndarray, image: np.ndarray, queries: np.ndarray, grid: int, full: bool) -> np.ndarray:
    """prop.py:131-176 with the graph system solved exactly, written out for one image (Q, H, W), (3, H, W)."""
    height, width = logits.shape[1:]
    rows, cols = max(1, round(height / grid)), max(1, round(width / grid))
    h, w = height // rows, width // cols  # leftover rows and columns dropped

    def pool(x: np.ndarray) -> np.ndarray:
        return x[:, : h * rows, : w * cols].reshape(len(x), h, rows, w, cols).mean((2, 4))

    small, picture = pool(logits), pool(image)
    unit = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    s = np.exp(unit @ unit.T / 0.5)
    s = s / s.sum(1, keepdims=True) + 10 * np.eye(len(s))
    s = s / (s.sum(1, keepdims=True) + 1e-6)
    mixing = s if full else np.diag(np.diag(s))
    p = np.exp(small - small.max(0)) / np.exp(small - small.max(0)).sum(0)  # (Q, h, w)
    agree = np.clip(np.einsum("cij,cd,dij->ij", p, mixing, p), 0, 1)
    confidence = np.maximum(p.max(0), 0.05) ** 2 * (1 + agree)
    luma = 0.299 * picture[0] + 0.587 * picture[1] + 0.114 * picture[2]
    gx, gy = np.abs(np.diff(luma, axis=1)), np.abs(np.diff(luma, axis=0))
    gain_h = np.clip(np.einsum("cij,cd,dij->ij", p[:, :, 1:], mixing, p[:, :, :-1]), 0, 1)
    gain_v = np.clip(np.einsum("cij,cd,dij->ij", p[:, 1:], mixing, p[:, :-1]), 0, 1)
    horizontal = np.clip(np.exp(-5 * gx / (gx.mean() + 1e-6)) * (1 + gain_h), 0, 1)
    vertical = np.clip(np.exp(-5 * gy / (gy.mean() + 1e-6)) * (1 + gain_v), 0, 1)
    system = np.diag(confidence.ravel()) + dense_laplacian(horizontal, vertical)
    solved = np.linalg.solve(system, (confidence.ravel()[:, None] * small.reshape(len(small), -1).T)).T
    solved = torch.from_numpy(solved.reshape(1, len(small), h, w))
    return F.interpolate(solved, size=(height, width), mode="bilinear", align_corners=False)[0].numpy()


def test_pool_sizes_round_as_python_does():
    assert pe.pool_sizes(200, 120, 80) == (2, 2)  # round(2.5) == 2 (half to even), round(1.5) == 2
    assert pe.pool_sizes(280, 39, 80) == (4, 1)  # round(3.5) == 4; at least 1
    assert pe.pool_sizes(1024, 2048, 224) == (5, 9)  # Cityscapes at 560 x 1120 would be (2, 5)


def test_conjugate_gradient_solves_the_tlp_system():
    torch.manual_seed(3)
    logits = torch.randn(1, 3, 5, 6, dtype=torch.float64)
    image = torch.randn(1, 3, 5, 6, dtype=torch.float64)
    system = pe.tlp_system(logits, image, pe.text_matrix(torch.randn(3, 8, dtype=torch.float64)), full=False)
    lap = dense_laplacian(system.horizontal[0, 0].numpy(), system.vertical[0, 0].numpy())
    x = torch.randn(1, 3, 5, 6, dtype=torch.float64)
    flat = x[0].reshape(3, -1).numpy()
    np.testing.assert_allclose(pe.laplacian(x, system.horizontal, system.vertical)[0].reshape(3, -1), flat @ lap.T)
    matrix = np.diag(system.confidence[0, 0].numpy().ravel()) + lap
    rhs = (system.confidence * logits)[0].reshape(3, -1).numpy()
    exact = np.linalg.solve(matrix, rhs.T).T  # each class alone: torch.linalg.solve of (diag Cw + L) F = Cw logits
    solved = pe.conjugate_gradient(system.apply, system.confidence * logits, logits, steps=60)
    # their 1e-12 guards in the denominators stop the residual near 1e-6, whatever the precision
    np.testing.assert_allclose(solved[0].reshape(3, -1).numpy(), exact, rtol=0, atol=2e-6)
    few = pe.conjugate_gradient(system.apply, system.confidence * logits, logits, steps=3)
    assert np.abs(few[0].reshape(3, -1).numpy() - exact).max() > 1e-3  # 3 steps are not there yet


@pytest.mark.parametrize("full", [False, True])
def test_tlp_is_the_propagation_written_out(full):
    """Pooled by 3 x 2 with leftover rows and columns (20 x 13 -> 6 x 6), solved to convergence, upsampled."""
    torch.manual_seed(4)
    logits, image, queries = torch.randn(1, 4, 20, 13), torch.randn(1, 3, 20, 13), torch.randn(4, 16)
    queries[1] = queries[0] + 0.1 * queries[1]  # two similar queries: the text matrix is far from diagonal
    assert pe.pool_sizes(20, 13, 7) == (3, 2)
    out = pe.tlp(logits, image, queries, grid=7, steps=200, full_text_matrix=full)
    expected = plain_tlp(logits[0].double().numpy(), image[0].double().numpy(), queries.double().numpy(), 7, full)
    np.testing.assert_allclose(out[0].numpy(), expected, rtol=0, atol=2e-5)


def test_the_authors_text_term_reads_the_diagonal_only():
    torch.manual_seed(5)
    probs, matrix = torch.rand(1, 3, 4, 5).softmax(1), pe.text_matrix(torch.randn(3, 8))
    diagonal = torch.stack([matrix[c, c] * probs[:, c] for c in range(3)], 1)
    full = torch.stack([sum(matrix[c, d] * probs[:, d] for d in range(3)) for c in range(3)], 1)
    torch.testing.assert_close(pe.text_mix(probs, matrix, full=False), diagonal)
    torch.testing.assert_close(pe.text_mix(probs, matrix, full=True), full)
    authors = torch.einsum("cc,bcij->bcij", matrix, probs)  # what prop.py:63 writes
    torch.testing.assert_close(pe.text_mix(probs, matrix, full=False), authors)
    logits, image = torch.randn(1, 3, 30, 30), torch.randn(1, 3, 30, 30)
    queries = torch.randn(3, 8)
    queries[1] = queries[0]  # identical queries: large cross terms
    assert not torch.allclose(pe.tlp(logits, image, queries, 10), pe.tlp(logits, image, queries, 10, 25, True))


# -- the refine hook -----------------------------------------------------------------------------------------------
def test_the_refine_step_runs_once_per_prediction_before_pamr(temporary_method, monkeypatch):
    """On the logits resized to the original size, before PAMR and the logit scale, with the prepared image resized
    the same way and the queries; its output is what the rest of the pipeline gets; once per setting."""
    calls = []

    def refine(inputs: RefineInput, settings) -> torch.Tensor:
        calls.append(inputs)
        return inputs.logits.flip(1)  # the queries' scores swapped: labels follow if the result is used

    register_head("test-refine", params=LastBlockParams, refine=refine)(last_block)
    settings = dict(attention="naclip", arch="reduced", slide_crop=0, short_side=48, pamr_steps=0, prob_threshold=0)
    temporary_method(Method("test-refine", "refined", settings, {}, head="test-refine"))
    image = load_image(VOC_IMAGE)[:90, :70]  # (90, 70): prepared to 61 x 48
    seg = make_segmenter(method="test-refine")
    seg.set_classes(["cat", "dog"])
    plain = make_segmenter(method="naclip", **settings)  # the same head without the step
    plain.set_classes(["cat", "dog"])

    refined = seg.predict(image)
    assert len(calls) == 1
    got = calls[0]
    assert got.logits.shape == (1, 2, 90, 70) and got.image.shape == (1, 3, 90, 70)
    prepared = seg.prepare(image)
    torch.testing.assert_close(got.image, F.interpolate(prepared[None], size=(90, 70), mode="bilinear"))
    torch.testing.assert_close(got.queries, seg._query_features()[0].float())  # noqa: SLF001
    unrefined = plain.predict(image)
    np.testing.assert_array_equal(refined.labels, 1 - unrefined.labels)  # the flipped logits decided the labels
    np.testing.assert_allclose(refined.probs, unrefined.probs[::-1], rtol=0, atol=1e-6)

    seen = []
    import naclip.segmenter as segmenter_module

    original = segmenter_module.propagate
    monkeypatch.setattr(segmenter_module, "propagate", lambda logits, *a: seen.append(logits) or original(logits, *a))
    calls.clear()
    seg.predict_variants(prepared, (90, 70), [{"pamr_steps": 2}, {}])
    assert len(calls) == 2 and len(seen) == 1  # once per setting; PAMR on the first only
    torch.testing.assert_close(seen[0], calls[0].logits.flip(1))  # PAMR gets the refined logits
    calls.clear()
    predict_plain(seg, image)
    assert len(calls) == 1 and calls[0].logits.shape == (1, 2, 90, 70)


def test_tlp_changes_the_prediction_and_can_be_switched_off():
    seg = make_segmenter(method="pearl", short_side=64)
    seg.set_classes(["cat", "dog", "sky"])
    image = load_image(VOC_IMAGE)
    on, off = seg.predict_variants(seg.prepare(image), image.shape[:2], [{}, {"tlp_enabled": False}])
    assert (on.labels != off.labels).any() and np.abs(on.probs - off.probs).max() > 0.05
    notlp = make_segmenter(method="pearl-notlp", short_side=64)
    notlp.set_classes(["cat", "dog", "sky"])
    np.testing.assert_array_equal(notlp.predict(image).probs, off.probs)


# -- presets and commands ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["pearl", "pearl-notlp"])
@pytest.mark.parametrize("benchmark", TABLE)
def test_the_presets_follow_the_authors_configs(name, benchmark):
    method = get_method(name)
    s = method.settings(benchmark)
    short, crop, prob, alpha, grid = PEARL[benchmark]
    assert (s.short_side, s.long_side, s.slide_crop, s.slide_stride, s.logit_scale) == (short, 2048, crop, 112, 40)
    assert (s.prob_threshold, s.area_threshold, s.pamr_steps, s.pad_windows, s.renormalise) == (prob, 0, 0, False, True)
    assert (s.pearl_alpha_kk, s.pearl_rotation_steps, s.tlp_grid, s.tlp_steps) == (alpha, 5, grid, 25)
    assert s.tlp_enabled is (name == "pearl") and s.tlp_fix_text_matrix is False
    assert method.class_file(benchmark) is None and method.head == "pearl"  # SCLIP's class files, as the library's


def test_eval_and_segment_run_pearl(tmp_path):
    model = ["--model", "naclip-tiny", "--pretrained", "none", "--device", "cpu", "--short-side", "32"]
    data = build_folder(tmp_path / "data", count=2, size=(40, 56))
    run = ["eval", "--benchmark", "folder", "--images", str(data / "images"), "--masks", str(data / "masks")]
    run += ["--classes", str(data / "classes.txt"), "--method", "pearl", "--out", str(tmp_path / "run")]
    assert main([*run, *model, "--tlp-grid", "16", "--no-progress", "--workers", "0", "--quiet"]) == 0
    row = pd.read_csv(tmp_path / "run" / "summary.csv").iloc[0]
    assert (row.method, row.n_images, row.tlp_grid, row.pearl_alpha_kk, row.tlp_enabled) == ("pearl", 2, 16, 0.08, True)
    segment = ["segment", str(VOC_IMAGE), "--classes", "cat; dog", "--method", "pearl", "--out", str(tmp_path)]
    assert main([*segment, *model, "--tlp-fix-text-matrix"]) == 0
    assert (tmp_path / "sample_0000_labels.png").is_file()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = Segmenter.for_benchmark("cityscapes", method="pearl", **TINY)
    assert (seg.settings.short_side, seg.settings.tlp_grid, seg.settings.pearl_alpha_kk) == (560, 224, 0.3)
