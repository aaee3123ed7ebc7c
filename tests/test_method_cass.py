"""CASS: each piece against a direct computation (spectra and head matching, eigen scaling, the range mapping,
the DINO input's uint8 round trip, the clustering of queries, the text adjustment, the seeded SVD draws), the
presets against the authors' configs, and the head's mechanics on tiny random models."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import warnings

import numpy as np
import pytest
import timm.models.vision_transformer as vit
import torch
import torch.nn.functional as F
from PIL import Image

from naclip import Segmenter
from naclip.heads import HEADS, register_head
from naclip.methods import get_method, register_method, unregister_method
from naclip.methods.cass import (
    DINO,
    CassParams,
    adjusted_queries,
    cass_attention,
    cass_head,
    dino_input,
    dino_model,
    dino_pixels,
    eigen_scaled,
    head_pairs,
    low_rank,
    mixed_attention,
    query_clusters,
    range_mapped,
    seeded,
    spectral_distances,
    spectrum,
    vanilla_cls,
)
from naclip.preprocess import prepare
from naclip.reference import predict_plain
from naclip.second_model import SecondModel
from naclip.settings import Settings, variant_keys
from naclip.vfm import dino_positions, vit_features
from tests.conftest import VOC_IMAGE

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def graphs(heads: int, tokens: int, dim: int, seed: int) -> torch.Tensor:
    """(heads, tokens, tokens) symmetric k k^T graphs of random keys."""
    k = torch.randn(heads, tokens, dim, generator=torch.Generator().manual_seed(seed))
    return k @ k.transpose(1, 2)


# -- spectral matching ---------------------------------------------------------------------------------------
def test_the_spectral_distance_of_two_heads_written_out():
    dino, clip = graphs(3, 25, 4, 0), graphs(3, 25, 4, 1)
    ours = spectral_distances(spectrum(dino), spectrum(clip))
    expected = np.zeros((3, 3))
    for i, j in itertools.product(range(3), range(3)):
        p = np.sort(np.linalg.eigvalsh(dino[i].double().numpy()))[::-1][:20]
        c = np.sort(np.linalg.eigvalsh(clip[j].double().numpy()))[::-1][:20]
        p, c = p / np.sqrt((p**2).sum()), c / np.sqrt((c**2).sum())  # L2
        p, c = p / np.abs(p).sum(), c / np.abs(c).sum()  # then L1
        expected[i, j] = np.abs(np.sort(p) - np.sort(c)).sum()
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-10, atol=1e-12)
    assert spectrum(dino).shape == (3, 20) and (spectrum(dino).diff(dim=1) <= 0).all()  # descending


def test_the_matching_pairs_the_most_different_heads_with_the_roles_swapped():
    distances = torch.tensor([[0.1, 0.9, 0.3], [0.2, 0.1, 0.8], [0.7, 0.3, 0.2]], dtype=torch.float64)
    best = max(itertools.permutations(range(3)), key=lambda p: sum(distances[i, p[i]] for i in range(3)))
    assert best == (1, 2, 0)  # DINO head i matched with CLIP head best[i]: the largest total distance
    authors = head_pairs(distances, fix=False)
    assert [(clip, dino) for clip, dino, _ in authors] == [(0, 1), (1, 2), (2, 0)]  # CLIP i takes DINO best[i]
    fixed = head_pairs(distances, fix=True)
    assert sorted((clip, dino) for clip, dino, _ in fixed) == [(0, 2), (1, 0), (2, 1)]  # CLIP best[i] takes DINO i
    for clip, dino, w in authors:  # w = 1 - float32(1 - W[i, col[i]]), the matched entry of the swapped pair
        assert w.dtype == torch.float32
        assert w.item() == (1 - torch.tensor(1 - distances[clip, dino].item(), dtype=torch.float32)).item()


# -- the mixed attention -------------------------------------------------------------------------------------
def test_eigen_scaling_and_the_range_mapping_by_hand():
    scaled = eigen_scaled(torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64))
    # (s - 1) / 3 * (1.5 * 4 - 0.5 * 1) + 0.5 * 1
    np.testing.assert_allclose(scaled.numpy(), [6.0, 1 / 3 * 5.5 + 0.5, 0.5])
    mapped = range_mapped(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([[-2.0, 0.0], [4.0, 1.0]]))
    np.testing.assert_allclose(mapped.numpy(), [-2.0, 1.0, 4.0])


def test_the_low_rank_graph_is_svd_lowrank_recomposed_with_its_diagonal_zeroed():
    graph = graphs(1, 30, 12, 3)[0]
    torch.manual_seed(7)
    u, s, v = torch.svd_lowrank(graph.double(), q=10)
    torch.manual_seed(7)
    ours = low_rank(graph, scaling=True)
    s = (s - s.min()) / (s.max() - s.min()) * (1.5 * s.max() - 0.5 * s.min()) + 0.5 * s.min()
    expected = u @ torch.diag(s) @ v.T
    expected.fill_diagonal_(0)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)


def authors_attention(k: torch.Tensor, keys: torch.Tensor, grid: tuple[int, int], scaling: bool) -> torch.Tensor:
    """The authors' `_apply_spectral_strategy` and softmax written out for one window (clip/model.py:367-428),
    the generator seeded with 42 first."""
    torch.manual_seed(42)
    scale = k.shape[-1] ** -0.5
    clip, dino = torch.bmm(k, k.transpose(1, 2)) * scale, torch.bmm(keys, keys.transpose(1, 2)) * scale
    heads = len(k)
    spectra = [
        F.normalize(torch.stack([torch.linalg.eigvalsh(g.double()).sort(descending=True).values[:20] for g in gs]))
        for gs in (dino, clip)
    ]
    cost = torch.zeros(heads, heads)
    for i, j in itertools.product(range(heads), range(heads)):
        p, c = F.normalize(spectra[0][i][None], p=1, dim=-1), F.normalize(spectra[1][j][None], p=1, dim=-1)
        cost[i, j] = 1 - (p.sort().values - c.sort().values).abs().sum()
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(cost.numpy())
    combined = torch.zeros_like(clip)
    for idx in range(heads):
        i, j = rows[idx], cols[idx]
        w = 1 - cost[i, j]
        u, s, v = torch.svd_lowrank(dino[j].double(), q=10)
        if scaling:
            s = (s - s.min()) / (s.max() - s.min()) * (1.5 * s.max() - 0.5 * s.min()) + 0.5 * s.min()
        approx = u @ torch.diag(s) @ v.T
        approx.fill_diagonal_(0)
        approx = (approx - approx.min()) / (approx.max() - approx.min()) * (clip[i].max() - clip[i].min()) + clip[
            i
        ].min()
        combined[idx] = (w * 10.0 * approx + clip[i]) / (w * 10.0 + 1)
    rows_, cols_ = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    points = torch.stack([rows_.flatten(), cols_.flatten()], 1).double()
    omega = torch.exp(-(torch.cdist(points, points) ** 2) / (2 * 5.0**2)).float()
    return (combined + omega).softmax(-1)


@pytest.mark.parametrize("scaling", [True, False])
def test_the_mixed_attention_draws_as_the_authors_loop_does(scaling):
    """Seeded before the window, our call sequence (12 heads here 4, one svd_lowrank each in CLIP-head order) draws
    what the authors' loop draws: the same weights; and the global generator is left as it was."""
    grid = (5, 6)
    generator = torch.Generator().manual_seed(0)
    k = torch.randn(4, 30, 16, generator=generator)
    keys = torch.randn(4, 30, 16, generator=generator)
    settings = get_method("cass").settings(cass_eigen_scaling=scaling)
    expected = authors_attention(k, keys, grid, scaling)
    before = torch.random.get_rng_state()
    with seeded(torch.device("cpu"), 42):
        ours = mixed_attention(k, keys, grid, settings)
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.testing.assert_close(ours, expected, rtol=0, atol=2e-7)
    with seeded(torch.device("cpu"), 43):  # another draw: other weights (the approximation is randomised)
        other = mixed_attention(k, keys, grid, settings)
    assert (other - ours).abs().max() > 1e-6


