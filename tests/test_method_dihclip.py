"""DIH-CLIP: its entropy head selection (ties included), selective head attention in the trunk and in the
last block against plain computations, the head end to end (batched windows as one at a time), the preset
against the authors' configs, the command line."""

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
from naclip.methods import dihclip as dih
from naclip.methods import get_method
from naclip.segmenter import Segmenter
from naclip.settings import Settings
from tests.conftest import VOC_IMAGE, make_segmenter

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
# naclip-tiny has 3 blocks: trunk blocks 0 and 1 stand in for ViT-B/16's 8 / 3 / 3..9 (block 1's SHA reads
# the tokens entering it, block 0's output).
TINY_LAYERS = dict(dihclip_pre_layer=1, dihclip_post_layer=0, dihclip_fusion_layers=(0, 1))

# (short side, logit scale, prob_thd, area_thd) per benchmark, from github:duan-song/DiH-CLIP at 775b609:
# configs/cfg_<benchmark>.py (model dict and Resize scale), defaults clip_segmentor.py:19-22.
DIHCLIP = {
    "voc21": (336, 50.0, 0.15, 0.1),
    "voc20": (336, 40.0, 0.0, 0.0),
    "context60": (336, 40.0, 0.15, 0.0),
    "context59": (336, 40.0, 0.0, 0.0),
    "coco_object": (336, 55.0, 0.35, 0.0),
    "coco_stuff": (336, 40.0, 0.0, 0.0),
    "cityscapes": (560, 40.0, 0.0, 0.0),
    "ade20k": (336, 40.0, 0.0, 0.0),
}


# -- plain computations -------------------------------------------------------------------------
def plain_entropy(weights: np.ndarray) -> list[float]:
    """-sum p log2(p + 1e-6) over each head's whole map (heads, N, N)."""
    return [float(-sum(p * np.log2(p + 1e-6) for p in head.flatten())) for head in weights]


def plain_selection(weights: np.ndarray, count: int) -> list[int]:
    """`metrics[i] in sorted(metrics)[:count]`, a head at a time."""
    entropy = plain_entropy(weights)
    lowest = sorted(entropy)[:count]
    return [i for i in range(len(entropy)) if any(entropy[i] == value for value in lowest)]


def plain_softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def plain_selected(weights: np.ndarray, values: np.ndarray, heads: list[int], block, divisor: float) -> np.ndarray:
    """out_proj( sum over the heads of weights_h @ all heads' values, / divisor )."""
    out = sum(weights[h] @ values for h in heads) / divisor
    return out @ block.attn.out_proj.weight.double().numpy().T + block.attn.out_proj.bias.double().numpy()


def plain_cosine(tokens: np.ndarray) -> np.ndarray:
    unit = tokens / np.linalg.norm(tokens, axis=1, keepdims=True)
    return unit @ unit.T


def plain_aggregate(features: np.ndarray, similarity: np.ndarray, beta: float) -> np.ndarray:
    s = np.where(similarity < beta, 0.0, similarity)
    return (s / (s.sum(1, keepdims=True) + 1e-6)) @ features


def projections(block, x: np.ndarray, dtype: torch.dtype) -> tuple[np.ndarray, ...]:
    """ln_1, then the in-projection: q, k, v (heads, N, head_dim) and all heads' values (N, width)."""
    width, heads = x.shape[1], block.attn.num_heads
    normed = block.ln_1(torch.from_numpy(x).to(dtype)).double().numpy()
    qkv = normed @ block.attn.in_proj_weight.double().numpy().T + block.attn.in_proj_bias.double().numpy()
    q, k, v = (np.stack(np.split(qkv[:, i * width : (i + 1) * width], heads, axis=1)) for i in range(3))
    return q, k, v, qkv[:, 2 * width :]


