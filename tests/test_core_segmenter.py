"""The Segmenter end to end: scoring, synonyms, threshold, variants, inputs, errors."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import naclip.backbone as backbone
from naclip.encoder import Trunk
from naclip.preprocess import load_image, prepare, resized_size
from tests.conftest import VOC_IMAGE, make_segmenter


@pytest.fixture(scope="module")
def segmenter():
    seg = make_segmenter(pamr_steps=2)
    seg.set_classes(["sky, cloud", "cat", "dog, puppy, hound"])
    return seg


def test_prediction_shapes_and_probabilities(segmenter):
    result = segmenter.predict(VOC_IMAGE)
    assert result.labels.shape == (513, 513) and result.labels.dtype == np.int64
    assert result.probs.shape == (3, 513, 513) and result.probs.dtype == np.float32
    np.testing.assert_allclose(result.probs.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(result.labels, result.probs.argmax(0))


def test_softmax_in_place_gives_the_values_of_a_fresh_softmax():
    """`_finish` soft-maxes the logits in place (twice as fast on a CPU): it must change no bit."""
    generator = torch.Generator().manual_seed(8)
    for shape in ((60, 37, 53), (21, 336, 448), (1, 5, 7)):
        logits = (torch.rand(shape, generator=generator) * 2 - 1) * 40
        expected = torch.softmax(logits, 0)
        assert torch.equal(torch.softmax(logits, 0, out=logits), expected)


def test_synonyms_take_the_max_over_their_names_then_renormalise():
    image = torch.randn(3, 224, 288)
    grouped, flat = make_segmenter(pamr_steps=0), make_segmenter(pamr_steps=0)
    grouped.set_classes(["sky, cloud", "cat", "dog, puppy, hound"])
    flat.set_classes(["sky", "cloud", "cat", "dog", "puppy", "hound"])
    p = flat.predict_prepared(image, (224, 288)).probs  # each name its own class: a plain softmax
    expected = np.stack([np.maximum(p[0], p[1]), p[2], np.maximum(np.maximum(p[3], p[4]), p[5])])
    expected /= expected.sum(0)
    np.testing.assert_allclose(grouped.predict_prepared(image, (224, 288)).probs, expected, atol=1e-6)
    assert grouped.class_names == ["sky", "cat", "dog"]


def test_threshold_uses_the_top_probability_before_renormalising():
    image = torch.randn(3, 224, 224)
    seg = make_segmenter(pamr_steps=0)
    seg.set_classes(["background", "cat", "dog, puppy"])
    low, high = seg.predict_variants(image, (224, 224), [{"prob_threshold": 0.0}, {"prob_threshold": 0.55}])
    flat = make_segmenter(pamr_steps=0)
    flat.set_classes(["background", "cat", "dog", "puppy"])
    p = flat.predict_prepared(image, (224, 224)).probs
    top = np.maximum.reduce([p[0], p[1], np.maximum(p[2], p[3])])
    assert 0 < (top < 0.55).sum() < top.size, "pick a threshold that splits the pixels"
    np.testing.assert_array_equal(high.labels, np.where(top < 0.55, 0, low.labels))
    assert seg.predict_variants(image, (224, 224), [{"prob_threshold": 1.0}])[0].labels.max() == 0


def test_variants_equal_separate_segmenters():
    image = torch.randn(3, 336, 400)
    variants = [{"sigma": 2.0}, {"attention": "csa", "arch": "vanilla"}, {"pamr_steps": 3, "logit_scale": 20.0}]
    shared = make_segmenter(pamr_steps=0)
    shared.set_classes(["a", "b, c"])
    results = shared.predict_variants(image, (300, 360), variants)
    for variant, result in zip(variants, results):
        alone = make_segmenter(**{"pamr_steps": 0, **variant})
        alone.set_classes(["a", "b, c"])
        np.testing.assert_allclose(result.probs, alone.predict_prepared(image, (300, 360)).probs, atol=1e-6)


def test_variants_cannot_change_the_trunk(segmenter):
    with pytest.raises(ValueError, match=r"\['slide_crop'\] cannot vary"):
        segmenter.predict_variants(torch.randn(3, 224, 224), (224, 224), [{"slide_crop": 0}])


def test_deterministic(segmenter):
    first, second = segmenter.predict(VOC_IMAGE), segmenter.predict(VOC_IMAGE)
    np.testing.assert_array_equal(first.probs, second.probs)
    other = make_segmenter(pamr_steps=2)
    other.set_classes(["sky, cloud", "cat", "dog, puppy, hound"])
    np.testing.assert_array_equal(other.predict(VOC_IMAGE).labels, first.labels)


def test_image_inputs_agree(segmenter):
    array = load_image(VOC_IMAGE)
    by_path = segmenter.predict(VOC_IMAGE).labels
    np.testing.assert_array_equal(segmenter.predict(Image.open(VOC_IMAGE)).labels, by_path)
    np.testing.assert_array_equal(segmenter.predict(array).labels, by_path)
    assert load_image(array[..., 0]).shape == array.shape


def test_preprocessing_follows_the_protocol():
    assert resized_size(375, 500, 336, 2048) == (336, 448)
    assert resized_size(500, 375, 336, 2048) == (448, 336)
    assert resized_size(100, 5000, 336, 2048) == (41, 2048)
    tensor = prepare(np.full((10, 20, 3), 255, dtype=np.uint8), short_side=20, long_side=100)
    assert tensor.shape == (3, 20, 40)
    torch.testing.assert_close(
        tensor[:, 0, 0],
        (255 - torch.tensor([122.771, 116.746, 104.094])) / torch.tensor([68.501, 66.632, 70.323]),
    )


def test_image_errors(segmenter, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        segmenter.predict(tmp_path / "missing.jpg")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.jpg.*cannot be read"):
        segmenter.predict(broken)
    with pytest.raises(ValueError, match=r"shape \(4, 4, 4\).*expected \(H, W, 3\) uint8"):
        segmenter.predict(np.zeros((4, 4, 4), dtype=np.uint8))


def test_class_errors(tmp_path):
    seg = make_segmenter()
    with pytest.raises(RuntimeError, match="no classes set"):
        seg.predict(VOC_IMAGE)
    with pytest.raises(ValueError, match="class 2 .* empty name"):
        seg.set_classes(["cat", "dog, "])
    bad = tmp_path / "classes.txt"
    bad.write_text("cat\n\ndog\n")
    with pytest.raises(ValueError, match="classes.txt:2: blank line"):
        seg.set_classes(bad)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        seg.set_classes(tmp_path / "nope.txt")
    good = tmp_path / "good.txt"
    good.write_text("cat, kitty\ndog\n\n")
    seg.set_classes(good)
    assert seg.class_names == ["cat", "dog"] and seg.classes.queries == ("cat", "kitty", "dog")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"attention": "nope"}, "attention='nope' is not known; expected one of csa, identity"),
        ({"arch": "tiny"}, "arch='tiny' is not known; expected one of reduced, vanilla"),
        ({"sigma": 0.0}, "'naclip' needs sigma > 0"),
        ({"pamr_steps": -1}, "pamr_steps=-1; expected >= 0"),
        ({"prob_threshold": 2.0}, r"prob_threshold=2.0; expected 0..1"),
        ({"slide_crop": 224, "slide_stride": 0}, "slide_stride=0; expected > 0"),
        ({"slide_crop": 224, "slide_stride": 300}, "slide_stride=300 is larger than slide_crop=224"),
        ({"sigm": 3}, "unknown key 'sigm'; did you mean 'sigma'"),
        ({"method": "sclp"}, "unknown method 'sclp'; did you mean 'sclip'"),
        ({"model": "ViT-X-99"}, "unknown open_clip model 'ViT-X-99'"),
        ({"model": "RN50"}, "'RN50' has no plain ViT image tower"),
        ({"model": "convnext_base"}, "'convnext_base' has no plain ViT image tower"),
        ({"model": "ViT-B-16", "pretrained": "no-such-tag"}, "unknown pretrained tag 'no-such-tag' for ViT-B-16"),
    ],
)
def test_option_errors(options, message):
    with pytest.raises(ValueError, match=message):
        make_segmenter(**options)


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights.pt"):
        make_segmenter(pretrained=str(tmp_path / "weights.pt"))


def test_offline_without_cached_weights_fails_fast_with_help(tmp_path, monkeypatch):
    monkeypatch.setattr(backbone, "_reachable", lambda host: False)
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"not in the local cache.*pretrained='/path/to/checkpoint'"):
        make_segmenter(model="ViT-B-16", pretrained="openai", cache_dir=str(tmp_path))
    assert time.perf_counter() - start < 10


def test_local_checkpoint_gives_the_same_model(tmp_path):
    source = make_segmenter(seed=5, pamr_steps=0)
    path = tmp_path / "tiny.pt"
    torch.save(source.clip.state_dict(), path)
    loaded = make_segmenter(seed=99, pretrained=str(path), pamr_steps=0)
    assert not loaded.random_weights
    for seg in (source, loaded):
        seg.set_classes(["cat", "dog"])
    np.testing.assert_array_equal(source.predict(VOC_IMAGE).probs, loaded.predict(VOC_IMAGE).probs)


def test_vit_b16_shapes_with_random_weights():
    """The real ViT-B-16 geometry: 16-pixel patches, 768 wide, 14 x 14 native grid interpolated."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = make_segmenter(model="ViT-B-16", pamr_steps=1)
    seg.set_classes(["cat", "dog"])
    tensor = torch.randn(3, 336, 448)
    assert seg.encoder.features(tensor[None], "naclip", "reduced", 5.0).shape == (1, 21 * 28, 512)
    result = seg.predict_prepared(tensor, (300, 400))
    assert result.probs.shape == (2, 300, 400)


