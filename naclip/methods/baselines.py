"""CLIP as trained and MaskCLIP, the baselines of the paper's table, under NACLIP's protocol.

No run of either under these eight benchmarks' protocols is public (the published MaskCLIP row
is SCLIP's re-run, settings unpublished), so both borrow NACLIP's per-benchmark protocol without
PAMR. Every table that shows them says so.
"""

from naclip.methods import naclip as _naclip
from naclip.methods.registry import Method, register_method

_PROTOCOL = {**_naclip.DEFAULTS, "pamr_steps": 0}


@register_method
def clip() -> Method:
    """The last block as trained: q-k attention, residual and FFN."""
    return Method(
        "clip",
        "CLIP (as trained)",
        {**_PROTOCOL, "attention": "vanilla", "arch": "vanilla"},
        _naclip.BENCHMARKS,
        source="CLIP (Radford et al., 2021)",
        authors_protocol=False,
    )


@register_method
def maskclip() -> Method:
    """Value path only: each token attends to itself, no residual, no FFN (Zhou, Loy, Dai, ECCV 2022)."""
    return Method(
        "maskclip",
        "MaskCLIP (value path)",
        {**_PROTOCOL, "attention": "identity", "arch": "reduced"},
        _naclip.BENCHMARKS,
        source="MaskCLIP (Zhou et al., 2022)",
        authors_protocol=False,
    )
