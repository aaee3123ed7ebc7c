"""SCLIP (Wang, Mei, Yuille, 2023): correlative self-attention in a vanilla last block.

Settings from github:wangf3014/SCLIP at b56bd30: defaults `clip_segmentor.py:19-21` (logit
scale 40, prob_thd 0, 224/112 windows, no area threshold, no PAMR); the last block keeps its
residual and FFN (`clip/model.py:249-251`) with CSA attention (`:295-298`); post-processing
`clip_segmentor.py:148-179`: softmax, synonym max, area threshold (scores of dropped classes
zeroed, not renormalised), probability threshold. Scores are returned without renormalising.
"""

from naclip.methods.registry import Method, Protocol, register_method


@register_method
def sclip() -> Method:
    return Method(
        "sclip",
        "SCLIP (correlative self-attention)",
        dict(
            attention="csa",
            arch="vanilla",
            logit_scale=40.0,
            prob_threshold=0.0,
            area_threshold=0.0,
            short_side=336,
            slide_crop=224,
            slide_stride=112,
            pamr_steps=0,
            renormalise=False,
        ),
        {
            "voc21": Protocol(
                {"logit_scale": 65.0, "prob_threshold": 0.1, "area_threshold": 0.1},
                source="configs/cfg_voc21.py:5-8,17",
            ),
            "voc20": Protocol(source="configs/cfg_voc20.py:14"),
            "context60": Protocol(
                {"logit_scale": 50.0, "prob_threshold": 0.1}, source="configs/cfg_context60.py:5-7,16"
            ),
            "context59": Protocol(source="configs/cfg_context59.py:14"),
            "coco_object": Protocol(
                {"logit_scale": 50.0, "prob_threshold": 0.1}, source="configs/cfg_coco_object.py:5-7,16"
            ),
            "coco_stuff": Protocol({"short_side": 448}, source="configs/cfg_coco_stuff164k.py:14"),
            "cityscapes": Protocol({"short_side": 560}, source="configs/cfg_city_scapes.py:14"),
            "ade20k": Protocol(source="configs/cfg_ade20k.py:14"),
        },
        source="github:wangf3014/SCLIP@b56bd30",
        note="Sliding windows on every benchmark, no PAMR; area threshold on VOC21.",
    )
