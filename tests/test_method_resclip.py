"""ResCLIP: its preset against the authors' configs, RCS and SFR against direct computations, the head
end to end, from Python and the command line."""

from __future__ import annotations

import math

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
from naclip.methods.resclip import patch_mode, paths_stay, resclip_attention, semantic_prior
from naclip.pamr import pamr
from naclip.preprocess import load_image
from naclip.segmenter import Segmenter
from naclip.settings import Settings
from tests.conftest import VOC_IMAGE, make_segmenter

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
TINY = dict(model="naclip-tiny", pretrained=None, device="cpu", resclip_rcs_layers=(0, 1))  # its trunk: blocks 0, 1

# (short side, crop, prob_thd, temp_thd, attn_rcs_weights, attn_sfr_weights) per benchmark:
# github:yvhangyang/ResCLIP@0e085f7 configs/cfg_<benchmark>.py; the rest resclip_segmentor.py:23-26.
CONFIGS = {
    "voc21": (336, 0, 0.1, 0.5, (2.0, 0.3), (2.2, 0.7)),
    "voc20": (336, 0, 0.0, 0.1, (2.0, 0.6), (2.1, 0.6)),
    "context60": (336, 224, 0.1, 0.3, (2.0, 0.3), (1.8, 0.7)),
    "context59": (336, 224, 0.0, 0.25, (2.0, 0.4), (1.8, 0.7)),
    "coco_object": (336, 224, 0.1, 0.11, (2.0, 0.4), (1.8, 0.7)),
    "coco_stuff": (336, 224, 0.0, 0.11, (2.0, 0.4), (1.8, 0.7)),  # cfg_coco_stuff164k.py
    "cityscapes": (560, 224, 0.0, 0.1, (2.0, 0.2), (2.1, 0.6)),  # cfg_city_scapes.py
    "ade20k": (336, 224, 0.0, 0.25, (2.0, 0.3), (2.1, 0.7)),
}


@pytest.mark.parametrize("benchmark", TABLE)  # the eight their configs cover
def test_preset_follows_the_authors_configs(benchmark):
    method = get_method("resclip")
    s = method.settings(benchmark)
    short, crop, prob, temp, rcs, sfr = CONFIGS[benchmark]
    assert (s.short_side, s.long_side, s.slide_crop, s.slide_stride) == (short, 2048, crop, 112)
    assert (s.prob_threshold, s.resclip_temp_threshold, s.resclip_rcs_weights, s.resclip_sfr_weights) == (
        prob,
        temp,
        rcs,
        sfr,
    )
    # test_all.sh wo_resi resclip 5; logit scale, no area threshold, no final PAMR, renormalised scores.
    assert (method.head, s.attention, s.arch, s.sigma, s.logit_scale) == ("resclip", "naclip", "reduced", 5.0, 40.0)
    assert (s.area_threshold, s.pamr_steps, s.renormalise, s.pad_windows) == (0.0, 0, True, False)
    assert s.resclip_rcs_layers == (5, 6, 7, 8) and s.resclip_delete_same_entity and not s.resclip_whole_path
    assert method.class_file(benchmark) is None and method.authors_protocol
    assert method.protocol(benchmark).source.startswith("configs/cfg_")


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.reshape(*x.shape[:2], heads, -1).transpose(1, 2)  # (n, heads, T, d)


