"""ProxyCLIP: the proxy attention and the head against plain computations, the second model chosen by a
parameter, windows padded to 56, the preset against the authors' configs and class files."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from naclip import Segmenter
from naclip.benchmarks import get_benchmark
from naclip.heads import HeadInput
from naclip.methods import get_method
from naclip.methods import proxyclip as pc
from naclip.preprocess import load_image
from naclip.segmenter import window_padding
from tests.conftest import VOC_IMAGE, make_segmenter

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# (short side, crop, stride, prob_thd, queries, classes) per benchmark, from github:mc-lan/ProxyCLIP at e7b767f:
# configs/cfg_<benchmark>.py (model dict, Resize scale), defaults proxyclip_segmentor.py:30-31.
PROXYCLIP = {
    "voc21": (336, 336, 112, 0.2, 46, 21),  # background: 26 '; '-separated words
    "voc20": (336, 336, 112, 0.0, 20, 20),
    "context60": (336, 336, 112, 0.15, 60, 60),
    "context59": (336, 336, 112, 0.0, 59, 59),
    "coco_object": (336, 336, 112, 0.25, 97, 81),  # background: 17 words
    "coco_stuff": (336, 336, 112, 0.0, 171, 171),
    "cityscapes": (448, 224, 112, 0.0, 19, 19),
    "ade20k": (448, 336, 112, 0.0, 150, 150),
}
# cls_voc21.txt:1 of the authors' configs, split on '; ' as their get_cls_idx does
VOC21_BACKGROUND = (
    "sky; wall; tree; wood; grass; road; sea; river; mountain; sands; desk; bed; building; cloud; lamp; door; "
    "window; wardrobe; ceiling; shelf; curtain; stair; floor; hill; rail; fence"
).split("; ")


@functools.cache
def segmenter(vfm: str = "dino_vitb16") -> Segmenter:
    """ProxyCLIP on the tiny random CLIP (16-pixel patches) with a random second model, whole images."""
    return make_segmenter(method="proxyclip", proxyclip_vfm=vfm, slide_crop=0, short_side=112)


def plain_proxy_attention(features: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """One window's (D, I, J) features: softmax of gamma (S - beta mean S), -inf where negative."""
    f = features.flatten(1)
    unit = f / f.norm(dim=0, keepdim=True)
    similarity = unit.T @ unit
    scores = (similarity - similarity.mean() * beta) * gamma
    scores[scores < 0] = float("-inf")
    return torch.softmax(scores, dim=-1)


def test_the_proxy_attention_is_each_windows_own():
    features = torch.randn(2, 16, 5, 4)
    features[1] += 1.5  # the second window's patches alike: a higher mean similarity
    weights = pc.proxy_attention(features, 1.2, 3.0)
    for window in range(2):
        torch.testing.assert_close(weights[window], plain_proxy_attention(features[window], 1.2, 3.0))
    unit = F.normalize(features.flatten(2), dim=1)
    similarity = unit.transpose(1, 2) @ unit
    scores = (similarity - similarity.mean() * 1.2) * 3.0  # one mean over both windows would differ
    assert not torch.allclose(scores.masked_fill(scores < 0, float("-inf")).softmax(-1), weights, atol=1e-3)
    assert torch.isnan(pc.proxy_attention(features[1:], 10.0, 3.0)).all()  # no positive entry: NaN, as theirs