def test_patch_attention_maps(segmenter):
    maps = segmenter.patch_attention(VOC_IMAGE, attention="naclip", sigma=1.0)
    assert maps.shape == (21 * 21, 21, 21)
    sums = maps.sum((1, 2))  # the rest of each row goes to [CLS], which gets no Gaussian bias
    assert np.all(sums <= 1 + 1e-6) and np.all(sums > 0.9)
    centre = 10 * 21 + 10  # with sigma 1 on random weights, the neighbourhood dominates
    assert np.unravel_index(maps[centre].argmax(), (21, 21)) == (10, 10)
    # The default head's attention is the variant's weights on the trunk's tokens, as before heads said it.
    tokens = segmenter.encoder.trunk(segmenter.prepare(load_image(VOC_IMAGE))[None])
    weights = segmenter.encoder.attention_weights(Trunk(tokens), (21, 21), "naclip", 1.0)[0].mean(0)[1:, 1:]
    np.testing.assert_array_equal(maps, weights.reshape(-1, 21, 21).numpy())
    np.testing.assert_array_equal(segmenter.patch_attention(VOC_IMAGE, sigma=1.0), maps)  # naclip: the default


def test_openai_format_checkpoint_loads_with_quick_gelu(tmp_path):
    source = make_segmenter(seed=5)
    state = {
        **source.clip.state_dict(),
        "input_resolution": torch.tensor(224),
        "context_length": torch.tensor(77),
        "vocab_size": torch.tensor(49408),
    }
    path = tmp_path / "openai-style.pt"
    torch.save(state, path)
    loaded = make_segmenter(pretrained=str(path))
    for key, value in source.clip.state_dict().items():
        torch.testing.assert_close(loaded.clip.state_dict()[key], value)
    activation = loaded.clip.visual.transformer.resblocks[0].mlp.gelu
    assert type(activation).__name__ == "QuickGELU"


def test_unreadable_checkpoint(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="broken.pt' cannot be read"):
        make_segmenter(pretrained=str(path))


def test_images_thinner_than_a_patch_and_windows_smaller_than_a_patch_are_refused(tmp_path):
    seg = make_segmenter(pamr_steps=0, slide_crop=0, short_side=64)
    seg.set_classes(["cat", "dog"])
    path = tmp_path / "thin.png"
    Image.fromarray(np.zeros((4, 3000, 3), dtype=np.uint8)).save(path)
    with pytest.raises(ValueError, match=r"thin\.png: image is 3000x4 pixels, resized to 2048x3 .*patch"):
        seg.predict(path)
    with pytest.raises(ValueError, match="slide_crop=8 is smaller than the 16-pixel patch of naclip-tiny"):
        make_segmenter(slide_crop=8, slide_stride=8)
    assert make_segmenter(slide_crop=8, slide_stride=8, pad_windows=True).min_side == 1
