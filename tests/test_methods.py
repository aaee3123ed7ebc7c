"""Method presets: each authors' protocol per benchmark, MaskCLIP's value path, SCLIP's area threshold,
ClearCLIP's window padding, and the `for_benchmark` API from Python and the command line."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import naclip.segmenter as segmenter_module
from naclip.benchmarks import CLASSES_DIR, TABLE
from naclip.cli import main
from naclip.encoder import Trunk
from naclip.methods import METHODS, get_method
from naclip.segmenter import Segmenter, drop_small_classes, window_padding
from tests.conftest import VOC_IMAGE, make_segmenter

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
TINY = dict(model="naclip-tiny", pretrained=None, device="cpu")
ROOT = CLASSES_DIR.parents[2]

# (short side, crop, stride, logit scale, prob_thd, area_thd, own class file) per benchmark.
# SCLIP: github:wangf3014/SCLIP configs/cfg_<benchmark>.py, defaults clip_segmentor.py:19-21.
SCLIP = {
    "voc21": (336, 224, 112, 65.0, 0.1, 0.1, None),
    "voc20": (336, 224, 112, 40.0, 0.0, 0.0, None),
    "context60": (336, 224, 112, 50.0, 0.1, 0.0, None),
    "context59": (336, 224, 112, 40.0, 0.0, 0.0, None),
    "coco_object": (336, 224, 112, 50.0, 0.1, 0.0, None),
    "coco_stuff": (448, 224, 112, 40.0, 0.0, 0.0, None),  # cfg_coco_stuff164k.py
    "cityscapes": (560, 224, 112, 40.0, 0.0, 0.0, None),
    "ade20k": (336, 224, 112, 40.0, 0.0, 0.0, None),
}
# ClearCLIP: github:mc-lan/ClearCLIP configs/cfg_<benchmark>.py, defaults clearclip_segmentor.py:22-23.
CLEARCLIP = {
    "voc21": (448, 448, 224, 50.0, 0.5, 0.0, "clearclip/voc21.txt"),
    "voc20": (448, 448, 224, 50.0, 0.0, 0.0, "clearclip/voc20.txt"),
    "context60": (448, 448, 224, 50.0, 0.15, 0.0, None),
    "context59": (448, 448, 224, 50.0, 0.0, 0.0, None),
    "coco_object": (448, 448, 224, 50.0, 0.4, 0.0, "clearclip/coco_object.txt"),
    "coco_stuff": (448, 448, 224, 50.0, 0.0, 0.0, None),
    "cityscapes": (448, 224, 224, 50.0, 0.0, 0.0, None),  # slide_crop=224, stride left at 224
    "ade20k": (448, 448, 224, 50.0, 0.0, 0.0, None),
}
# NACLIP: github:sinahmr/NACLIP configs/cfg_<benchmark>.py, defaults naclip.py:20-22.
NACLIP = {
    "voc21": (336, 0, 112, 40.0, 0.1, 0.0, None),
    "voc20": (336, 0, 112, 40.0, 0.0, 0.0, None),
    "context60": (336, 224, 112, 40.0, 0.1, 0.0, None),
    "context59": (336, 224, 112, 40.0, 0.0, 0.0, None),
    "coco_object": (336, 224, 112, 40.0, 0.1, 0.0, None),
    "coco_stuff": (336, 224, 112, 40.0, 0.0, 0.0, None),
    "cityscapes": (560, 224, 112, 40.0, 0.0, 0.0, None),
    "ade20k": (336, 224, 112, 40.0, 0.0, 0.0, None),
}
# (attention, arch, sigma-dependent, PAMR steps, pad windows, renormalise) of each method everywhere.
FIXED = {
    "sclip": ("csa", "vanilla", 0, False, False),
    "clearclip": ("qq", "reduced", 0, True, False),
    "naclip": ("naclip", "reduced", 10, False, True),
    "naclip-nopamr": ("naclip", "reduced", 0, False, True),
    "clip": ("vanilla", "vanilla", 0, False, True),
    "maskclip": ("identity", "reduced", 0, False, True),
}
TABLES = {"sclip": SCLIP, "clearclip": CLEARCLIP, "naclip": NACLIP, "naclip-nopamr": NACLIP, "clip": NACLIP}
TABLES["maskclip"] = NACLIP  # no authors' run under these protocols: NACLIP's stands in


@pytest.mark.parametrize("name", list(FIXED))
@pytest.mark.parametrize("benchmark", TABLE)  # the eight their configs cover
def test_each_preset_follows_its_authors_configs(name, benchmark):
    method = get_method(name)
    s = method.settings(benchmark)
    short, crop, stride, logit, prob, area, class_file = TABLES[name][benchmark]
    assert (s.short_side, s.long_side, s.slide_crop, s.logit_scale) == (short, 2048, crop, logit)
    if crop:
        assert s.slide_stride == stride
    assert (s.prob_threshold, s.area_threshold) == (prob, area)
    assert (s.attention, s.arch, s.pamr_steps, s.pad_windows, s.renormalise) == FIXED[name]
    assert s.sigma == 5.0 and s.pamr_dilations == (8, 16)
    own = method.class_file(benchmark)
    assert (own and own.relative_to(CLASSES_DIR).as_posix()) == class_file
    assert method.authors_protocol is (name not in ("clip", "maskclip"))


def test_every_method_is_registered_and_described():
    assert {"naclip", "naclip-nopamr", "clip", "maskclip", "clearclip", "sclip", "resclip", "scclip"} <= set(METHODS)
    assert "NACLIP's protocol (no authors' run published)" in get_method("maskclip").describe()
    with pytest.raises(ValueError, match="unknown method 'clearclp'; did you mean 'clearclip'"):
        get_method("clearclp")


@pytest.mark.parametrize("name", METHODS.names())
def test_every_registered_method_says_where_it_comes_from(name):
    """Its source, a cited line for each benchmark protocol, its notes page where it names one, its class files."""
    method = get_method(name)
    assert method.source and method.describe().startswith(f"{name}: ")
    for benchmark, protocol in method.benchmarks.items():
        assert protocol.source, f"{name} on {benchmark}: no source"
        own = method.class_file(benchmark)
        assert own is None or own.is_file()
    if method.docs:
        assert (ROOT / method.docs).is_file() and method.docs in method.describe()


def test_clearclip_class_files_differ_only_in_three_lines():
    ours = get_method("clearclip").class_file("voc21").read_text().splitlines()
    naclip = (get_method("clearclip").class_file("voc21").parents[1] / "voc21.txt").read_text().splitlines()
    assert len(ours) == len(naclip) == 21
    assert [i for i, (a, b) in enumerate(zip(ours, naclip)) if a != b] == [0, 15, 20]
    assert (ours[0], ours[15], ours[20]) == ("background", "person", "tvmonitor")


def test_maskclip_is_the_value_path():
    """MaskCLIP: ln_post(out_proj(v(ln_1(x)))) @ proj per token: no attention mixing, residual or FFN."""
    seg = make_segmenter(method="maskclip")
    encoder, images = seg.encoder, torch.randn(1, 3, 224, 224)
    tokens = encoder.trunk(images)
    block = encoder.visual.transformer.resblocks[-1]
    width = tokens.shape[-1]
    weight, bias = block.attn.in_proj_weight[2 * width :], block.attn.in_proj_bias[2 * width :]
    values = F.linear(block.ln_1(tokens), weight, bias)
    expected = encoder.visual.ln_post(block.attn.out_proj(values)) @ encoder.visual.proj
    torch.testing.assert_close(encoder.last_block(Trunk(tokens), (14, 14), "identity", "reduced", 5.0), expected[:, 1:])


def test_area_threshold_on_a_hand_made_case():
    """Class 2 wins 1 of 10 foreground pixels (10%, not above 10%): its scores are zeroed, not renormalised."""
    probs = torch.zeros(3, 1, 12)
    probs[0, 0, :2] = 0.9  # background wins 2 pixels: not counted
    probs[1, 0, 2:11] = 0.8  # class 1 wins 9 foreground pixels
    probs[2, 0, 11] = 0.6  # class 2 wins 1
    probs[0, 0, 11], probs[1, 0, 11] = 0.3, 0.1  # its pixel's next best is the background
    probs[2, 0, :11] = 0.05
    kept = drop_small_classes(probs, probs.argmax(0), 0.1)
    assert kept[2].abs().sum() == 0 and torch.equal(kept[:2], probs[:2])
    assert kept.argmax(0)[0, 11] == 0
    assert torch.equal(drop_small_classes(probs, probs.argmax(0), 0.09), probs)  # 1 > 0.09 * 10: kept
    nothing = torch.zeros(3, 1, 4)
    nothing[0] = 1.0  # no foreground pixel at all: nothing changes
    assert torch.equal(drop_small_classes(nothing, nothing.argmax(0), 0.1)[0], nothing[0])


def test_area_threshold_in_the_prediction():
    image = torch.randn(3, 224, 224)
    seg = make_segmenter(method="sclip", short_side=224)
    seg.set_classes(["background", "cat", "dog", "bird", "fish"])
    plain, dropped = seg.predict_variants(image, (224, 224), [{"prob_threshold": 0.0}, {"area_threshold": 0.3}])
    assert seg.settings.area_threshold == 0.0
    shares = np.bincount(plain.labels.ravel(), minlength=5)[1:] / (plain.labels > 0).sum()
    small = [c + 1 for c in range(4) if 0 < shares[c] <= 0.3]
    assert small, "pick an image and threshold that drop a class"
    assert not np.isin(dropped.labels, small).any()
    assert all(dropped.probs[c].max() == 0 for c in small)
    assert not np.allclose(dropped.probs.sum(0), 1)  # SCLIP returns the zeroed scores as they are


def test_window_padding_is_clearclips():
    assert window_padding(224, 224, (16, 16)) == (0, 0, 0, 0)
    assert window_padding(200, 211, (16, 16)) == (6, 7, 4, 4)  # width 211: 13 -> 6 left, 7 right
    assert window_padding(200, 211, (16, 16)) == (13 // 2, 13 - 13 // 2, 8 // 2, 8 - 8 // 2)


def test_padded_windows_equal_a_direct_computation():
    """A window not a multiple of the patch: zero-pad centred, run, upsample to the padded size, cut back."""
    seg = make_segmenter(method="clearclip", slide_crop=0, prob_threshold=0.0)
    seg.set_classes(["cat", "dog", "sky"])
    image, size = torch.randn(3, 200, 211), (150, 160)
    result = seg.predict_prepared(image, size)
    left, right, top, bottom = 6, 7, 4, 4
    padded = F.pad(image[None], (left, right, top, bottom))
    features = F.normalize(seg.encoder.features(padded, "qq", "reduced", 5.0), dim=-1)
    queries, _ = seg._query_features()
    logits = (features @ queries.T).transpose(1, 2).reshape(1, 3, 13, 14)
    logits = F.interpolate(logits, size=(208, 224), mode="bilinear", align_corners=False)
    logits = logits[..., top : top + 200, left : left + 211]
    logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    probs = (logits[0] * 50.0).softmax(0)
    np.testing.assert_allclose(result.probs, probs.numpy(), atol=1e-6)
    unpadded = make_segmenter(method="clearclip", slide_crop=0, pad_windows=False)
    unpadded.set_classes(["cat", "dog", "sky"])
    assert not np.allclose(unpadded.predict_prepared(image, size).probs, result.probs, atol=1e-3)


def test_pamr_guide_is_the_full_precision_image(monkeypatch):
    """In half precision the model runs in bfloat16, but PAMR's guide is the float32 prepared image."""
    seen, original = [], segmenter_module.affinity

    def capture(guide, dilations):
        seen.append(guide)
        return original(guide, dilations)

    monkeypatch.setattr(segmenter_module, "affinity", capture)
    seg = make_segmenter(dtype="bfloat16", pamr_steps=1, slide_crop=0)
    seg.set_classes(["cat", "dog"])
    image = torch.randn(3, 64, 80)
    seg.predict_prepared(image, (64, 80))
    assert seen[0].dtype == torch.float32
    torch.testing.assert_close(seen[0][0], image)