def test_the_head_as_written():
    """CLIP's last-block values per head, resized bilinearly to the second model's grid, attended by the proxy
    attention, out-projected, ln_post, proj: features (n, I, J, D) on that grid."""
    seg = segmenter()
    windows = seg.prepare(load_image(VOC_IMAGE))[None, :, :112, :112]  # (1, 3, 112, 112)
    encoder = seg.encoder
    trunk = encoder.run_trunk(windows)
    models = {name: spec.features(module, windows) for name, (spec, module) in seg.models.items()}
    features = models["dino_vitb16"]
    assert features.shape == (1, 768, 7, 7)  # DINO ViT-B/16 at 112
    inputs = HeadInput(encoder, trunk, encoder.grid(112, 112), windows, torch.zeros(0, 32), models)
    out = pc.proxyclip_head(inputs, seg.settings)

    block, visual = encoder.last, encoder.visual
    width, heads = block.attn.embed_dim, block.attn.num_heads
    y = F.linear(block.ln_1(trunk.tokens), block.attn.in_proj_weight, block.attn.in_proj_bias)
    v = y[0, 1:, 2 * width :]  # (h*w, width) patch values
    h, w = inputs.grid
    weights = plain_proxy_attention(features[0], 1.2, 3.0)  # (49, 49)
    attended = []
    for head in range(heads):
        values = v[:, head * width // heads : (head + 1) * width // heads].T.reshape(1, -1, h, w)
        values = F.interpolate(values, size=(7, 7), mode="bilinear", align_corners=False).reshape(-1, 49).T
        attended.append(weights @ values)  # (49, head_dim)
    expected = visual.ln_post(block.attn.out_proj(torch.cat(attended, dim=1))) @ visual.proj
    assert out.shape == (1, 7, 7, expected.shape[-1])
    torch.testing.assert_close(out.reshape(49, -1), expected, atol=1e-5, rtol=1e-4)


def test_the_second_model_is_a_parameter_and_only_it_is_loaded():
    seg = segmenter()
    assert list(seg.models) == ["dino_vitb16"] and seg.config["proxyclip_vfm"] == "dino_vitb16"
    assert [m.name for m in seg.head(get_method("proxyclip").settings()).second_models(seg.settings)] == ["dino_vitb16"]
    assert get_method("proxyclip").settings().proxyclip_vfm == "dino_vitb8"  # the authors' base_config.py:6
    with pytest.raises(ValueError, match="cannot vary within a run"):
        seg.variant({"proxyclip_vfm": "dino_vitb8"})
    with pytest.raises(ValueError, match="not known"):
        get_method("proxyclip").settings(proxyclip_vfm="mae")


def test_logits_live_on_the_second_models_grid():
    """DINOv2's 14-pixel patches: a (112, 168) window (padded to 56) makes a 12 x 8 grid beside CLIP's 10 x 7,
    and the features come on it; the fast path (batched, channels-last) equals the plain pipeline."""
    from naclip.reference import predict_plain

    seg = segmenter("dinov2_vitb14_reg")
    seg.set_classes(["sky", "cat", "dog"])
    image = np.random.default_rng(0).integers(0, 256, (150, 100, 3), dtype=np.uint8)  # prepared (168, 112)
    window = seg.prepare(image)[None]
    models = {name: spec.features(module, window) for name, (spec, module) in seg.models.items()}
    assert models["dinov2_vitb14_reg"].shape[-2:] == (12, 8) and seg.encoder.grid(168, 112) == (10, 7)
    fast = seg.predict(image)
    plain = predict_plain(seg, image)
    np.testing.assert_array_equal(fast.labels, plain.labels)
    np.testing.assert_allclose(fast.probs, plain.probs, atol=1e-5)


def test_windows_are_padded_to_a_multiple_of_56_centred():
    seg = Segmenter.for_benchmark("voc21", "proxyclip", model="naclip-tiny", pretrained=None, device="cpu")
    assert seg.pad_multiple == (56, 56) and seg.settings.pad_windows
    assert window_padding(100, 150, seg.pad_multiple) == (9, 9, 6, 6)  # 150 -> 168, 100 -> 112
    assert window_padding(336, 224, seg.pad_multiple) == (0, 0, 0, 0)  # the protocols' windows: never padded


@pytest.mark.parametrize("benchmark", sorted(PROXYCLIP))
def test_the_protocol_per_benchmark(benchmark):
    short, crop, stride, prob, queries, classes = PROXYCLIP[benchmark]
    method = get_method("proxyclip")
    s = method.settings(benchmark)
    assert (s.short_side, s.slide_crop, s.slide_stride, s.prob_threshold) == (short, crop, stride, prob)
    assert (s.logit_scale, s.area_threshold, s.pamr_steps, s.renormalise) == (40.0, 0.0, 0, False)
    assert (s.proxyclip_beta, s.proxyclip_gamma, s.pad_multiple) == (1.2, 3.0, 56)
    from naclip.text import read_class_file

    parsed = read_class_file(method.class_file(benchmark) or get_benchmark(benchmark).class_path)
    assert (len(parsed.queries), len(parsed.lines)) == (queries, classes)
    if benchmark == "voc21":
        assert list(parsed.queries[:26]) == VOC21_BACKGROUND and parsed.queries[26] == "aeroplane"
