"""SC-CLIP: its LOF, mean interpolation, aggregation and attention against plain computations, the head
end to end (batched windows as one at a time), the preset against the authors' configs, the command line."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from naclip.benchmarks import TABLE
from naclip.cli import main
from naclip.encoder import Taps
from naclip.heads import HeadInput, get_head
from naclip.methods import get_method
from naclip.methods import scclip as sc
from naclip.preprocess import load_image
from naclip.segmenter import Segmenter
from naclip.settings import Settings
from tests.conftest import VOC_IMAGE, make_segmenter

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
TINY = dict(model="naclip-tiny", pretrained=None, device="cpu")
# naclip-tiny has 3 blocks: trunk blocks 0 and 1 stand in for ViT-B/16's 8 / 3 / 3..9.
TINY_LAYERS = dict(scclip_pre_layer=1, scclip_post_layer=0, scclip_fusion_layers=(0, 1))

# (short side, crop, stride, logit scale, prob_thd, area_thd) per benchmark, from github:SuleBai/SC-CLIP
# at 0417ba9: configs/cfg_<benchmark>.py (model dict and Resize scale), defaults scclip_segmentor.py:19-22.
SCCLIP = {
    "voc21": (336, 224, 112, 50.0, 0.15, 0.1),
    "voc20": (336, 224, 112, 40.0, 0.0, 0.0),
    "context60": (336, 224, 112, 40.0, 0.15, 0.0),
    "context59": (336, 224, 112, 40.0, 0.0, 0.0),
    "coco_object": (336, 224, 112, 55.0, 0.35, 0.0),
    "coco_stuff": (336, 224, 112, 40.0, 0.0, 0.0),  # cfg_coco_stuff164k.py
    "cityscapes": (560, 224, 112, 40.0, 0.0, 0.0),
    "ade20k": (336, 224, 112, 40.0, 0.0, 0.0),
}


# -- plain computations -------------------------------------------------------------------------
def plain_lof(points: np.ndarray, k: int) -> np.ndarray:
    """The authors' LOF, a point at a time: squared distances; reachability with the point's own k-distance."""
    count = len(points)
    distance = ((points[:, None] - points[None]) ** 2).sum(-1)
    near = [sorted((distance[i, j], j) for j in range(count) if j != i)[:k] for i in range(count)]
    density = [k / np.mean([max(d, near[i][-1][0]) for d, _ in near[i]]) for i in range(count)]
    return np.array([np.mean([density[j] / density[i] for _, j in near[i]]) for i in range(count)])


def plain_mean_interpolation(maps: np.ndarray, flagged: set[tuple[int, int]]) -> np.ndarray:
    """(h, w, D): each flagged cell the mean of its unflagged 3 x 3 neighbours, if any."""
    height, width = maps.shape[:2]
    out = maps.copy()
    for r, c in flagged:
        cells = [(r + dr, c + dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0)]
        good = [maps[y, x] for y, x in cells if 0 <= y < height and 0 <= x < width and (y, x) not in flagged]
        if good:
            out[r, c] = np.mean(good, axis=0)
    return out


def plain_aggregation(features: np.ndarray, tokens: np.ndarray, beta: float) -> np.ndarray:
    unit = tokens / np.linalg.norm(tokens, axis=1, keepdims=True)
    out = np.zeros_like(features)
    for i in range(len(tokens)):
        similarity = unit @ unit[i]
        weights = np.where(similarity >= beta, similarity, 0.0)
        out[i] = weights @ features / (weights.sum() + 1e-6)
    return out


@torch.no_grad()
def direct_head(
    seg: Segmenter, tokens: torch.Tensor, layers: dict, grid: tuple[int, int], s: Settings
) -> tuple[np.ndarray, np.ndarray]:
    """One window (1 + N, width) through SC-CLIP as `clip/model.py:254-316` describes it, in float64 numpy;
    also the weights (heads, N, N) with which an output patch takes each patch's value in the last block's
    first pass: its attention weights, then the post aggregation."""
    visual = seg.encoder.visual
    block = visual.transformer.resblocks[-1]
    width, heads = tokens.shape[-1], block.attn.num_heads
    patches = tokens[1:].double().numpy()
    scores = plain_lof(patches, s.scclip_neighbours)
    flagged = {divmod(i, grid[1]) for i in np.flatnonzero(scores > np.quantile(scores, 1 - s.scclip_contamination))}

    def fix(t: np.ndarray) -> np.ndarray:
        return plain_mean_interpolation(t.reshape(*grid, -1), flagged).reshape(len(t), -1)

    pre = fix(layers[s.scclip_pre_layer][1:].double().numpy())
    unit = pre / np.linalg.norm(pre, axis=1, keepdims=True)
    centred = (unit @ unit.T - (unit @ unit.T).mean()) * 3.0
    mid = np.where(centred < 0, 0.0, np.exp(centred))
    mid /= mid.sum(1, keepdims=True)

    applied = []

    def attention(x: np.ndarray) -> np.ndarray:
        normed = block.ln_1(torch.from_numpy(x).to(tokens.dtype)).double().numpy()
        qkv = normed @ block.attn.in_proj_weight.double().numpy().T + block.attn.in_proj_bias.double().numpy()
        k, v = qkv[:, width : 2 * width], qkv[:, 2 * width :]
        out = []
        for h in range(heads):
            kh, vh = np.split(k, heads, axis=1)[h], np.split(v, heads, axis=1)[h]
            logits = kh @ kh.T / np.sqrt(kh.shape[1])
            keys = np.exp(logits - logits.max(1, keepdims=True))
            applied.append((mid + keys / keys.sum(1, keepdims=True)) / 2)
            out.append(applied[-1] @ vh)
        project = block.attn.out_proj
        return np.concatenate(out, 1) @ project.weight.double().numpy().T + project.bias.double().numpy()

    cls = tokens[0].double().numpy()
    x = plain_aggregation(fix(patches), pre, s.scclip_beta)
    x = attention(x) + s.scclip_res_cls * cls
    post = layers[s.scclip_post_layer][1:].double().numpy()
    x = plain_aggregation(x, post, s.scclip_beta)
    fused = sum(layers[i].double().numpy() for i in s.scclip_fusion_layers)
    x = x + plain_aggregation(attention(fused[1:]) + s.scclip_res_cls * fused[0], post, s.scclip_beta)
    x = visual.ln_post(torch.from_numpy(x).to(tokens.dtype)).double().numpy()
    weights = np.stack([plain_aggregation(a, post, s.scclip_beta) for a in applied[:heads]])  # the first pass
    return x @ visual.proj.double().numpy(), weights


# -- the pieces ---------------------------------------------------------------------------------
def test_lof_is_the_authors_simplified_lof():
    points = torch.randn(2, 60, 8, dtype=torch.float64)
    scores = sc.lof_scores(points, 5)
    for i in range(2):
        np.testing.assert_allclose(scores[i].numpy(), plain_lof(points[i].numpy(), 5), rtol=1e-12)
    flagged = sc.lof_outliers(points, 5, 0.05)
    for i in range(2):
        assert torch.equal(flagged[i], torch.from_numpy(scores[i].numpy() > np.quantile(scores[i].numpy(), 0.95)))
    assert flagged.sum(1).tolist() == [3, 3]  # 60 x 5%: the scores above the interpolated 95% quantile


def test_lof_finds_planted_outliers_and_chunks_change_nothing(monkeypatch):
    points = torch.cat([torch.randn(190, 16), 8 + torch.randn(10, 16) * 3])[None]  # (1, 200, 16)
    flagged = sc.lof_outliers(points, 30, 0.05)
    assert flagged[0].nonzero().flatten().tolist() == list(range(190, 200))
    whole = sc.squared_distances(points)
    monkeypatch.setattr(sc, "DISTANCE_ELEMENTS", 16 * 200 * 7)  # 7 rows a chunk
    assert torch.equal(sc.squared_distances(points), whole)
    with pytest.raises(ValueError, match="more than 30 patches per window, got 30"):
        sc.lof_scores(points[:, :30], 30)


def test_mean_interpolation():
    grid = (5, 6)
    tokens = torch.randn(2, 30, 4, dtype=torch.float64)
    flagged = torch.zeros(2, 30, dtype=torch.bool)
    cells = [{(0, 0), (2, 3), (2, 4), (4, 5)}, {(r, c) for r in range(3) for c in range(3)}]  # 2nd: (1, 1) enclosed
    for i, group in enumerate(cells):
        flagged[i, [r * 6 + c for r, c in group]] = True
    out = sc.mean_interpolation(tokens, flagged, grid)
    for i, group in enumerate(cells):
        expected = plain_mean_interpolation(tokens[i].reshape(5, 6, 4).numpy(), group).reshape(30, 4)
        np.testing.assert_allclose(out[i].numpy(), expected, rtol=1e-12)
    assert torch.equal(out[1, 7], tokens[1, 7])  # no unflagged neighbour: kept


def test_authors_positions():
    square = torch.rand(2, 16) > 0.7
    assert torch.equal(sc.authors_positions(square, (4, 4)), square)
    wide = torch.zeros(1, 12, dtype=torch.bool)  # 2 x 6 grid: patch i goes to (i // 2, i % 2)
    wide[0, [1, 4]] = True  # (0, 1) -> (0, 1); (0, 4) -> (2, 0), off the grid
    with pytest.raises(ValueError, match="off this 2 x 6 patch grid"):
        sc.authors_positions(wide, (2, 6))
    wide[0, 4], wide[0, 3] = False, True  # (0, 3) -> (1, 1): row 1, column 1, flat 7
    assert sc.authors_positions(wide, (2, 6))[0].nonzero().flatten().tolist() == [1, 7]
    tall = torch.zeros(1, 12, dtype=torch.bool)  # 6 x 2 grid: patch i goes to (i // 6, i % 6)
    tall[0, 5] = True  # (2, 1) -> (0, 5): column 5 of 2
    with pytest.raises(ValueError, match="scclip_fix_positions=true"):
        sc.authors_positions(tall, (6, 2))


def test_aggregation_and_mid_attention():
    tokens, features = torch.randn(2, 20, 6, dtype=torch.float64), torch.randn(2, 20, 5, dtype=torch.float64)
    similarities = sc.similarity(tokens)
    out = sc.aggregation(similarities, 0.1) @ features
    for i in range(2):
        expected = plain_aggregation(features[i].numpy(), tokens[i].numpy(), 0.1)
        np.testing.assert_allclose(out[i].numpy(), expected, rtol=1e-12)
    mid = sc.mid_attention(similarities)
    assert mid.shape == (2, 1, 20, 20)
    for i in range(2):
        centred = (similarities[i] - similarities[i].mean()) * 3.0
        expected = torch.where(centred < 0, 0.0, centred.exp())
        torch.testing.assert_close(mid[i, 0], expected / expected.sum(1, keepdim=True), rtol=1e-12, atol=1e-14)


# -- the head -------------------------------------------------------------------------------------
def _head_inputs(seg: Segmenter, settings: Settings, windows: torch.Tensor) -> HeadInput:
    head = get_head("scclip")
    trunk = seg.encoder.run_trunk(windows, head.taps(settings))
    queries = F.normalize(torch.randn(3, seg.clip.visual.output_dim, dtype=windows.dtype), dim=-1)
    return HeadInput(seg.encoder, trunk, seg.encoder.grid(*windows.shape[-2:]), windows, queries)


def test_head_equals_a_direct_computation_and_batches_as_one_at_a_time():
    seg = make_segmenter(method="scclip", dtype="float64", **TINY_LAYERS)
    settings = seg.settings
    assert get_head("scclip").taps(settings) == Taps(layers=frozenset({0, 1}))
    windows = torch.randn(3, 3, 224, 224, dtype=torch.float64)
    inputs = _head_inputs(seg, settings, windows)
    batched = get_head("scclip").fn(inputs, settings)
    assert batched.shape == (3, 196, seg.clip.visual.output_dim)
    attention = get_head("scclip").attention(inputs, settings)  # the weights it says it applies
    assert attention.shape == (3, seg.encoder.visual.transformer.resblocks[-1].attn.num_heads, 196, 196)
    np.testing.assert_allclose(attention.sum(-1).numpy(), 1.0, atol=1e-5)  # less the aggregation's 1e-6
    for i in range(3):
        layers = {j: inputs.trunk.layers[j][i] for j in (0, 1)}
        expected, weights = direct_head(seg, inputs.trunk.tokens[i], layers, (14, 14), settings)
        np.testing.assert_allclose(batched[i].numpy(), expected, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(attention[i].numpy(), weights, rtol=1e-9, atol=1e-12)
    single = make_segmenter(method="scclip", **TINY_LAYERS)
    windows = windows.float()
    batched = get_head("scclip").fn(_head_inputs(single, settings, windows), settings)
    for i in range(3):
        alone = get_head("scclip").fn(_head_inputs(single, settings, windows[i : i + 1]), settings)
        torch.testing.assert_close(batched[i : i + 1], alone, rtol=1e-5, atol=1e-5)


def test_patch_attention_is_the_heads_between_patches():
    seg = make_segmenter(method="scclip", **TINY_LAYERS, slide_crop=0, short_side=112)
    maps = seg.patch_attention(VOC_IMAGE)  # no classes needed
    window = seg.prepare(load_image(VOC_IMAGE))[None]  # (1, 3, 112, 112): 7 x 7 patches
    expected = get_head("scclip").attention(_head_inputs(seg, seg.settings, window), seg.settings)
    assert expected.shape[-1] == 49  # patches only: nothing to cut
    np.testing.assert_allclose(maps, expected[0].mean(0).reshape(49, 7, 7).numpy(), rtol=1e-6)


def test_head_refuses_missing_blocks_and_places_outliers_on_any_grid():
    seg = make_segmenter(method="scclip")  # ViT-B/16's layer indices on a 3-block model
    with pytest.raises(ValueError, match=r"need trunk blocks 0\.\.9; this model has 2"):
        get_head("scclip").fn(_head_inputs(seg, seg.settings, torch.randn(1, 3, 224, 224)), seg.settings)
    settings = seg.settings.replace(**TINY_LAYERS, scclip_fix_positions=True)
    wide = get_head("scclip").fn(_head_inputs(seg, settings, torch.randn(1, 3, 112, 448)), settings)
    assert wide.shape == (1, 7 * 28, seg.clip.visual.output_dim) and torch.isfinite(wide).all()


# -- the preset -----------------------------------------------------------------------------------
@pytest.mark.parametrize("benchmark", TABLE)  # the eight their configs cover
def test_preset_follows_the_authors_configs(benchmark):
    method = get_method("scclip")
    s = method.settings(benchmark)
    short, crop, stride, logit, prob, area = SCCLIP[benchmark]
    assert (s.short_side, s.long_side, s.slide_crop, s.slide_stride) == (short, 2048, crop, stride)
    assert (s.logit_scale, s.prob_threshold, s.area_threshold) == (logit, prob, area)
    assert (method.head, s.pad_windows, s.pamr_steps, s.renormalise) == ("scclip", False, 0, False)
    assert not {"attention", "arch", "sigma"} & set(s.to_dict())  # NACLIP's block parameters are not SC-CLIP's
    # configs/base_config.py:4-8 and VisionTransformer.__init__ (clip/model.py:247), lof_pytorch's defaults
    assert (s.scclip_pre_layer, s.scclip_post_layer, s.scclip_fusion_layers) == (8, 3, (3, 4, 5, 6, 7, 8, 9))
    assert (s.scclip_beta, s.scclip_res_cls, s.scclip_neighbours, s.scclip_contamination) == (0.4, 0.3, 30, 0.05)
    assert not s.scclip_fix_positions and method.class_file(benchmark) is None  # same class files as NACLIP's
    assert method.protocol(benchmark).source.startswith("configs/cfg_")


def test_settings_take_text_and_refuse_bad_values():
    s = get_method("scclip").settings(scclip_fusion_layers="2,3 4", scclip_fix_positions="true", scclip_neighbours="10")
    assert (s.scclip_fusion_layers, s.scclip_fix_positions, s.scclip_neighbours) == ((2, 3, 4), True, 10)
    for bad in (dict(scclip_fusion_layers=()), dict(scclip_contamination=1.0), dict(scclip_pre_layer=-1)):
        with pytest.raises(ValueError):
            get_method("scclip").settings(**bad)


def test_for_benchmark_and_the_command_line(tmp_path):
    seg = Segmenter.for_benchmark("voc21-sample", method="scclip", **TINY, **TINY_LAYERS)
    assert seg.settings == get_method("scclip").settings("voc21", **TINY, **TINY_LAYERS)
    seg.set_classes(["background", "cat", "dog, puppy"])  # fewer prompts than VOC's 21 classes
    result = seg.predict(VOC_IMAGE)
    assert result.labels.shape == (513, 513) and result.probs.shape == (3, 513, 513)
    assert np.isfinite(result.probs).all() and not np.allclose(result.probs.sum(0), 1)  # not renormalised
    out = tmp_path / "run"
    run = ["eval", "--benchmark", "voc21-sample", "--method", "scclip", "--limit", "1", "--out", str(out)]
    model = ["--model", "naclip-tiny", "--pretrained", "none", "--device", "cpu", "--short-side", "112"]
    layers = ["--scclip-pre-layer", "1", "--scclip-post-layer", "0", "--scclip-fusion-layers", "0,1"]
    assert main([*run, *model, *layers, "--slide-crop", "112", "--no-progress", "--workers", "0"]) == 0
    row = pd.read_csv(out / "summary.csv").iloc[0]
    assert (row["method"], row["scclip_fusion_layers"]) == ("scclip", "0,1")
    assert not {"sigma", "attention", "resclip_rcs_weights"} & set(row.index)
    assert (row.logit_scale, row.prob_threshold, row.area_threshold) == (50, 0.15, 0.1)
