"""Plug-ins stacked on methods (``base+plugin``): naming, labels, protocols, and that a plug-in turned off
gives the base method back."""

from __future__ import annotations

import re

import numpy as np
import pytest

from naclip import Segmenter, Settings
from naclip.methods import METHODS, get_method
from naclip.methods.registry import PLUGINS, UNPUBLISHED, combine, unregister_method
from naclip.options import chosen_method
from tests.conftest import VOC_IMAGE

RANDOM = dict(model="ViT-B-16", pretrained=None, device="cpu", dtype="float32")


@pytest.fixture
def built():
    """Names of combinations a test builds on demand, unregistered afterwards (they are not published in code)."""
    names: list[str] = []
    yield names
    for name in names:
        if name in METHODS:
            unregister_method(name)


def test_combinations_published_in_code_are_registered_with_their_authors_settings():
    method = get_method("sclip+resclip")
    assert "sclip+resclip" in METHODS and not method.unpublished and method.authors_protocol
    assert "as its authors' code runs it" in method.describe()
    voc = method.settings("voc21")
    # ResCLIP's own VOC21 config (whole image, prob_thd 0.1, its RCS/SFR weights), SCLIP's last block
    assert (voc.attention, voc.arch) == ("csa", "vanilla")
    assert (voc.slide_crop, voc.prob_threshold) == (0, 0.1)
    assert voc.resclip_rcs_weights == (2.0, 0.3) and voc.resclip_sfr_weights == (2.2, 0.7)
    assert voc.to_dict() == {
        **get_method("resclip").settings("voc21").to_dict(),
        **{"method": "sclip+resclip", "attention": "csa", "arch": "vanilla"},
    }
    clear = get_method("clearclip+resclip").settings("context59")
    assert (clear.attention, clear.arch) == ("qq", "reduced")


def test_an_unpublished_combination_is_built_on_demand_and_labelled(built):
    built.append("naclip+resclip")
    assert "naclip+resclip" not in METHODS
    settings = Settings(method="naclip+resclip")  # any spelling of a method builds it
    method = get_method("naclip+resclip")
    assert method.unpublished and not method.authors_protocol
    assert method.combination.startswith(UNPUBLISHED) and UNPUBLISHED in method.describe()
    # the base's protocol stands (NACLIP's PAMR and VOC21 whole image), ResCLIP's own defaults on top
    voc = method.settings("voc21")
    assert (voc.pamr_steps, voc.slide_crop, voc.prob_threshold) == (10, 0, 0.1)
    assert voc.resclip_rcs_weights == (2.0, 0.6) and settings.attention == "naclip"
    assert chosen_method(["--method", "naclip+resclip"]) == "naclip+resclip"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("scclip+resclip", "(head 'last_block'); method 'scclip' has head 'scclip'"),
        ("maskclip+resclip", "method 'maskclip' uses 'identity'"),
        ("sclip+resclp", "did you mean 'resclip'"),
        ("sclip+", "expected base+plugin"),
        ("sclp+resclip", "did you mean 'sclip'"),
    ],
)
def test_impossible_combinations_are_refused_by_name(name, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        combine(name)
    assert name not in METHODS


def test_every_plugin_documents_where_it_was_published():
    for plugin in PLUGINS.values():
        assert plugin.in_code <= set(plugin.published), plugin.name
        for base in plugin.in_code:
            assert f"{base}+{plugin.name}" in METHODS


def test_a_plugin_turned_off_gives_the_base_method_back():
    """sclip+resclip with RCS and SFR off (tau 1, lambda 0) is SCLIP's own last block on the same protocol."""
    protocol = dict(slide_crop=224, slide_stride=112, short_side=224, renormalise=True, prob_threshold=0.0)
    off = dict(resclip_rcs_weights=(1.0, 0.0), resclip_sfr_weights=(1.0, 0.0))
    classes = ["sky", "tree", "person", "car"]
    image = VOC_IMAGE
    base = Segmenter(method="sclip", **RANDOM, **protocol)
    combined = Segmenter(method="sclip+resclip", **RANDOM, **protocol, **off)
    on = Segmenter(method="sclip+resclip", **RANDOM, **protocol)
    predictions = []
    for seg in (base, combined, on):
        seg.set_classes(classes)
        predictions.append(seg.predict(image))
    np.testing.assert_array_equal(predictions[0].labels, predictions[1].labels)
    np.testing.assert_allclose(predictions[0].probs, predictions[1].probs, atol=1e-5)
    assert np.abs(predictions[2].probs - predictions[0].probs).max() > 1e-3  # and on, it changes the scores


def test_tlp_stacks_on_any_head_with_its_own_parameters(built):
    built.extend(["sclip+tlp", "scclip+tlp", "sclip+resclip+tlp"])
    sclip = get_method("sclip+tlp")
    assert "published in PEARL's paper" in sclip.combination and not sclip.unpublished
    settings = sclip.settings("voc21", tlp_grid=40)
    assert (settings.attention, settings.logit_scale, settings.tlp_grid, settings.tlp_steps) == ("csa", 65.0, 40, 25)
    assert get_method("scclip+tlp").unpublished and get_method("scclip+tlp").settings().scclip_beta == 0.4
    stacked = get_method("sclip+resclip+tlp")  # labelled by the least published of its steps
    assert stacked.unpublished and "as its authors' code runs it" in stacked.combination
    with pytest.raises(ValueError, match="'pearl' already propagates its logits with TLP"):
        combine("pearl+tlp")


def test_tlp_on_a_method_refines_its_logits_in_both_pipelines(built):
    """sclip+tlp with TLP off is SCLIP; on, it changes the scores, and the fast path still equals the plain one."""
    from naclip.reference import predict_plain

    built.append("sclip+tlp")
    tiny = dict(model="naclip-tiny", pretrained=None, device="cpu", short_side=120, slide_crop=100, slide_stride=40)
    classes = ["background, sky", "cat", "dog, puppy", "person"]
    segmenters = [
        Segmenter(method="sclip", **tiny),
        Segmenter(method="sclip+tlp", tlp_enabled=False, **tiny),
        Segmenter(method="sclip+tlp", tlp_grid=20, **tiny),
    ]
    for seg in segmenters:
        seg.set_classes(classes)
    base, off, on = (seg.predict(VOC_IMAGE) for seg in segmenters)
    np.testing.assert_array_equal(base.labels, off.labels)
    np.testing.assert_allclose(base.probs, off.probs, atol=1e-6)
    assert np.abs(on.probs - base.probs).max() > 1e-3
    plain = predict_plain(segmenters[2], VOC_IMAGE)
    np.testing.assert_array_equal(on.labels, plain.labels)
    np.testing.assert_allclose(on.probs, plain.probs, atol=1e-5)
