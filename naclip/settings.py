"""Every option of a segmenter in one typed, frozen object.

Each field declares its group, help text and check; the command-line flags (`naclip.options`),
`--variant` parsing, the method presets (`naclip.methods`) and provenance all derive from it.
Groups:
- ``backbone``: which weights run where (`model`, `pretrained`, `device`, `dtype`, `seed`);
- ``protocol``: what the image goes through before the model (resize, windows);
- ``method``: the last block and the post-processing. Only these may vary within one run: a
  sweep over them reuses the trunk pass (`Segmenter.predict_variants`);
- ``runtime``: how the work is scheduled; never changes a result.

A variant is ``settings.replace(sigma=3)``; values given as text ("3", "8,16", "none") are typed.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

GROUPS = ("backbone", "protocol", "method", "runtime")
DTYPES = ("float32", "float16", "bfloat16", "float64")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_NONE = ("none", "null", "random", "")


def _choices_attention() -> list[str]:
    from naclip.attention import ATTENTIONS

    return sorted(ATTENTIONS)


def _choices_arch() -> list[str]:
    from naclip.encoder import ARCHITECTURES

    return sorted(ARCHITECTURES)


def _choices_head() -> list[str]:
    from naclip.heads import HEADS

    return sorted(HEADS)


def option(
    default: Any,
    group: str,
    help: str,
    check: Callable[[Any], bool] | None = None,
    expect: str = "",
    choices: Callable[[], list[str]] | tuple[str, ...] | None = None,
) -> Any:
    """A settings field: default, group, help text, and a check with what it expects."""
    assert group in GROUPS
    meta = {"group": group, "help": help, "check": check, "expect": expect, "choices": choices}
    return field(default=default, metadata=meta)


def _positive(value: float) -> bool:
    return value > 0


@dataclass(frozen=True)
class Settings:
    """Everything that decides a prediction (and a few things that only schedule it)."""

    # backbone
    model: str = option("ViT-B-16", "backbone", "open_clip ViT name (ViT-B-16, ViT-B-32, ViT-L-14, ...)")
    pretrained: str | None = option(
        "openai", "backbone", "open_clip tag (openai, laion2b_s34b_b88k, ...), a checkpoint file, or none (random)"
    )
    device: str = option("auto", "backbone", "auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps")
    dtype: str | None = option(
        None, "backbone", "model precision (default: float16 on CUDA, float32 elsewhere)", choices=DTYPES
    )
    seed: int = option(0, "backbone", "seed of random weights (pretrained none)")
    # protocol
    short_side: int = option(336, "protocol", "resize so the short side has this length", _positive, "> 0")
    long_side: int = option(2048, "protocol", "... and the long side at most this", _positive, "> 0")
    slide_crop: int = option(224, "protocol", "sliding-window size (0: whole image at once)", lambda v: v >= 0, ">= 0")
    slide_stride: int = option(112, "protocol", "sliding-window stride", _positive, "> 0")
    pad_windows: bool = option(
        False, "protocol", "zero-pad each window to a multiple of the patch size, centred (ClearCLIP)"
    )
    # method
    head: str = option(
        "last_block",
        "method",
        "how patch features are made from the trunk",
        choices=_choices_head,
    )
    attention: str = option("naclip", "method", "last-block attention variant", choices=_choices_attention)
    arch: str = option(
        "reduced", "method", "last-block architecture: reduced drops the residual and FFN", choices=_choices_arch
    )
    sigma: float = option(5.0, "method", "std of the Gaussian neighbourhood bias, in patches", lambda v: v >= 0, ">= 0")
    logit_scale: float = option(40.0, "method", "softmax temperature applied to cosine similarities", _positive, "> 0")
    prob_threshold: float = option(
        0.0, "method", "pixels whose top class probability is below this become class 0", lambda v: 0 <= v <= 1, "0..1"
    )
    area_threshold: float = option(
        0.0,
        "method",
        "SCLIP: zero the scores of foreground classes that win at most this share of the foreground pixels (0: off)",
        lambda v: 0 <= v < 1,
        "in [0, 1)",
    )
    pamr_steps: int = option(10, "method", "PAMR iterations (0 disables PAMR)", lambda v: v >= 0, ">= 0")
    pamr_dilations: tuple[int, ...] = option(
        (8, 16), "method", "PAMR dilations", lambda v: len(v) > 0 and min(v) >= 1, "positive integers"
    )
    renormalise: bool = option(True, "method", "rescale the returned class probabilities to sum to 1 per pixel")
    # method: ResCLIP's head (naclip/methods/resclip.py)
    resclip_rcs_layers: tuple[int, ...] = option(
        (5, 6, 7, 8),
        "method",
        "ResCLIP: trunk blocks (0-based) whose q-k attention maps RCS averages",
        lambda v: len(v) > 0 and min(v) >= 0,
        "block indices >= 0",
    )
    resclip_rcs_weights: tuple[float, ...] = option(
        (2.0, 0.6),
        "method",
        "ResCLIP: (tau, lambda) of RCS, attention <- tau ((1 - lambda) attention + lambda RCS); 1,0 turns RCS off",
        lambda v: len(v) == 2 and v[0] > 0 and 0 <= v[1] <= 1,
        "tau > 0 and 0 <= lambda <= 1, like 2,0.3",
    )
    resclip_sfr_weights: tuple[float, ...] = option(
        (2.1, 0.6),
        "method",
        "ResCLIP: (tau, lambda) of SFR, logits <- tau ((1 - lambda) logits + lambda prior); 1,0: off, no first pass",
        lambda v: len(v) == 2 and v[0] > 0 and 0 <= v[1] <= 1,
        "tau > 0 and 0 <= lambda <= 1, like 1.8,0.7",
    )
    resclip_temp_threshold: float = option(
        0.1,
        "method",
        "ResCLIP: first-pass pixels whose top query probability is below this take query 0",
        lambda v: 0 <= v <= 1,
        "0..1",
    )
    resclip_delete_same_entity: bool = option(
        True, "method", "ResCLIP: decay the prior between patches of one query whose path leaves that query"
    )
    resclip_whole_path: bool = option(
        False,
        "method",
        "ResCLIP: check the whole path between two patches (the authors' code checks only its first distance/max part)",
    )
    # method: SC-CLIP's head (naclip/methods/scclip.py)
    scclip_neighbours: int = option(
        30, "method", "SC-CLIP: neighbours of the outlier factor that finds anomaly patch tokens", _positive, "> 0"
    )
    scclip_contamination: float = option(
        0.05,
        "method",
        "SC-CLIP: share of patch tokens flagged as anomalies (outlier factor above this upper quantile)",
        lambda v: 0 <= v < 1,
        "in [0, 1)",
    )
    scclip_pre_layer: int = option(
        8,
        "method",
        "SC-CLIP: trunk block (0-based) whose patch similarity aggregates the tokens and guides the last attention",
        lambda v: v >= 0,
        ">= 0",
    )
    scclip_post_layer: int = option(
        3,
        "method",
        "SC-CLIP: trunk block (0-based) whose patch similarity aggregates the last block's output",
        lambda v: v >= 0,
        ">= 0",
    )
    scclip_fusion_layers: tuple[int, ...] = option(
        (3, 4, 5, 6, 7, 8, 9),
        "method",
        "SC-CLIP: trunk blocks (0-based) whose tokens are summed and passed through the last block again",
        lambda v: len(v) > 0 and min(v) >= 0,
        "block indices >= 0",
    )
    scclip_beta: float = option(
        0.4,
        "method",
        "SC-CLIP: patch similarities below this are left out of the aggregations",
        lambda v: -1 <= v <= 1,
        "in [-1, 1]",
    )
    scclip_res_cls: float = option(
        0.3,
        "method",
        "SC-CLIP: weight of the [CLS] token added to every patch after the last block",
        lambda v: v >= 0,
        ">= 0",
    )
    scclip_fix_positions: bool = option(
        False,
        "method",
        "SC-CLIP: put anomaly patches at their own (row, column); false keeps the authors' (i // rows, i % rows), "
        "the same on square patch grids",
    )
    # runtime
    window_batch: int = option(16, "runtime", "windows encoded together (bounds memory)", _positive, "> 0")
    cache_dir: str | None = option(None, "runtime", "where text embeddings are cached (default ~/.cache/naclip)")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = coerce(f.name, getattr(self, f.name))
            object.__setattr__(self, f.name, value)
            check, choices = f.metadata["check"], f.metadata["choices"]
            allowed = choices() if callable(choices) else choices
            if value is not None and allowed and value not in allowed:
                raise ValueError(f"{f.name}={value!r} is not known; expected one of {', '.join(allowed)}")
            if check is not None and not check(value):
                raise ValueError(f"{f.name}={value!r}; expected {f.metadata['expect']}")
        from naclip.attention import get_attention

        if get_attention(self.attention).neighbourhood and not self.sigma > 0:
            raise ValueError(f"attention {self.attention!r} needs sigma > 0, got sigma={self.sigma}")
        if self.long_side < self.short_side:
            raise ValueError(f"long_side={self.long_side} is below short_side={self.short_side}; expected >=")
        if self.slide_crop > 0 and self.slide_stride > self.slide_crop:
            raise ValueError(
                f"slide_stride={self.slide_stride} is larger than slide_crop={self.slide_crop}: pixels between "
                "windows would never be seen; expected a stride <= the crop"
            )

    def replace(self, **changes: Any) -> Settings:
        """A copy with `changes` applied (typed from text where needed); unknown keys are refused."""
        check_keys(changes)
        return dataclasses.replace(self, **changes)

    def to_dict(self, groups: tuple[str, ...] = GROUPS) -> dict[str, Any]:
        """The fields of `groups` by name (for provenance, tables and run keys)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata["group"] in groups}

    @property
    def random_weights(self) -> bool:
        return self.pretrained is None


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(Settings)}
TYPES: dict[str, Any] = typing.get_type_hints(Settings)
VARIANT_KEYS: tuple[str, ...] = tuple(name for name, f in FIELDS.items() if f.metadata["group"] == "method")