def _qkv(block: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    qkv = block.ln_1(x) @ block.attn.in_proj_weight.T + block.attn.in_proj_bias
    return [_heads(part, block.attn.num_heads) for part in qkv.chunk(3, dim=-1)]


def _omega(h: int, w: int, sigma: float) -> torch.Tensor:
    rows, cols = np.divmod(np.arange(h * w), w)
    squared = (rows[:, None] - rows) ** 2 + (cols[:, None] - cols) ** 2
    omega = np.zeros((h * w + 1, h * w + 1))
    omega[1:, 1:] = np.exp(-squared / (2 * sigma**2))
    return torch.tensor(omega, dtype=torch.float32)


def _features(seg: Segmenter, tokens: torch.Tensor, weights: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """ln_post(out_proj(weights v)) @ proj of the patches, the reduced block's output."""
    visual = seg.encoder.visual
    attended = (weights @ v).transpose(1, 2).reshape(tokens.shape)
    return (visual.ln_post(visual.transformer.resblocks[-1].attn.out_proj(attended)) @ visual.proj)[:, 1:]


def test_rcs_mixes_the_trunks_attention_into_the_last_block():
    """SFR off: features = reduced block with W = tau ((1 - l) softmax(kk / sqrt d + omega) + l mean(A_0, A_1))."""
    seg = make_segmenter(method="resclip", **{**TINY, "resclip_sfr_weights": (1.0, 0.0)})
    encoder, visual = seg.encoder, seg.encoder.visual
    images = torch.randn(2, 3, 224, 224)
    embedded = []
    hook = visual.ln_pre.register_forward_hook(lambda module, args, out: embedded.append(out))
    trunk = encoder.run_trunk(images, Taps(layers=frozenset({0}), attention=frozenset({0, 1})))
    hook.remove()
    blocks = visual.transformer.resblocks
    maps = []
    for block, x in zip(blocks[:2], (embedded[0], trunk.layers[0])):
        q, k, _ = _qkv(block, x)
        maps.append((q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1))
    q, k, v = _qkv(blocks[-1], trunk.tokens)
    last = (k @ k.transpose(-2, -1) / math.sqrt(k.shape[-1]) + _omega(14, 14, 5.0)).softmax(-1)
    weights = 2.0 * (0.4 * last + 0.6 * (maps[0] + maps[1]) / 2)
    settings = seg.settings.replace(resclip_rcs_weights=(2.0, 0.6))
    assert get_head("resclip").taps(settings) == Taps(attention=frozenset({0, 1}))
    inputs = HeadInput(encoder, trunk, (14, 14), images, torch.randn(3, 32))
    out = get_head("resclip").fn(inputs, settings)
    torch.testing.assert_close(out, _features(seg, trunk.tokens, weights, v), atol=1e-5, rtol=1e-4)
    # (1, 0) for both: no taps, no first pass, NACLIP's last block.
    off = seg.settings.replace(resclip_rcs_weights=(1.0, 0.0))
    assert get_head("resclip").taps(off) == Taps()
    naclip = encoder.last_block(trunk, (14, 14), "naclip", "reduced", 5.0)
    torch.testing.assert_close(get_head("resclip").fn(inputs, off), naclip)


def _direct_prior(labels: np.ndarray, sigma: float, whole: bool) -> np.ndarray:
    """generate_attention_sfr spelled out pair by pair (float32 path points, float64 otherwise)."""
    h, w = labels.shape
    longest = max(h, w) - 1
    same = np.zeros((h * w, h * w))
    for i, j in np.ndindex(h * w, h * w):
        (r0, c0), (r1, c1) = divmod(i, w), divmod(j, w)
        if labels[r0, c0] != labels[r1, c1]:
            continue
        d = max(abs(r0 - r1), abs(c0 - c1))
        ts = [np.float32(s) / np.float32(d if whole else longest) for s in range(1, d + 1)]
        path = [(np.round(r0 * (1 - t) + r1 * t), np.round(c0 * (1 - t) + c1 * t)) for t in ts]
        stays = all(labels[int(r), int(c)] == labels[r0, c0] for r, c in path)
        same[i, j] = 1.0 if stays else math.exp(-d / longest)
    size = min(h * w, int(6 * sigma + 1)) | 1
    kernel = np.exp(-((np.arange(size) - size // 2) ** 2) / (2 * sigma**2))
    kernel /= kernel.sum()
    padded = np.pad(same, ((0, 0), (size // 2, size // 2)))
    smoothed = np.stack([padded[:, m : m + h * w] for m in range(size)], -1) @ kernel
    prior = np.zeros((h * w + 1, h * w + 1))
    prior[1:, 1:] = smoothed / (smoothed.sum(1, keepdims=True) + 1e-8)
    return prior


# Two halves of class 0 either side of a column of class 1, above and below a row of class 2.
LABELS = np.array(
    [
        [0, 0, 1, 1, 0, 0],
        [0, 0, 1, 1, 0, 0],
        [2, 2, 2, 2, 2, 2],
        [0, 0, 1, 1, 0, 0],
        [0, 0, 1, 1, 0, 0],
    ]
)


@pytest.mark.parametrize("whole", [False, True])
def test_sfr_prior_on_a_hand_made_label_map(whole):
    prior = semantic_prior(torch.tensor(LABELS), 1.5, delete_same_entity=True, whole_path=whole)
    assert prior.shape == (31, 31) and prior.dtype == torch.float32
    assert prior[0].abs().sum() == 0 and prior[:, 0].abs().sum() == 0
    np.testing.assert_allclose(prior.numpy(), _direct_prior(LABELS, 1.5, whole), atol=1e-6)
    torch.testing.assert_close(prior[1:].sum(1), torch.ones(30))


def test_authors_path_check_sees_only_the_start_of_a_path():
    """A row 14 patches wide (d_max 13): from column 0 to 3 their check samples t = 1/13..3/13 of the
    way (columns 0, 0, 1) and misses the 1 in column 2; the whole path does not."""
    labels = torch.tensor([[0, 0, 1] + [0] * 11])
    assert paths_stay(labels)[0, 0, 0, 3] and not paths_stay(labels, whole=True)[0, 0, 0, 3]
    assert not paths_stay(labels)[0, 0, 0, 13]  # the longest paths are checked in full
    theirs, whole = (semantic_prior(labels, 1.5, True, w) for w in (False, True))
    assert not torch.equal(theirs, whole)


def test_patch_mode_keeps_whole_patches_and_breaks_ties_low():
    labels = torch.zeros(1, 5, 7, dtype=torch.long)
    labels[0, :2, :2] = 3  # patch (0, 0): 3 x 4, 0 x 0
    labels[0, :2, 2:4] = torch.tensor([[5, 2], [2, 5]])  # patch (0, 1): a tie of 2 and 5
    labels[0, 4:, :] = 9  # below the last whole patch row: dropped
    assert patch_mode(labels, (2, 2), (2, 3)).tolist() == [[[3, 2, 0], [0, 0, 0]]]


def test_sfr_prior_enters_in_float16_before_the_bias():
    q, k = torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)
    omega = torch.rand(5, 5)
    prior = torch.rand(2, 1, 5, 5)
    prior16 = (prior / prior.amax()).half()
    out = resclip_attention(q, k, omega, "naclip", prior=prior16, sfr_weights=(2.2, 0.7))
    mixed = 2.2 * (0.3 * (k @ k.transpose(-2, -1) / math.sqrt(8)) + (0.7 * prior16.float()).half().float())
    torch.testing.assert_close(out, (mixed + omega).softmax(-1))
    summed = resclip_attention(q, k, None, "csa")
    expected = (q @ q.transpose(-2, -1) / math.sqrt(8)).softmax(-1) + (k @ k.transpose(-2, -1) / math.sqrt(8)).softmax(
        -1
    )
    torch.testing.assert_close(summed, expected)


def test_head_end_to_end_against_a_direct_computation():
    """A 64 x 80 window (4 x 5 patches): first pass, PAMR on the window, softmax, temp_thd, patch
    labels, prior, second pass, all by hand."""
    seg = make_segmenter(method="resclip", **TINY, resclip_temp_threshold=0.4, slide_crop=0)
    seg.set_classes(["cat", "dog", "sky", "grass"])
    queries = seg._query_features()[0]
    image = torch.randn(1, 3, 64, 80)
    trunk = seg.encoder.run_trunk(image, Taps(attention=frozenset({0, 1})))
    settings = seg.settings
    out = get_head("resclip").fn(HeadInput(seg.encoder, trunk, (4, 5), image, queries), settings)

    blocks = seg.encoder.visual.transformer.resblocks
    rcs = (trunk.attention[0] + trunk.attention[1]) / 2
    q, k, v = _qkv(blocks[-1], trunk.tokens)
    kk, omega = k @ k.transpose(-2, -1) / math.sqrt(k.shape[-1]), _omega(4, 5, 5.0)
    tau, share = settings.resclip_rcs_weights
    first = tau * ((1 - share) * (kk + omega).softmax(-1) + share * rcs)
    features = F.normalize(_features(seg, trunk.tokens, first, v), dim=-1)
    logits = (features @ queries.T).transpose(1, 2).reshape(1, 4, 4, 5)
    logits = pamr(image, F.interpolate(logits, size=(64, 80), mode="bilinear"), 10, (8, 16))
    probs = (logits * 40.0).softmax(1)[0]
    pixels = torch.where(probs.amax(0) < 0.4, 0, probs.argmax(0)).numpy()
    patches = pixels.reshape(4, 16, 5, 16).transpose(0, 2, 1, 3).reshape(4, 5, 256)
    labels = np.array([[np.bincount(p, minlength=4).argmax() for p in row] for row in patches])
    assert len(np.unique(labels)) > 1, "pick a seed whose first pass finds several queries"
    prior = torch.tensor(_direct_prior(labels, 5.0, whole=False), dtype=torch.float32)
    prior16 = (prior / prior.max()).half()
    tau, share = settings.resclip_sfr_weights
    second = (tau * ((1 - share) * kk + (share * prior16.float()).half().float()) + omega).softmax(-1)
    tau, share = settings.resclip_rcs_weights
    second = tau * ((1 - share) * second + share * rcs)
    torch.testing.assert_close(out, _features(seg, trunk.tokens, second, v), atol=1e-5, rtol=1e-4)
    # The attention it says it applies, for inspection: the same weights, RCS and SFR mixed in.
    inspected = get_head("resclip").attention(HeadInput(seg.encoder, trunk, (4, 5), image, queries), settings)
    torch.testing.assert_close(inspected, second, atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_patch_attention_is_the_mixed_attention():
    """Segmenter.patch_attention with the resclip head: the RCS-mixed last-block attention of the whole
    image, by hand from the trunk's tapped attention (SFR off); rows sum to tau; with SFR, the head's own."""
    seg = make_segmenter(method="resclip", **TINY, slide_crop=0, short_side=64)
    tensor = seg.prepare(load_image(VOC_IMAGE))[None]  # (1, 3, 64, 64): 4 x 4 patches
    maps = seg.patch_attention(VOC_IMAGE, resclip_sfr_weights=(1.0, 0.0))
    trunk = seg.encoder.run_trunk(tensor, Taps(attention=frozenset({0, 1})))
    q, k, _ = _qkv(seg.encoder.visual.transformer.resblocks[-1], trunk.tokens)
    last = (k @ k.transpose(-2, -1) / math.sqrt(k.shape[-1]) + _omega(4, 4, 5.0)).softmax(-1)
    mixed = 2.0 * (0.4 * last + 0.6 * (trunk.attention[0] + trunk.attention[1]) / 2)  # (1, heads, 17, 17)
    expected = mixed[0].mean(0)[1:, 1:].reshape(16, 4, 4)
    np.testing.assert_allclose(maps, expected.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(mixed.sum(-1), 2.0, rtol=1e-5)  # tau; the [CLS] column is left out of the maps
    with pytest.raises(ValueError, match="set the classes first"):
        seg.patch_attention(VOC_IMAGE)  # SFR's first pass needs queries
    seg.set_classes(["cat", "dog", "sky"])
    queries = seg._query_features()[0]
    inputs = HeadInput(seg.encoder, trunk, (4, 4), tensor, queries)
    head = get_head("resclip").attention(inputs, seg.settings)[0].mean(0)[1:, 1:].reshape(16, 4, 4)
    np.testing.assert_allclose(seg.patch_attention(VOC_IMAGE), head.numpy(), rtol=1e-5, atol=1e-7)


def test_for_benchmark_and_the_command_line(tmp_path):
    seg = Segmenter.for_benchmark("voc21-sample", method="resclip", short_side=64, **TINY)
    assert seg.settings == get_method("resclip").settings("voc21", short_side=64, **TINY)
    assert len(seg.classes) == 21 and seg.benchmark == "voc21-sample"
    seg.set_classes(["background", "cat", "dog"])  # fewer queries to embed
    result = seg.predict(VOC_IMAGE)
    assert result.probs.shape == (3, 513, 513) and result.labels.shape == (513, 513)
    np.testing.assert_allclose(result.probs.sum(0), 1, atol=1e-5)
    model = ["--model", "naclip-tiny", "--pretrained", "none", "--device", "cpu", "--short-side", "64"]
    run = ["eval", "--benchmark", "voc21-sample", "--method", "resclip", "--limit", "1", "--out", str(tmp_path)]
    assert main([*run, *model, "--resclip-rcs-layers", "0,1", "--no-progress", "--workers", "0"]) == 0
    row = pd.read_csv(tmp_path / "summary.csv", dtype=str).iloc[0]
    assert (row["method"], row["slide_crop"], row["prob_threshold"]) == ("resclip", "0", "0.1")
    assert "scclip_beta" not in row.index  # another method's parameters stay out of its tables
    assert (row["resclip_temp_threshold"], row["resclip_sfr_weights"], row["resclip_rcs_layers"]) == (
        "0.5",
        "2.2,0.7",
        "0,1",
    )


def test_settings_and_head_refuse_what_resclip_cannot_run():
    with pytest.raises(ValueError, match="resclip_sfr_weights"):
        get_method("resclip").settings(resclip_sfr_weights=(2.0,))
    with pytest.raises(ValueError, match="resclip_rcs_weights"):
        get_method("resclip").settings(resclip_rcs_weights=(2.0, 1.5))
    with pytest.raises(ValueError, match="'resclip_rcs_weights' is a parameter of method resclip, not of 'naclip'"):
        Settings().replace(resclip_rcs_weights=(2.0, 0.3))
    seg = make_segmenter(method="resclip", model="naclip-tiny", pretrained=None, device="cpu", slide_crop=0)
    seg.set_classes(["cat", "dog"])
    with pytest.raises(ValueError, match=r"resclip_rcs_layers=\(5, 6, 7, 8\) asks for blocks \[5, 6, 7, 8\].*0\.\.1"):
        seg.predict_prepared(torch.randn(3, 32, 32), (32, 32))
    with pytest.raises(ValueError, match="ResCLIP's attention strategies"):
        seg.predict_variants(torch.randn(3, 32, 32), (32, 32), [{"attention": "kk", "resclip_rcs_layers": (0, 1)}])
    unsmoothed = {"attention": "csa", "sigma": 0.0, "resclip_rcs_layers": (0, 1)}
    with pytest.raises(ValueError, match="expected sigma > 0"):
        seg.predict_variants(torch.randn(3, 32, 32), (32, 32), [unsmoothed])