@torch.no_grad()
def direct_head(seg: Segmenter, tokens, layers: dict, s: Settings) -> np.ndarray:
    """One window through DIH-CLIP as `clip/model.py:237-303` computes it, in float64 numpy."""
    visual = seg.encoder.visual
    blocks = visual.transformer.resblocks
    count, beta, res_cls = s.dihclip_heads, s.dihclip_beta, s.dihclip_res_cls
    pre_block = blocks[s.dihclip_pre_layer]
    q, k, _, values = projections(pre_block, layers[s.dihclip_pre_layer - 1].double().numpy(), tokens.dtype)
    scale = 1 / np.sqrt(q.shape[-1])
    chosen = plain_selection(plain_softmax(q @ k.transpose(0, 2, 1) * scale), count)
    sha = plain_selected(plain_softmax(k @ k.transpose(0, 2, 1) * scale), values, chosen, pre_block, 1.0)
    pre = plain_cosine((layers[s.dihclip_pre_layer].double().numpy() + sha)[1:])
    centred = (pre - pre.mean()) * 3.0
    mid = np.where(centred < 0, 0.0, np.exp(centred))
    mid /= mid.sum(1, keepdims=True)
    last = blocks[-1]

    def attention(x: np.ndarray) -> np.ndarray:
        _, k, _, values = projections(last, x, tokens.dtype)
        weights = (mid + plain_softmax(k @ k.transpose(0, 2, 1) / np.sqrt(k.shape[-1]))) / 2
        return plain_selected(weights, values, plain_selection(weights, count), last, k.shape[0])

    x = plain_aggregate(tokens[1:].double().numpy(), pre, beta)
    x = attention(x) + res_cls * tokens[0].double().numpy()
    post = plain_cosine(layers[s.dihclip_post_layer][1:].double().numpy())
    x = plain_aggregate(x, post, beta)
    fused = sum(layers[i].double().numpy() for i in s.dihclip_fusion_layers)
    x = x + plain_aggregate(attention(fused[1:]) + res_cls * fused[0], post, beta)
    x = visual.ln_post(torch.from_numpy(x).to(tokens.dtype)).double().numpy()
    return x @ visual.proj.double().numpy()


# -- the pieces ---------------------------------------------------------------------------------
def test_entropy_and_the_lowest_entropy_heads():
    weights = torch.rand(2, 6, 9, 9, dtype=torch.float64).pow(4).softmax(-1)
    entropy = dih.attention_entropy(weights)
    for i in range(2):
        np.testing.assert_allclose(entropy[i].numpy(), plain_entropy(weights[i].numpy()), rtol=1e-12)
        for count in (1, 4, 6):
            selected = dih.lowest_entropy_heads(weights, count)[i].nonzero().flatten().tolist()
            assert selected == plain_selection(weights[i].numpy(), count)


def test_ties_at_the_last_place_select_more_heads():
    weights = torch.rand(1, 6, 9, 9, dtype=torch.float64).softmax(-1)
    order = dih.attention_entropy(weights)[0].argsort().tolist()
    weights[0, order[4]] = weights[0, order[3]]  # the 5th lowest now equals the 4th: both kept
    weights[0, order[2]] = weights[0, order[1]]  # a tie inside the 4 changes nothing more
    selected = dih.lowest_entropy_heads(weights, 4)[0].nonzero().flatten().tolist()
    assert selected == sorted(order[:5]) == plain_selection(weights[0].numpy(), 4)