def check_keys(keys: typing.Iterable[str], allowed: typing.Iterable[str] | None = None, what: str = "key") -> None:
    """ValueError naming an unknown key and the closest known one."""
    known = list(FIELDS if allowed is None else allowed)
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; expected one of {', '.join(known)}"
            raise ValueError(f"unknown {what} {key!r}{hint}")


def check_variant(overrides: Mapping[str, Any]) -> None:
    """A variant may change only the method group; anything else would change the shared trunk."""
    check_keys(overrides)
    fixed = [key for key in overrides if key not in VARIANT_KEYS]
    if fixed:
        raise ValueError(
            f"variant keys {fixed} cannot vary within a run (they change the shared trunk pass); "
            f"a variant may set {', '.join(VARIANT_KEYS)}"
        )


def _optional(kind: Any) -> tuple[Any, bool]:
    """(the inner type, whether None is allowed) of `X | None`."""
    args = typing.get_args(kind)
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return inner[0], len(inner) < len(args)
    return kind, False


_EXPECTED = {bool: "true or false", int: "an integer", float: "a number", str: "text"}
_PLURAL = {bool: "true/false values", int: "integers", float: "numbers", str: "names"}


def coerce(name: str, value: Any) -> Any:
    """`value` in the type of field `name`: '3' -> 3.0 for sigma, '8,16' -> (8, 16), 'none' -> None."""
    kind, nullable = _optional(TYPES[name])
    if value is None or (nullable and isinstance(value, str) and value.strip().lower() in _NONE):
        if not nullable:
            raise ValueError(f"{name} must be set; expected {_EXPECTED.get(kind, 'a value')}")
        return None
    is_tuple = typing.get_origin(kind) is tuple
    try:
        if is_tuple:
            items = value.replace(" ", ",").split(",") if isinstance(value, str) else list(value)
            return tuple(_scalar(typing.get_args(kind)[0], v) for v in items if str(v).strip() != "")
        return _scalar(kind, value)
    except (TypeError, ValueError):
        expected = f"{_PLURAL[typing.get_args(kind)[0]]} like 8,16" if is_tuple else _EXPECTED[kind]
        raise ValueError(f"{name}={value!r}; expected {expected}") from None


def _scalar(kind: type, value: Any) -> Any:
    """One value as `kind`, refusing lossy conversions (2.5 as an int, 'yes' as a number, a list as text)."""
    if kind is bool:
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, (bool, int)) and value in (0, 1):
            return bool(value)
        raise ValueError
    if kind is str:
        if isinstance(value, (bool, int, float, list, tuple, dict)):
            raise ValueError
        return str(value)
    if isinstance(value, bool):
        raise ValueError
    if kind is int:
        number = float(value) if isinstance(value, str) else value
        if isinstance(number, float) and not number.is_integer():
            raise ValueError
        return int(number)
    return number if abs(number := float(value)) < float("inf") else float("refused: not finite")  # inf, nan