def test_text_cache_key_holds_precision_and_device(tmp_path):
    source = make_segmenter()
    path = tmp_path / "tiny.pt"
    torch.save(source.clip.state_dict(), path)
    single = make_segmenter(pretrained=str(path), cache_dir=str(tmp_path))
    double = make_segmenter(pretrained=str(path), cache_dir=str(tmp_path), dtype="float64")
    assert single.text_cache.path != double.text_cache.path
    assert make_segmenter(pretrained=str(path), cache_dir=str(tmp_path)).text_cache.path == single.text_cache.path


def test_for_benchmark_takes_the_methods_protocol_and_class_file(monkeypatch):
    calls = []
    original = segmenter_module.QueryCache.embed
    monkeypatch.setattr(
        segmenter_module.QueryCache, "embed", lambda self, *a: calls.append(a[-1]) or original(self, *a)
    )
    seg = Segmenter.for_benchmark("voc21-sample", method="clearclip", **TINY)
    assert seg.settings == get_method("clearclip").settings("voc21", **TINY)
    assert seg.benchmark == "voc21-sample" and seg.classes.lines[0] == "background" and len(seg.classes) == 21
    seg.set_classes(["background", "cat", "dog"])  # replaces the default before anything is embedded
    assert calls == []
    result = seg.predict(VOC_IMAGE)
    assert calls == [("background", "cat", "dog")] and result.probs.shape == (3, 513, 513)
    seg.predict(VOC_IMAGE)
    assert len(calls) == 1
    own = Segmenter(method="sclip", **TINY)
    assert own.settings == get_method("sclip").settings(None, **TINY) and own.settings.slide_crop == 224
    assert Segmenter.for_benchmark("cityscapes", method="naclip", sigma=3, **TINY).settings.short_side == 560


