"""The typed settings object: types, checks, did-you-mean, replace, variants, derived flags."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from naclip.options import add_settings_arguments, settings_overrides
from naclip.settings import SETTINGS_FIELDS, Settings, check_variant, fields_of, variant_keys


def test_defaults_and_groups():
    settings = Settings()
    assert (settings.model, settings.pretrained, settings.attention, settings.arch) == (
        "ViT-B-16",
        "openai",
        "naclip",
        "reduced",
    )
    assert settings.pamr_dilations == (8, 16) and settings.area_threshold == 0.0
    assert {
        "method",
        "attention",
        "arch",
        "sigma",
        "logit_scale",
        "prob_threshold",
        "area_threshold",
        "pamr_steps",
        "pamr_dilations",
        "renormalise",
    } <= set(variant_keys("naclip"))
    assert not set(variant_keys("naclip")) & set(settings.to_dict(("backbone", "protocol", "runtime")))
    assert set(settings.to_dict(("backbone",))) == {"model", "pretrained", "vfm_pretrained", "device", "dtype", "seed"}
    assert set(settings.to_dict()) == set(fields_of("naclip")) == {*SETTINGS_FIELDS, "attention", "arch", "sigma"}


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"sigma": "3"}, {"sigma": 3.0}),
        ({"sigma": 3}, {"sigma": 3.0}),
        ({"pamr_steps": "4"}, {"pamr_steps": 4}),
        ({"pamr_steps": 4.0}, {"pamr_steps": 4}),
        ({"pamr_dilations": "4,8"}, {"pamr_dilations": (4, 8)}),
        ({"pamr_dilations": [1, 2, 3]}, {"pamr_dilations": (1, 2, 3)}),
        ({"pretrained": "none"}, {"pretrained": None}),
        ({"pretrained": None}, {"pretrained": None}),
        ({"pad_windows": "yes"}, {"pad_windows": True}),
        ({"renormalise": "false"}, {"renormalise": False}),
        ({"dtype": "float16"}, {"dtype": "float16"}),
    ],
)
def test_replace_types_values(changes, expected):
    settings = Settings().replace(**changes)
    assert {key: getattr(settings, key) for key in expected} == expected
    for key, value in expected.items():
        assert type(getattr(settings, key)) is type(value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"sigm": 3}, "unknown key 'sigm'; did you mean 'sigma'"),
        ({"pamr_step": 0}, "unknown key 'pamr_step'; did you mean 'pamr_steps'"),
        ({"sigma": "wide"}, r"sigma='wide'; expected a finite number"),
        ({"logit_scale": "inf"}, r"logit_scale='inf'; expected a finite number"),
        ({"sigma": float("nan")}, r"sigma=nan; expected a finite number"),
        ({"pamr_steps": 2.5}, r"pamr_steps=2.5; expected an integer"),
        ({"pamr_steps": True}, r"pamr_steps=True; expected an integer"),
        ({"pamr_dilations": "4,x"}, r"pamr_dilations='4,x'; expected integers like 8,16"),
        ({"pamr_dilations": ()}, r"pamr_dilations=\(\); expected positive integers"),
        ({"pad_windows": "maybe"}, r"pad_windows='maybe'; expected true or false"),
        ({"model": None}, "model must be set"),
        ({"dtype": "float99"}, "dtype='float99' is not known; expected one of float32"),
        ({"attention": "nope"}, "attention='nope' is not known"),
        ({"logit_scale": 0}, r"logit_scale=0.0; expected > 0"),
        ({"area_threshold": 1.0}, r"area_threshold=1.0; expected in \[0, 1\)"),
        ({"attention": "naclip", "sigma": 0}, "'naclip' needs sigma > 0"),
        ({"short_side": 500, "long_side": 400}, "long_side=400 is below short_side=500"),
        ({"slide_crop": 224, "slide_stride": 225}, "slide_stride=225 is larger than slide_crop=224"),
    ],
)
def test_bad_values_are_refused_with_what_was_expected(changes, message):
    with pytest.raises(ValueError, match=message):
        Settings().replace(**changes)


def test_settings_are_frozen_and_replace_copies():
    settings = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.sigma = 2.0  # type: ignore[misc]
    changed = settings.replace(sigma=2)
    assert settings.sigma == 5.0 and changed.sigma == 2.0 and changed != settings
    assert changed.replace(sigma=5) == settings


def test_whole_image_needs_no_stride_check():
    assert Settings(slide_crop=0, slide_stride=500).slide_crop == 0


def test_a_variant_changes_only_the_method_settings():
    check_variant({"sigma": 3, "attention": "kk", "pamr_steps": 0}, "naclip")
    with pytest.raises(ValueError, match=r"\['short_side'\] cannot vary within a run"):
        check_variant({"short_side": 448}, "naclip")
    with pytest.raises(ValueError, match="unknown key 'sigmaa'; did you mean 'sigma'"):
        check_variant({"sigmaa": 3}, "naclip")


def test_flags_derive_from_the_fields():
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    args = parser.parse_args(["--sigma", "3", "--pamr-dilations", "4", "8", "--pad-windows", "--pretrained", "none"])
    assert args.method == "naclip"
    assert settings_overrides(args) == {"sigma": 3.0, "pamr_dilations": [4, 8], "pad_windows": True, "pretrained": None}
    assert settings_overrides(parser.parse_args([])) == {}  # flags left out leave the preset alone
    flags = {option for action in parser._actions for option in action.option_strings}
    assert {"--" + name.replace("_", "-") for name in fields_of("naclip") if name != "method"} <= flags
    with pytest.raises(SystemExit):
        parser.parse_args(["--dtype", "float99"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--method", "nope"])