# -- the DINO input ------------------------------------------------------------------------------------------
def test_the_dino_pixels_invert_imagenet_with_the_0255_typo_and_truncate():
    windows = torch.zeros(1, 3, 2, 2)
    windows[0, :, 1, 1] = 1.0
    pixels = dino_pixels(windows)[0]
    assert pixels.dtype == np.uint8 and pixels.shape == (2, 2, 3)
    # x = 0: 255 x mean -> 123.675, 116.28, 103.53; x = 1: 255 x (std + mean) -> 182.07, 173.4, 168.555 (0.255)
    assert pixels[0, 0].tolist() == [123, 116, 103]
    assert pixels[1, 1].tolist() == [182, 173, 168]


def test_the_fixed_dino_pixels_are_the_windows_own():
    pixels = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    windows = prepare(pixels, 30, 2048)[None]  # CLIP-normalised as the protocol does it, no resize
    np.testing.assert_array_equal(dino_pixels(windows, fix=True)[0], pixels)
    theirs = dino_pixels(windows)[0].astype(float)  # 255 (s (p - m) / sigma + mean): a low-contrast image
    for channel, (m, sigma, s, mean) in enumerate(
        zip((122.771, 116.746, 104.094), (68.501, 66.632, 70.323), (0.229, 0.224, 0.255), (0.485, 0.456, 0.406))
    ):
        expected = 255 * (s * (pixels[..., channel] - m) / sigma + mean)
        assert np.abs(theirs[..., channel] - expected).max() <= 1


