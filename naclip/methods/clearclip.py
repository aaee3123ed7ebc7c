"""ClearCLIP (Lan et al., ECCV 2024): query-query attention, no residual, no FFN.

Settings from github:mc-lan/ClearCLIP at ad68a40: defaults `clearclip_segmentor.py:22-23` (logit
scale 50, prob_thd 0, 448/224 windows), short side 448 in every `configs/cfg_*.py`, windows
zero-padded to a multiple of the patch size (`:168-180`, `compute_padsize` `:246-258`), no area
threshold, no PAMR, scores not renormalised (`:216-241`). The attention is `model_type='ClearCLIP'`
(q-q, `open_clip/transformer.py:614-616`) as in the paper and `demo.py:28`; the committed
`configs/base_config.py:6` says 'vanilla', which is not the published method. VOC21, VOC20 and
COCO-Object use ClearCLIP's own class files (no synonyms; shipped in resources/classes/clearclip).
"""

from naclip.methods.registry import Method, Protocol, register_method


@register_method
def clearclip() -> Method:
    return Method(
        "clearclip",
        "ClearCLIP (q-q attention, no residual, no FFN)",
        dict(
            attention="qq",
            arch="reduced",
            logit_scale=50.0,
            prob_threshold=0.0,
            short_side=448,
            slide_crop=448,
            slide_stride=224,
            pad_windows=True,
            pamr_steps=0,
            renormalise=False,
        ),
        {
            "voc21": Protocol({"prob_threshold": 0.5}, "clearclip/voc21.txt", "configs/cfg_voc21.py:5-6,15"),
            "voc20": Protocol({}, "clearclip/voc20.txt", "configs/cfg_voc20.py:5,14"),
            "context60": Protocol({"prob_threshold": 0.15}, source="configs/cfg_context60.py:5-6,15"),
            "context59": Protocol(source="configs/cfg_context59.py:14"),
            "coco_object": Protocol(
                {"prob_threshold": 0.4}, "clearclip/coco_object.txt", "configs/cfg_coco_object.py:5-6,15"
            ),
            "coco_stuff": Protocol(source="configs/cfg_coco_stuff164k.py:14"),
            "cityscapes": Protocol({"slide_crop": 224}, source="configs/cfg_city_scapes.py:5-6,15"),
            "ade20k": Protocol(source="configs/cfg_ade20k.py:14"),
        },
        source="github:mc-lan/ClearCLIP@ad68a40",
        note="Short side 448, windows 448/224 padded to the patch size, own VOC/COCO-Object class files.",
    )
