"""SFP: its outlier choice, zero-fill repair (and the NaN it can give), three-way attention against plain
computations, the head end to end (batched windows as one at a time), the preset against the authors'
configs and class files, the error naming the image, the command line."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from naclip.benchmarks import CLASSES_DIR, TABLE
from naclip.cli import main
from naclip.encoder import Taps
from naclip.heads import HeadInput, get_head
from naclip.methods import get_method, sfp
from naclip.methods import scclip as sc
from naclip.segmenter import Segmenter
from naclip.settings import Settings
from tests.conftest import VOC_IMAGE, make_segmenter

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
TINY = dict(model="naclip-tiny", pretrained=None, device="cpu")
# naclip-tiny has 3 blocks: trunk blocks 0 and 1 stand in for ViT-B/16's 10 / 8 / 3 / 3..9.
TINY_LAYERS = dict(sfp_outlier_layer=1, sfp_pre_layer=1, sfp_post_layer=0, sfp_fusion_layers=(0, 1))

# (short side, logit scale, prob_thd, area_thd, own class file) per benchmark, from github:Kimsure/SFP at
# 2804f5b: SFP_ICCV/configs/cfg_<benchmark>.py (model dict and Resize scale), defaults SFP_segmentor.py:22-25.
SFP = {
    "voc21": (336, 50.0, 0.15, 0.1, "sfp/voc21.txt"),
    "voc20": (336, 40.0, 0.0, 0.0, "sfp/voc20.txt"),
    "context60": (336, 40.0, 0.15, 0.0, None),
    "context59": (336, 40.0, 0.0, 0.0, None),
    "coco_object": (336, 55.0, 0.35, 0.0, None),
    "coco_stuff": (336, 40.0, 0.0, 0.0, None),
    "cityscapes": (560, 40.0, 0.0, 0.0, "sfp/city_scapes.txt"),
    "ade20k": (384, 40.0, 0.0, 0.0, None),
}


# -- plain computations -------------------------------------------------------------------------
def plain_som(attention: np.ndarray, count: int, cls_scale: float) -> list[int]:
    """`pm='SOM'`: scale the [CLS] row in place, average the heads, keep the patches whose [CLS] attention
    beats their self-attention, the `count` highest first."""
    scaled = attention.copy()
    scaled[:, 0, 1:] *= cls_scale
    mean = scaled.mean(0)
    salient = [i for i in range(mean.shape[0] - 1) if mean[0, 1 + i] > mean[1 + i, 1 + i]]
    return sorted(salient, key=lambda i: -mean[0, 1 + i])[:count]


def plain_zero_fill(maps: np.ndarray, flagged: set[tuple[int, int]]) -> np.ndarray:
    """(h, w, D): each flagged cell the mean of its unflagged 3 x 3 neighbours, zeros if it has none."""
    height, width = maps.shape[:2]
    out = maps.copy()
    for r, c in flagged:
        cells = [(r + dr, c + dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0)]
        good = [maps[y, x] for y, x in cells if 0 <= y < height and 0 <= x < width and (y, x) not in flagged]
        out[r, c] = np.mean(good, axis=0) if good else 0.0
    return out


def plain_softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def plain_similarity_attention(similarity: np.ndarray) -> np.ndarray:
    """softmax(3 (S - mean S)) over the entries >= 0 of the centred matrix."""
    centred = (similarity - similarity.mean()) * 3.0
    e = np.where(centred < 0, 0.0, np.exp(centred))
    return e / e.sum(1, keepdims=True)


def plain_cosine_thresholded(tokens: np.ndarray, beta: float) -> np.ndarray:
    unit = tokens / np.linalg.norm(tokens, axis=1, keepdims=True)
    s = unit @ unit.T
    return np.where(s < beta, 0.0, s)


def plain_aggregate(features: np.ndarray, s: np.ndarray) -> np.ndarray:
    return (s / (s.sum(1, keepdims=True) + 1e-6)) @ features


@torch.no_grad()
def direct_head(seg: Segmenter, tokens, layers: dict, attention, grid: tuple[int, int], s: Settings) -> np.ndarray:
    """One window through SFP as `SFP_ICCV/clip/model.py:242-356` computes it, in float64 numpy."""
    visual = seg.encoder.visual
    block = visual.transformer.resblocks[-1]
    width, heads = tokens.shape[-1], block.attn.num_heads
    rows = grid[0]
    chosen = plain_som(attention.double().numpy(), s.sfp_outliers, s.sfp_res_cls * s.sfp_res_scale)
    flagged = {(i // rows, i % rows) for i in chosen}  # the authors' placement (square grids here)

    def repair(t: np.ndarray) -> np.ndarray:
        return plain_zero_fill(t.reshape(*grid, -1), flagged).reshape(len(t), -1)

    def numpy(t) -> np.ndarray:
        return t.double().numpy()

    def projections(x: np.ndarray) -> list[np.ndarray]:
        normed = numpy(block.ln_1(torch.from_numpy(x).to(tokens.dtype)))
        qkv = normed @ numpy(block.attn.in_proj_weight).T + numpy(block.attn.in_proj_bias)
        return [np.split(qkv[:, i * width : (i + 1) * width], heads, axis=1) for i in range(3)]

    def out_proj(x: np.ndarray) -> np.ndarray:
        return x @ numpy(block.attn.out_proj.weight).T + numpy(block.attn.out_proj.bias)

    pre = plain_cosine_thresholded(repair(numpy(layers[s.sfp_pre_layer][1:])), s.sfp_beta)
    mid = plain_similarity_attention(pre)
    x = plain_aggregate(repair(numpy(tokens[1:])), pre)
    q, k, v = projections(x)
    out = []
    for h in range(heads):
        scale = 1 / np.sqrt(q[h].shape[1])
        weights = (plain_softmax(k[h] @ k[h].T * scale) + plain_softmax(q[h] @ q[h].T * scale) + mid) / 3
        out.append(weights @ v[h])
    x = out_proj(np.concatenate(out, 1)) + s.sfp_res_cls * numpy(tokens[0])
    post = plain_cosine_thresholded(numpy(layers[s.sfp_post_layer][1:]), s.sfp_beta)
    x = plain_aggregate(x, post)
    fused = sum(numpy(layers[i]) for i in s.sfp_fusion_layers)
    _, _, v = projections(fused[1:])
    z = out_proj(np.concatenate([mid @ v[h] for h in range(heads)], 1)) + s.sfp_res_cls * fused[0]
    x = x + plain_aggregate(z, post)
    return numpy(visual.ln_post(torch.from_numpy(x).to(tokens.dtype))) @ numpy(visual.proj)


# -- the pieces ---------------------------------------------------------------------------------
def test_som_outliers_are_the_top_salient_patches():
    attention = torch.rand(3, 4, 1 + 36, 1 + 36, dtype=torch.float64).softmax(-1)
    for count, scale in [(10, 1.5), (3, 1.5), (10, 1.0), (50, 40.0)]:
        flagged = sfp.som_outliers(attention, count, scale)
        for i in range(3):
            expected = plain_som(attention[i].numpy(), count, scale)
            assert flagged[i].nonzero().flatten().tolist() == sorted(expected)
    assert sfp.som_outliers(attention, 50, 1e6).all()  # every patch salient: all 36 flagged
    assert not sfp.som_outliers(attention, 10, 0.0).any()  # none salient: none flagged


def test_zero_fill_repair_and_the_guarded_fix():
    grid = (5, 6)
    tokens = torch.randn(2, 30, 4, dtype=torch.float64)
    flagged = torch.zeros(2, 30, dtype=torch.bool)
    cells = [{(0, 0), (2, 3), (2, 4), (4, 5)}, {(r, c) for r in range(3) for c in range(3)}]  # 2nd: (1, 1) enclosed
    for i, group in enumerate(cells):
        flagged[i, [r * 6 + c for r, c in group]] = True
    out = sfp.zero_fill_interpolation(tokens, flagged, grid)
    for i, group in enumerate(cells):
        expected = plain_zero_fill(tokens[i].reshape(5, 6, 4).numpy(), group).reshape(30, 4)
        np.testing.assert_allclose(out[i].numpy(), expected, rtol=1e-12)
    assert torch.equal(out[1, 7], torch.zeros(4, dtype=torch.float64))  # no unflagged neighbour: zeros
    assert torch.isnan(sfp.cosine(out)[1, 7]).all()  # then its cosine row is NaN, as the authors' division
    assert torch.isfinite(sfp.cosine(out)[0]).all()
    fixed = sc.mean_interpolation(tokens, flagged, grid)  # sfp_fix_repair: the enclosed token kept
    assert torch.equal(fixed[1, 7], tokens[1, 7]) and torch.equal(fixed[0], out[0])


def test_three_way_weights():
    q, k = torch.randn(2, 3, 20, 8, dtype=torch.float64), torch.randn(2, 3, 20, 8, dtype=torch.float64)
    similarity = sfp.threshold(sfp.cosine(torch.randn(2, 20, 6, dtype=torch.float64)), 0.1)
    weights = sfp.three_way_weights(q, k, sc.mid_attention(similarity))
    for i in range(2):
        mid = plain_similarity_attention(similarity[i].numpy())
        for h in range(3):
            qh, kh = q[i, h].numpy(), k[i, h].numpy()
            expected = (plain_softmax(kh @ kh.T / np.sqrt(8)) + plain_softmax(qh @ qh.T / np.sqrt(8)) + mid) / 3
            np.testing.assert_allclose(weights[i, h].numpy(), expected, rtol=1e-12)


# -- the head -------------------------------------------------------------------------------------
def _head_inputs(seg: Segmenter, settings: Settings, windows: torch.Tensor) -> HeadInput:
    trunk = seg.encoder.run_trunk(windows, get_head("sfp").taps(settings))
    queries = F.normalize(torch.randn(3, seg.clip.visual.output_dim, dtype=windows.dtype), dim=-1)
    return HeadInput(seg.encoder, trunk, seg.encoder.grid(*windows.shape[-2:]), windows, queries)


def test_head_equals_a_direct_computation_and_batches_as_one_at_a_time():
    seg = make_segmenter(method="sfp", dtype="float64", **TINY_LAYERS)
    settings = seg.settings
    assert get_head("sfp").taps(settings) == Taps(layers=frozenset({0, 1}), attention=frozenset({1}))
    windows = torch.randn(3, 3, 112, 112, dtype=torch.float64)
    inputs = _head_inputs(seg, settings, windows)
    batched = get_head("sfp").fn(inputs, settings)
    assert batched.shape == (3, 49, seg.clip.visual.output_dim) and torch.isfinite(batched).all()
    flagged = sfp.som_outliers(inputs.trunk.attention[1], settings.sfp_outliers, 1.5)
    assert flagged.any(1).all()  # every window has outliers to repair
    for i in range(3):
        layers = {j: inputs.trunk.layers[j][i] for j in (0, 1)}
        attention = inputs.trunk.attention[1][i]
        expected = direct_head(seg, inputs.trunk.tokens[i], layers, attention, (7, 7), settings)
        np.testing.assert_allclose(batched[i].numpy(), expected, rtol=1e-9, atol=1e-10)
    for i in range(3):
        alone = get_head("sfp").fn(_head_inputs(seg, settings, windows[i : i + 1]), settings)
        torch.testing.assert_close(batched[i : i + 1], alone, rtol=1e-9, atol=1e-10)


def test_the_zero_fill_nan_is_an_error_and_the_fix_avoids_it():
    everything = dict(sfp_outliers=10_000, sfp_res_scale=1e6)  # every patch flagged: all zero-filled
    seg = Segmenter(method="sfp", **TINY, **TINY_LAYERS, **everything, slide_crop=0, short_side=112)
    seg.set_classes(["cat", "dog"])
    with pytest.raises(FloatingPointError, match="the class scores hold NaN"):
        seg.predict(VOC_IMAGE)
    fixed = Segmenter(
        method="sfp", **TINY, **TINY_LAYERS, **everything, sfp_fix_repair=True, slide_crop=0, short_side=112
    )
    fixed.set_classes(["cat", "dog"])
    assert np.isfinite(fixed.predict(VOC_IMAGE).probs).all()


def test_head_refuses_missing_blocks_and_off_grid_outliers():
    seg = make_segmenter(method="sfp")  # ViT-B/16's layer indices on a 3-block model
    with pytest.raises(ValueError, match=r"need trunk blocks 0\.\.10; this model has 2"):
        get_head("sfp").fn(_head_inputs(seg, seg.settings, torch.randn(1, 3, 224, 224)), seg.settings)
    settings = seg.settings.replace(**TINY_LAYERS, sfp_outliers=10_000, sfp_res_scale=1e6, sfp_fix_repair=True)
    with pytest.raises(ValueError, match=r"SFP places outlier patch i .* off this 7 x 28 .* sfp_fix_positions=true"):
        get_head("sfp").fn(_head_inputs(seg, settings, torch.randn(1, 3, 112, 448)), settings)
    settings = settings.replace(sfp_fix_positions=True)
    wide = get_head("sfp").fn(_head_inputs(seg, settings, torch.randn(1, 3, 112, 448)), settings)
    assert wide.shape == (1, 7 * 28, seg.clip.visual.output_dim) and torch.isfinite(wide).all()


# -- the preset -----------------------------------------------------------------------------------
@pytest.mark.parametrize("benchmark", TABLE)
def test_preset_follows_the_authors_configs(benchmark):
    method = get_method("sfp")
    s = method.settings(benchmark)
    short, logit, prob, area, class_file = SFP[benchmark]
    assert (s.short_side, s.long_side, s.slide_crop, s.slide_stride) == (short, 2048, 224, 112)
    assert (s.logit_scale, s.prob_threshold, s.area_threshold) == (logit, prob, area)
    assert (method.head, s.pad_windows, s.pamr_steps, s.renormalise) == ("sfp", False, 0, False)
    # configs/base_config.py:5-9, clip/model.py:229-231,264,280,318-333
    assert (s.sfp_outlier_layer, s.sfp_pre_layer, s.sfp_post_layer) == (10, 8, 3)
    assert s.sfp_fusion_layers == (3, 4, 5, 6, 7, 8, 9) and s.sfp_outliers == 10
    assert (s.sfp_beta, s.sfp_res_cls, s.sfp_res_scale) == (0.4, 0.3, 5.0)
    assert not s.sfp_fix_positions and not s.sfp_fix_repair
    own = method.class_file(benchmark)
    assert (own and own.relative_to(CLASSES_DIR).as_posix()) == class_file
    assert method.protocol(benchmark).source.startswith("SFP_ICCV/configs/cfg_")


def test_own_class_files_say_people_for_person():
    for name in ("voc21", "voc20", "city_scapes"):
        own = (CLASSES_DIR / "sfp" / f"{name}.txt").read_text().splitlines()
        theirs = (CLASSES_DIR / f"{name}.txt").read_text().splitlines()
        changed = [(a, b) for a, b in zip(own, theirs, strict=True) if a != b]
        assert len(changed) == 1 and changed[0][0] == changed[0][1].replace("person", "people")


def test_the_command_line_names_the_image_whose_scores_are_nan(tmp_path, capsys):
    """32-pixel windows hold 4 patches: all flagged (10 outliers at most), all zero-filled, NaN scores."""
    out = tmp_path / "run"
    run = ["eval", "--benchmark", "voc21-sample", "--method", "sfp", "--limit", "1", "--out", str(out)]
    model = ["--model", "naclip-tiny", "--pretrained", "none", "--device", "cpu", "--short-side", "64"]
    layers = ["--sfp-outlier-layer", "1", "--sfp-pre-layer", "1", "--sfp-post-layer", "0"]
    layers += ["--sfp-fusion-layers", "0,1", "--slide-crop", "32", "--slide-stride", "32"]
    assert main([*run, *model, *layers, "--no-progress", "--workers", "0"]) == 2
    assert "sample_0000.jpg: the class scores hold NaN" in capsys.readouterr().err
    assert main([*run, *model, *layers, "--sfp-fix-repair", "--no-progress", "--workers", "0"]) == 0
    row = pd.read_csv(out / "summary.csv").iloc[0]
    assert (row["method"], row["sfp_fusion_layers"], row["area_threshold"]) == ("sfp", "0,1", 0.1)
    assert row["sfp_fix_repair"] and not {"sigma", "scclip_pre_layer"} & set(row.index)
    labels = tmp_path / "labels"
    segment = ["segment", str(VOC_IMAGE), "--method", "sfp", "--classes", "cat,dog", "--out", str(labels)]
    assert main([*segment, *model, *layers, "--sfp-fix-repair"]) == 0
    assert list(labels.glob("*.png"))