@torch.no_grad()
def test_selected_heads_attention_takes_all_heads_values():
    seg = make_segmenter(dtype="float64")
    block = seg.encoder.last
    heads, width = block.attn.num_heads, block.attn.embed_dim
    weights = torch.rand(2, heads, 7, 7, dtype=torch.float64).softmax(-1)
    v = torch.randn(2, heads, 7, width // heads, dtype=torch.float64)
    selected = torch.zeros(2, heads, dtype=torch.bool)
    selected[0, [0, 2]], selected[1, 1] = True, True
    out = dih.selected_heads_attention(block, weights, v, selected, 12.0)
    for i in range(2):
        values = v[i].permute(1, 0, 2).reshape(7, width).numpy()  # token t: heads side by side
        chosen = selected[i].nonzero().flatten().tolist()
        expected = plain_selected(weights[i].numpy(), values, chosen, block, 12.0)
        np.testing.assert_allclose(out[i].numpy(), expected, rtol=1e-10, atol=1e-14)


# -- the head -------------------------------------------------------------------------------------
def _head_inputs(seg: Segmenter, settings: Settings, windows: torch.Tensor) -> HeadInput:
    trunk = seg.encoder.run_trunk(windows, get_head("dihclip").taps(settings))
    queries = F.normalize(torch.randn(3, seg.clip.visual.output_dim, dtype=windows.dtype), dim=-1)
    return HeadInput(seg.encoder, trunk, seg.encoder.grid(*windows.shape[-2:]), windows, queries)


def test_head_equals_a_direct_computation_and_batches_as_one_at_a_time():
    seg = make_segmenter(method="dihclip", dtype="float64", **TINY_LAYERS)
    settings = seg.settings
    assert get_head("dihclip").taps(settings) == Taps(layers=frozenset({0, 1}))
    windows = torch.randn(3, 3, 112, 112, dtype=torch.float64)
    inputs = _head_inputs(seg, settings, windows)
    batched = get_head("dihclip").fn(inputs, settings)
    assert batched.shape == (3, 49, seg.clip.visual.output_dim)
    for i in range(3):
        layers = {j: inputs.trunk.layers[j][i] for j in (0, 1)}
        expected = direct_head(seg, inputs.trunk.tokens[i], layers, settings)
        np.testing.assert_allclose(batched[i].numpy(), expected, rtol=1e-9, atol=1e-10)
    for i in range(3):
        alone = get_head("dihclip").fn(_head_inputs(seg, settings, windows[i : i + 1]), settings)
        torch.testing.assert_close(batched[i : i + 1], alone, rtol=1e-9, atol=1e-10)


def test_head_refuses_missing_blocks():
    seg = make_segmenter(method="dihclip")  # ViT-B/16's layer indices on a 3-block model
    with pytest.raises(ValueError, match=r"need trunk blocks 0\.\.9; this model has 2"):
        get_head("dihclip").fn(_head_inputs(seg, seg.settings, torch.randn(1, 3, 224, 224)), seg.settings)
    with pytest.raises(ValueError):
        get_method("dihclip").settings(dihclip_pre_layer=0)  # its SHA reads the tokens entering the block


# -- the preset -----------------------------------------------------------------------------------
@pytest.mark.parametrize("benchmark", TABLE)
def test_preset_follows_the_authors_configs(benchmark):
    method = get_method("dihclip")
    s = method.settings(benchmark)
    short, logit, prob, area = DIHCLIP[benchmark]
    assert (s.short_side, s.long_side, s.slide_crop, s.slide_stride) == (short, 2048, 224, 112)
    assert (s.logit_scale, s.prob_threshold, s.area_threshold) == (logit, prob, area)
    assert (method.head, s.pad_windows, s.pamr_steps, s.renormalise) == ("dihclip", False, 0, False)
    # configs/base_config.py:5-9, clip/model.py:229,235
    assert (s.dihclip_pre_layer, s.dihclip_post_layer, s.dihclip_fusion_layers) == (8, 3, (3, 4, 5, 6, 7, 8, 9))
    assert (s.dihclip_beta, s.dihclip_res_cls, s.dihclip_heads) == (0.4, 0.3, 4)
    assert method.class_file(benchmark) is None  # SCLIP's class files
    assert method.protocol(benchmark).source.startswith("configs/cfg_")
    assert "code that is not public" in method.note


def test_the_command_line(tmp_path):
    out = tmp_path / "run"
    run = ["eval", "--benchmark", "voc21-sample", "--method", "dihclip", "--limit", "1", "--out", str(out)]
    model = ["--model", "naclip-tiny", "--pretrained", "none", "--device", "cpu", "--short-side", "64"]
    layers = ["--dihclip-pre-layer", "1", "--dihclip-post-layer", "0", "--dihclip-fusion-layers", "0,1"]
    assert (
        main([*run, *model, *layers, "--slide-crop", "32", "--slide-stride", "32", "--no-progress", "--workers", "0"])
        == 0
    )
    row = pd.read_csv(out / "summary.csv").iloc[0]
    assert (row["method"], row["dihclip_fusion_layers"], row["area_threshold"]) == ("dihclip", "0,1", 0.1)
    assert not {"sigma", "scclip_pre_layer"} & set(row.index)
    labels = tmp_path / "labels"
    segment = ["segment", str(VOC_IMAGE), "--method", "dihclip", "--classes", "cat,dog", "--out", str(labels)]
    assert main([*segment, *model, *layers]) == 0
    assert list(labels.glob("*.png"))