def test_eval_and_segment_take_a_method(tmp_path, capsys):
    model = ["--model", "naclip-tiny", "--pretrained", "none", "--device", "cpu", "--short-side", "64"]
    out = tmp_path / "run"
    run = ["eval", "--benchmark", "voc21-sample", "--method", "sclip", "--limit", "1", "--out", str(out)]
    assert main([*run, *model, "--slide-crop", "32", "--slide-stride", "16", "--no-progress", "--workers", "0"]) == 0
    row = pd.read_csv(out / "summary.csv").iloc[0]
    assert (row.method, row.attention, row.arch, row.logit_scale) == ("sclip", "csa", "vanilla", 65)
    assert (row.area_threshold, row.prob_threshold, row.short_side, row.slide_crop) == (0.1, 0.1, 64, 32)
    segment = ["segment", str(VOC_IMAGE), "--classes", "cat; dog", "--method", "clearclip", "--out", str(tmp_path)]
    code = main([*segment, *model, "--slide-crop", "32", "--slide-stride", "32"])
    assert code == 0 and (tmp_path / "sample_0000_labels.png").is_file()
    assert main(["data", "list", "--method", "sclip"]) == 0
    listing = capsys.readouterr().out
    assert "voc21" in listing and " 65 " in listing and "area threshold 0.0 (VOC21: 0.1)" in listing
