"""The fast path (`Segmenter.predict`) against the plain statement of the pipeline (`naclip.reference`), on every
registered method preset, with its default protocol and with a benchmark protocol's sliding windows."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest

from naclip import Segmenter
from naclip.methods import METHODS, get_method
from naclip.preprocess import load_image
from naclip.reference import predict_plain
from naclip.segmenter import Prediction
from naclip.sliding import window_boxes
from tests.conftest import VOC_IMAGE

CLASSES = ["background, sky", "cat", "dog, puppy", "person"]  # synonyms: 6 queries for 4 classes
IMAGE = load_image(VOC_IMAGE)[100:400, 60:300]  # (300, 240): a non-square part of the real sample
SHORT_SIDE = 120  # prepared (150, 120): not whole 16-pixel patches, so windows are padded or lose a partial patch
SEED = 5  # random weights under which SCLIP's two thresholds on VOC-21 both change labels (see the coverage test)
# The benchmark's windows shrunk with the image: 3 x 2 overlapping 100-pixel windows (the last row and column
# shifted back to the border; not whole patches either), which the fast path encodes 4 at a time (two batches)
# and the plain pipeline one by one.
WINDOWS = dict(slide_crop=100, slide_stride=40, window_batch=4)
# Layer parameters for naclip-tiny (3 blocks: trunk blocks 0 and 1), by parameter name; a method gets those
# that are its own. SC-CLIP and SFP place anomaly patches on non-square grids only with fixed positions.
TINY_LAYERS = dict(
    resclip_rcs_layers=(0, 1),
    scclip_pre_layer=1,
    scclip_post_layer=0,
    scclip_fusion_layers=(0, 1),
    scclip_fix_positions=True,
    sfp_outlier_layer=1,
    sfp_pre_layer=1,
    sfp_post_layer=0,
    sfp_fusion_layers=(0, 1),
    sfp_fix_positions=True,
    dihclip_pre_layer=1,
    dihclip_post_layer=0,
    dihclip_fusion_layers=(0, 1),
)
PROBS_TOLERANCE = 1e-5  # the plain PAMR sums neighbours in another order (~3e-6 apart); the rest agreed bit for bit


def windowed_benchmark(method: str) -> str:
    """The first of VOC-21 and Context-60 on which `method`'s protocol slides windows (VOC-21 if neither: the
    windows are set here anyway)."""
    return next((key for key in ("voc21", "context60") if get_method(method).settings(key).slide_crop), "voc21")


def build(method: str, benchmark: str | None, **overrides: object) -> Segmenter:
    """`method` with `benchmark`'s protocol (None: its default one) on the tiny random model, CPU, at a small size."""
    tiny = dict(model="naclip-tiny", pretrained=None, device="cpu", short_side=SHORT_SIDE, seed=SEED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights
        return Segmenter.for_benchmark(
            benchmark, method, CLASSES, **tiny, **get_method(method).own_params(TINY_LAYERS), **overrides
        )


@functools.cache
def segmenter(method: str, protocol: str) -> Segmenter:
    """`method` with its default protocol (its windows exceed the image: one window), or a benchmark's windows."""
    if protocol == "default":
        return build(method, None)
    windows = WINDOWS
    if get_method(method).head_spec.whole_image:  # its authors' code asserts windows of whole patches (Trident)
        windows = {**WINDOWS, "slide_crop": 96, "slide_stride": 48}
    return build(method, windowed_benchmark(method), **windows)


def assert_same(fast: Prediction, plain: Prediction) -> None:
    np.testing.assert_array_equal(fast.labels, plain.labels)
    np.testing.assert_allclose(fast.probs, plain.probs, rtol=0, atol=PROBS_TOLERANCE)


@pytest.mark.parametrize("protocol", ["default", "windows"])
@pytest.mark.parametrize("method", METHODS.names())
def test_fast_path_equals_the_plain_pipeline(method, protocol):
    seg = segmenter(method, protocol)
    fast = seg.predict(IMAGE)
    assert fast.labels.shape == IMAGE.shape[:2] and fast.probs.shape == (len(CLASSES), *IMAGE.shape[:2])
    assert_same(fast, predict_plain(seg, IMAGE))


def test_a_method_with_a_second_model(proxy):
    seg = build("proxy-test", None, **{**WINDOWS, "slide_crop": 96, "slide_stride": 48})  # whole 8-pixel patches
    assert list(seg.models) == ["toyvit"]
    assert_same(seg.predict(IMAGE), predict_plain(seg, IMAGE))


def test_the_cases_exercise_every_step():
    """Among the cases: PAMR, windows padded to whole patches and windows with a partial patch dropped, more
    windows than a batch, renormalised and raw scores; on SCLIP's VOC-21 case both thresholds change labels, the
    probability threshold only on the scores after the area threshold (so the order of the two is held too)."""
    naclip = segmenter("naclip", "default")
    (height, width), patch = naclip.prepare(IMAGE).shape[-2:], naclip.encoder.patch_size[0]
    cases = [segmenter(method, protocol).settings for method in METHODS.names() for protocol in ("default", "windows")]
    whole = [(0, height, 0, width)]
    boxes = [window_boxes(height, width, s.slide_crop, s.slide_stride) if s.slide_crop else whole for s in cases]
    partial = [
        s.pad_windows for s, ((y1, y2, x1, x2), *_) in zip(cases, boxes) if (y2 - y1) % patch or (x2 - x1) % patch
    ]
    assert True in partial and False in partial  # windows padded to whole patches, and windows losing a partial one
    assert any(len(windows) > s.window_batch for s, windows in zip(cases, boxes))
    assert any(s.pamr_steps > 0 for s in cases)
    assert {s.renormalise for s in cases} == {True, False}
    sclip = segmenter("sclip", "windows")
    variants = [{}, {"area_threshold": 0}, {"prob_threshold": 0}, {"area_threshold": 0, "prob_threshold": 0}]
    both, no_area, no_prob, neither = sclip.predict_variants(sclip.prepare(IMAGE), IMAGE.shape[:2], variants)
    assert (no_prob.labels != neither.labels).any()  # the area threshold moves pixels
    assert (both.labels != no_prob.labels).any()  # the probability threshold sends some of them to class 0
    assert (no_area.labels == neither.labels).all()  # and none without the area threshold


def test_the_check_tells_a_pipeline_that_differs():
    """The comparison fails for the plain pipeline without PAMR, or with a 1% larger logit scale."""
    fast = segmenter("naclip", "default").predict(IMAGE)
    for change in ({"pamr_steps": 0}, {"logit_scale": 40.4}):
        with pytest.raises(AssertionError):
            assert_same(fast, predict_plain(build("naclip", None, **change), IMAGE))