def test_the_dino_input_is_a_pil_bicubic_square_of_the_short_side_cut_to_8_pixels():
    windows = torch.randn(2, 3, 21, 30, generator=torch.Generator().manual_seed(1))
    ours = dino_input(windows)
    assert ours.shape == (2, 3, 16, 16)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    for window, got in zip(windows, ours):
        x = window.numpy()
        inverted = (x - (-np.array([0.485 / 0.229, 0.456 / 0.224, 0.406 / 0.255], np.float32))[:, None, None]) / (
            np.array([1 / 0.229, 1 / 0.224, 1 / 0.255], np.float32)[:, None, None]
        )
        pixels = (inverted.transpose(1, 2, 0) * 255).astype(np.uint8)
        resized = np.asarray(Image.fromarray(pixels).resize((21, 21), Image.BICUBIC), dtype=np.float32) / 255
        expected = (torch.from_numpy(resized).permute(2, 0, 1) - mean[:, None, None]) / std[:, None, None]
        torch.testing.assert_close(got, expected[:, :16, :16], rtol=0, atol=1e-6)


# -- the text side -------------------------------------------------------------------------------------------
def test_ward_clusters_of_cosine_distances_cut_at_the_threshold():
    a = torch.tensor([1.0, 0.0, 0.0])
    b = F.normalize(torch.tensor([1.0, 0.1, 0.0]), dim=0)
    c = F.normalize(torch.tensor([0.3, 0.0, 1.0]), dim=0)
    queries = torch.stack([a, c, b])
    d = lambda x, y: 1 - float(x @ y)  # noqa: E731
    first = d(a, b)  # a and b merge first, at their distance
    second = math.sqrt((2 * d(a, c) ** 2 + 2 * d(b, c) ** 2 - d(a, b) ** 2) / 3)  # Ward's update for c
    assert first < second
    assert query_clusters(queries, first / 2).tolist() == [0, 2, 1]  # each its own (fcluster numbers by merge)
    assert query_clusters(queries, (first + second) / 2).tolist() in ([0, 1, 0], [1, 0, 1])
    assert query_clusters(queries, second * 1.01).tolist() == [0, 0, 0]


def test_the_text_adjustment_written_out():
    """Per window and cluster: the query closest to the [CLS] moves towards its two closest patches."""
    generator = torch.Generator().manual_seed(2)
    features = F.normalize(torch.randn(2, 7, 5, generator=generator), dim=-1)  # (n, N, D)
    queries = F.normalize(torch.randn(4, 5, generator=generator), dim=-1)
    similarity = torch.randn(2, 4, generator=generator)
    clusters = np.array([1, 0, 1, 1])
    ours = adjusted_queries(features, queries, similarity, clusters, 0.3)
    for window in range(2):
        expected = queries.clone()
        for cluster in (0, 1):
            members = np.flatnonzero(clusters == cluster)
            chosen = members[int(np.argmax(similarity[window, members].numpy()))]
            closest = (features[window] @ queries[chosen]).argsort(descending=True)[:2]
            mean = F.normalize(features[window, closest].mean(0), dim=0)
            expected[chosen] = F.normalize(0.7 * queries[chosen] + 0.3 * mean, dim=0)
        torch.testing.assert_close(ours[window], expected)
    assert (ours[0] != queries).any(1).sum() == 2  # one query per cluster moved


