"""NACLIP (Hajimiri, Ben Ayed, Dolz, WACV 2025): neighbourhood attention, reduced last block, PAMR.

Settings from github:sinahmr/NACLIP at 0cac3a6: defaults `naclip.py:20-22` (reduced, naclip,
sigma 5, logit scale 40, 224/112 windows, prob_thd 0), PAMR 10 steps with dilations (8, 16) as the
README's `test_all.sh reduced naclip 5 on` runs it; per-benchmark lines in `configs/cfg_*.py`.
Not reproduced on purpose: PAMR silently skipped on an out-of-memory error (`naclip.py:129-135`),
and `--show-dir` switching PAMR to 50 steps / 6 dilations for a whole run (`eval.py:24-36`).
"""

from naclip.methods.registry import Method, Protocol, register_method

_WHOLE = {"slide_crop": 0}
BENCHMARKS = {
    "voc21": Protocol({**_WHOLE, "prob_threshold": 0.1}, source="configs/cfg_voc21.py:5-7,16"),
    "voc20": Protocol(_WHOLE, source="configs/cfg_voc20.py:5-6,15"),
    "context60": Protocol({"prob_threshold": 0.1}, source="configs/cfg_context60.py:5-6,15"),
    "context59": Protocol(source="configs/cfg_context59.py:14"),
    "coco_object": Protocol({"prob_threshold": 0.1}, source="configs/cfg_coco_object.py:5-6,15"),
    "coco_stuff": Protocol(source="configs/cfg_coco_stuff164k.py:14"),
    "cityscapes": Protocol({"short_side": 560}, source="configs/cfg_city_scapes.py:14"),
    "ade20k": Protocol(source="configs/cfg_ade20k.py:14"),
}
DEFAULTS = dict(
    attention="naclip",
    arch="reduced",
    sigma=5.0,
    logit_scale=40.0,
    prob_threshold=0.0,
    short_side=336,
    slide_crop=224,
    slide_stride=112,
    pamr_steps=10,
    pamr_dilations=(8, 16),
    renormalise=True,
)


@register_method
def naclip() -> Method:
    """The authors' repository default: PAMR on (the headline numbers of their README)."""
    return Method(
        "naclip",
        "NACLIP with PAMR",
        DEFAULTS,
        BENCHMARKS,
        source="github:sinahmr/NACLIP@0cac3a6",
        note="PAMR post-processing on, as the authors' README runs it.",
    )


@register_method
def naclip_nopamr() -> Method:
    """The paper's Table 1 row: the same without post-processing."""
    return Method(
        "naclip-nopamr",
        "NACLIP without post-processing",
        {**DEFAULTS, "pamr_steps": 0},
        BENCHMARKS,
        source="github:sinahmr/NACLIP@0cac3a6",
        note="PAMR off: the paper's Table 1 row.",
    )