# -- presets -------------------------------------------------------------------------------------------------
# (S, crop, prob_thd, gsw, mvw, h_thr, eigen scaling, global [CLS]) per benchmark, github:MICV-yonsei/CASS@228ecdd
# configs/cfg_<benchmark>.py; eigen scaling off on voc20 and city_scapes (clip/model.py:467), the window's
# [CLS] on city_scapes (cass_segmentor.py:240-241).
AUTHORS = {
    "voc21": (336, 0, 0.1, 0.1, 0.03, 0.10, True, "image"),
    "voc20": (336, 224, 0.0, 0.4, 0.02, 0.10, False, "image"),
    "context60": (336, 224, 0.1, 0.25, 0.04, 0.09, True, "image"),
    "context59": (336, 224, 0.0, 0.25, 0.04, 0.09, True, "image"),
    "coco_object": (336, 224, 0.1, 0.25, 0.01, 0.10, True, "image"),
    "coco_stuff": (336, 224, 0.0, 0.2, 0.02, 0.02, True, "image"),
    "cityscapes": (560, 224, 0.0, 0.1, 0.03, 0.14, False, "window"),
    "ade20k": (336, 224, 0.0, 0.3, 0.05, 0.06, True, "image"),
}


@pytest.mark.parametrize("benchmark", list(AUTHORS))
def test_each_preset_follows_the_authors_configs(benchmark):
    s = get_method("cass").settings(benchmark)
    short, crop, prob, gsw, mvw, h_thr, scaling, cls = AUTHORS[benchmark]
    assert (s.short_side, s.long_side, s.slide_crop, s.logit_scale, s.prob_threshold) == (short, 2048, crop, 40.0, prob)
    assert (s.cass_global_weight, s.cass_mean_weight, s.cass_cluster_threshold) == (gsw, mvw, h_thr)
    assert (s.cass_eigen_scaling, s.cass_global, s.sigma, s.cass_seed) == (scaling, cls, 5.0, 42)
    assert (s.slide_stride, s.pamr_steps, s.area_threshold, s.pad_windows, s.renormalise) == (112, 0, 0, False, False)
    assert s.cass_fix_pairing is False and get_method("cass").class_file(benchmark) is None  # SCLIP's class files
    assert isinstance(s, Settings)


# -- the head on tiny random models --------------------------------------------------------------------------
CLASSES = ["background, sky", "cat", "dog, puppy", "person"]
IMAGE = np.asarray(Image.open(VOC_IMAGE).convert("RGB"))[100:400, 60:300]  # (300, 240)
WINDOWS = dict(short_side=120, slide_crop=100, slide_stride=60, window_batch=3)  # 2 x 2 windows, two batches


def tiny_dino() -> torch.nn.Module:
    """A 2-block timm ViT with 8-pixel patches and CLIP-tiny's 4 heads."""
    return vit.VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=0)


@pytest.fixture(scope="module")
def tiny_cass():
    """`tiny_cass(benchmark, **overrides)`: CASS's head and presets with a tiny DINO, on naclip-tiny (CPU, random
    weights), registered as `test-cass` for this module; each segmenter built once."""

    def models(settings: Settings) -> tuple[SecondModel]:
        return (dataclasses.replace(dino_model(settings)[0], build=tiny_dino),)

    register_head("test-cass", params=CassParams, attention=cass_attention, models=models, scores=True)(cass_head)
    register_method(lambda: dataclasses.replace(get_method("cass"), name="test-cass", head="test-cass"))

    @functools.cache
    def build(benchmark: str | None = "context59", **overrides: object) -> Segmenter:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # random weights
            return Segmenter.for_benchmark(
                benchmark, "test-cass", CLASSES, model="naclip-tiny", pretrained=None, device="cpu", **overrides
            )

    yield build
    unregister_method("test-cass")
    HEADS.unregister("test-cass")


def test_the_fast_path_equals_the_plain_pipeline_and_is_reproducible(tiny_cass):
    seg = tiny_cass(**WINDOWS)
    before = torch.random.get_rng_state()
    fast = seg.predict(IMAGE)
    assert torch.equal(torch.random.get_rng_state(), before)  # the SVD's draws come from a seeded fork
    assert fast.labels.shape == IMAGE.shape[:2] and np.isfinite(fast.probs).all()
    assert len(np.unique(fast.labels)) > 1
    plain = predict_plain(seg, IMAGE)  # one window at a time: the same draws
    np.testing.assert_array_equal(fast.labels, plain.labels)
    np.testing.assert_allclose(fast.probs, plain.probs, rtol=0, atol=1e-6)


def test_each_parameter_changes_the_prediction(tiny_cass):
    seg = tiny_cass(**WINDOWS)
    base = seg.predict(IMAGE).probs
    variants = [
        {},  # the same again: reproducible
        {"cass_seed": 1},  # other draws
        {"cass_fix_pairing": True},
        {"cass_eigen_scaling": False},
        {"cass_global": "window"},
        {"cass_global_weight": 0.0},
        {"cass_mean_weight": 0.5},
        {"cass_cluster_threshold": 10.0},
        {"sigma": 2.0},
    ]
    same, *changed = seg.predict_variants(seg.prepare(IMAGE), IMAGE.shape[:2], variants)
    np.testing.assert_array_equal(same.probs, base)
    for variant, result in zip(variants[1:], changed):
        assert np.abs(result.probs - base).max() > 1e-6, variant


def test_the_global_cls_is_clips_own_image_embedding(tiny_cass):
    seg = tiny_cass()
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    ours = vanilla_cls(seg.encoder, seg.encoder.run_trunk(pixels))
    torch.testing.assert_close(ours, seg.clip.encode_image(pixels), rtol=1e-5, atol=1e-5)


def test_a_window_that_is_the_whole_image_takes_its_own_cls(tiny_cass):
    """On the whole image (VOC21's protocol) the image's [CLS] and the window's are one pass; with windows not."""
    whole = tiny_cass("voc21", short_side=120)
    image, window = whole.predict_variants(
        whole.prepare(IMAGE), IMAGE.shape[:2], [{"cass_global": "image"}, {"cass_global": "window"}]
    )
    np.testing.assert_array_equal(image.probs, window.probs)
    windows = tiny_cass(**WINDOWS)
    image, window = windows.predict_variants(
        windows.prepare(IMAGE), IMAGE.shape[:2], [{"cass_global": "image"}, {"cass_global": "window"}]
    )
    assert np.abs(image.probs - window.probs).max() > 1e-6


def test_the_fixed_dino_input_is_a_setting_of_the_run(tiny_cass):
    """It changes what DINO sees for every setting of a run: a backbone setting, not a variant."""
    assert "cass_fix_dino_input" not in variant_keys("cass") and "cass_fix_pairing" in variant_keys("cass")
    authors, fixed = tiny_cass(**WINDOWS), tiny_cass(cass_fix_dino_input=True, **WINDOWS)
    assert np.abs(authors.predict(IMAGE).probs - fixed.predict(IMAGE).probs).max() > 1e-6


def test_dino_runs_in_float32_on_the_round_trip(tiny_cass):
    seg = tiny_cass(dtype="float64", **WINDOWS)
    spec, module = seg.models[DINO.name]
    assert next(module.parameters()).dtype == torch.float32 and seg.dtype == torch.float64
    windows = torch.randn(2, 3, 100, 100, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    features = spec.features(module, windows)
    expected = vit_features(module, dino_input(windows).float(), dino_positions)  # (2, 3, 96, 96): 12 x 12 patches
    assert features.grid == (12, 12)
    torch.testing.assert_close(features.qkv.k, expected.qkv.k, rtol=0, atol=0)


def test_the_inspected_attention_is_a_distribution_over_patches(tiny_cass):
    seg = tiny_cass(**WINDOWS)
    weights = seg.patch_attention(IMAGE)  # the whole prepared image, (150, 120): 9 x 7 patches
    assert weights.shape == (63, 9, 7)
    np.testing.assert_allclose(weights.reshape(63, -1).sum(1), 1, atol=1e-5)
