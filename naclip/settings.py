"""Every option of a segmenter in typed, frozen objects.

`Settings` holds what every method has, and the method's name; `Settings.params` holds the
method's own parameters, a `Params` dataclass that the method declares beside its head
(`naclip/methods/`). Each field declares its group, help text and check; the command-line flags
(`naclip.options`), `--variant` parsing, the method presets and provenance all derive from them.
Groups:
- ``backbone``: which weights run where (`model`, `pretrained`, `device`, `dtype`, `seed`, the
  weights of a method's second models);
- ``protocol``: what the image goes through before the model (resize, windows);
- ``method``: the method's name, its own parameters and the post-processing. Only these may vary
  within one run: a sweep over them reuses the trunk pass (`Segmenter.predict_variants`);
- ``runtime``: how the work is scheduled; never changes a result.

Flat names address both: `settings.replace(sigma=3, pamr_steps=0)` sets a parameter of the method
and a shared field; `settings.sigma` reads `settings.params.sigma`. A method's parameters are named
after it (`resclip_rcs_weights`), so one name means one thing across methods. Values given as
text ("3", "8,16", "none") are typed; a name that belongs to another method is refused naming it.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from naclip.registry import Registry, unknown

GROUPS = ("backbone", "protocol", "method", "runtime")
DTYPES = ("float32", "float16", "bfloat16", "float64")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_NONE = ("none", "null", "random", "")


def option(
    default: Any,
    group: str,
    help: str,
    check: Callable[[Any], bool] | None = None,
    expect: str = "",
    choices: Callable[[], Iterable[str]] | tuple[str, ...] | None = None,
) -> Any:
    """A settings field: default, group, help text, and a check with what it expects."""
    assert group in GROUPS
    meta = {"group": group, "help": help, "check": check, "expect": expect, "choices": choices}
    return field(default=default, metadata=meta)


def positive(value: float) -> bool:
    return value > 0


class Checked:
    """A frozen dataclass of `option` fields, typed from text and checked on construction."""

    def __post_init__(self) -> None:
        kinds = typing.get_type_hints(type(self))
        for f in option_fields(type(self)):
            value = coerce_as(f.name, kinds[f.name], getattr(self, f.name))
            object.__setattr__(self, f.name, value)
            check, choices = f.metadata["check"], f.metadata["choices"]
            allowed = list(choices() if callable(choices) else choices or ())
            if value is not None and allowed and value not in allowed:
                raise ValueError(f"{f.name}={value!r} is not known; expected one of {', '.join(allowed)}")
            if check is not None and not check(value):
                raise ValueError(f"{f.name}={value!r}; expected {f.metadata['expect']}")
        self.check()

    def check(self) -> None:
        """Checks across fields (override); raise ValueError naming the values."""

    def to_dict(self, groups: tuple[str, ...] = GROUPS) -> dict[str, Any]:
        """The fields of `groups` by name."""
        return {f.name: getattr(self, f.name) for f in option_fields(type(self)) if f.metadata["group"] in groups}


def option_fields(cls: type) -> list[dataclasses.Field]:
    """The `option` fields of a settings class, in declaration order."""
    return [f for f in dataclasses.fields(cls) if "group" in f.metadata]


@dataclass(frozen=True)
class Params(Checked):
    """A method's own parameters: subclass as a frozen dataclass of `option` fields named after the method.

    `Params` itself is the empty set (a method without parameters of its own).
    """

    def replace(self, **changes: Any) -> Params:
        """A copy with `changes` (field names of this class) applied, typed and checked."""
        return dataclasses.replace(self, **changes)


# The parameters each registered method starts from (its preset's values), by method name; filled by
# `naclip.methods.registry.register_method`.
METHOD_PARAMS: Registry[Params] = Registry("method")


@dataclass(frozen=True)
class Settings(Checked):
    """Everything that decides a prediction (and a few things that only schedule it).

    `params` are the method's own parameters; None takes those of `method` as its preset sets them.
    """

    method: str = option("naclip", "method", "the method (a registered preset; naclip data list --method NAME)")
    # backbone
    model: str = option("ViT-B-16", "backbone", "open_clip ViT name (ViT-B-16, ViT-B-32, ViT-L-14, ...)")
    pretrained: str | None = option(
        "openai", "backbone", "open_clip tag (openai, laion2b_s34b_b88k, ...), a checkpoint file, or none (random)"
    )
    vfm_pretrained: tuple[str, ...] = option(
        (),
        "backbone",
        "weights of the method's second models as NAME=WEIGHTS (a tag, a file, or none); unnamed: each model's "
        "default (random when pretrained is none)",
        lambda v: all("=" in entry and entry.split("=", 1)[0] for entry in v),
        "NAME=WEIGHTS entries, like dino=/path/to/dino.pth",
    )
    device: str = option("auto", "backbone", "auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps")
    dtype: str | None = option(
        None, "backbone", "model precision (default: float16 on CUDA, float32 elsewhere)", choices=DTYPES
    )
    seed: int = option(
        0, "backbone", "seed of random weights (pretrained none)", lambda v: 0 <= v < 2**64, f"0..{2**64 - 1} (64 bits)"
    )
    # protocol
    short_side: int = option(336, "protocol", "resize so the short side has this length", positive, "> 0")
    long_side: int = option(2048, "protocol", "... and the long side at most this", positive, "> 0")
    slide_crop: int = option(224, "protocol", "sliding-window size (0: whole image at once)", lambda v: v >= 0, ">= 0")
    slide_stride: int = option(112, "protocol", "sliding-window stride", positive, "> 0")
    pad_windows: bool = option(
        False, "protocol", "zero-pad each window to a multiple of the patch size, centred (ClearCLIP)"
    )
    pad_multiple: int = option(
        0,
        "protocol",
        "padded windows: to a multiple of this many pixels instead of the patch size (0: the patch size)",
        lambda v: v >= 0,
        ">= 0",
    )
    # method: post-processing, shared by every method
    logit_scale: float = option(40.0, "method", "softmax temperature applied to cosine similarities", positive, "> 0")
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
    # runtime
    window_batch: int = option(16, "runtime", "windows encoded together (bounds memory)", positive, "> 0")
    cache_dir: str | None = option(None, "runtime", "where text embeddings are cached (default ~/.cache/naclip)")
    # the method's own parameters
    params: Params = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        super().__post_init__()
        preset = METHOD_PARAMS.get(self.method)
        params = preset if self.params is None else self.params
        if type(params) is not type(preset):
            raise ValueError(
                f"params of type {type(params).__name__} given for method {self.method!r}; expected "
                f"{type(preset).__name__}"
            )
        object.__setattr__(self, "params", params)

    def check(self) -> None:
        if self.long_side < self.short_side:
            raise ValueError(f"long_side={self.long_side} is below short_side={self.short_side}; expected >=")
        if self.slide_crop > 0 and self.slide_stride > self.slide_crop:
            raise ValueError(
                f"slide_stride={self.slide_stride} is larger than slide_crop={self.slide_crop}: pixels between "
                "windows would never be seen; expected a stride <= the crop"
            )

    def __getattr__(self, name: str) -> Any:
        """The method's own parameters read through: `settings.sigma` is `settings.params.sigma`."""
        if name.startswith("__") or name == "params":
            raise AttributeError(name)
        params = self.__dict__.get("params")
        if params is not None and name in {f.name for f in option_fields(type(params))}:
            return getattr(params, name)
        owners = owners_of(name)
        if owners:
            raise AttributeError(f"{name!r} is a parameter of {', '.join(owners)}, not of {self.method!r}")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def replace(self, **changes: Any) -> Settings:
        """A copy with `changes` applied (typed from text where needed); names unknown to the method are refused.

        `method` switches to another method's own parameters (as its preset sets them) before the
        other changes apply.
        """
        method = str(changes.get("method", self.method))
        check_keys(changes, method)
        own = {key: value for key, value in changes.items() if key in SETTINGS_FIELDS}
        params = METHOD_PARAMS.get(method) if method != self.method else self.params
        mine = {key: value for key, value in changes.items() if key not in SETTINGS_FIELDS}
        return dataclasses.replace(self, **own, params=params.replace(**mine) if mine else params)

    def to_dict(self, groups: tuple[str, ...] = GROUPS) -> dict[str, Any]:
        """The fields of `groups` by name, the method's own parameters flattened in (provenance, tables, keys)."""
        values = super().to_dict(groups)
        return {**values, **self.params.to_dict(groups)}

    @property
    def random_weights(self) -> bool:
        return self.pretrained is None


SETTINGS_FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in option_fields(Settings)}


def params_fields(method: str) -> dict[str, dataclasses.Field]:
    """The fields of `method`'s own parameters by name."""
    return {f.name: f for f in option_fields(type(METHOD_PARAMS.get(method)))}


def fields_of(method: str) -> dict[str, dataclasses.Field]:
    """Every field a settings object of `method` has: the shared ones, then the method's own."""
    return {**SETTINGS_FIELDS, **params_fields(method)}


def variant_keys(method: str) -> tuple[str, ...]:
    """What may vary within a run of `method`: the method group (its own parameters, the post-processing)."""
    return tuple(name for name, f in fields_of(method).items() if f.metadata["group"] == "method")


def owners_of(name: str) -> list[str]:
    """The registered methods that have a parameter `name` of their own; plug-in combinations (``a+b``) only
    where no method of its own has it (a plug-in's parameters are those of the method that brought it)."""
    owners = [method for method in METHOD_PARAMS if name in params_fields(method)]
    return [method for method in owners if "+" not in method] or owners


def check_keys(keys: Iterable[str], method: str) -> None:
    """ValueError naming an unknown key: the method it belongs to, or the closest known one."""
    known = fields_of(method)
    for key in keys:
        if key in known:
            continue
        owners = owners_of(key)
        if owners:
            raise ValueError(f"{key!r} is a parameter of method {' and '.join(owners)}, not of {method!r}")
        others = [name for other in METHOD_PARAMS for name in params_fields(other) if name not in known]
        error = unknown("key", key, list(dict.fromkeys([*known, *others])))
        raise error if "did you mean" in str(error) else unknown("key", key, list(known))


def check_variant(overrides: Mapping[str, Any], method: str) -> None:
    """A variant of `method` may change only the method group; anything else would change the shared trunk."""
    target = str(overrides.get("method", method))
    check_keys(overrides, target)
    fixed = [key for key in overrides if key not in variant_keys(target)]
    if fixed:
        raise ValueError(
            f"variant keys {fixed} cannot vary within a run (they change the shared trunk pass); "
            f"a variant of {target} may set {', '.join(variant_keys(target))}"
        )


def field_type(name: str) -> Any:
    """The declared type of field `name`: a shared one, or any registered method's own."""
    if name in SETTINGS_FIELDS:
        return _SETTINGS_TYPES[name]
    for method in owners_of(name):
        return typing.get_type_hints(type(METHOD_PARAMS.get(method)))[name]
    raise unknown("key", name, list(SETTINGS_FIELDS))


def coerce(name: str, value: Any) -> Any:
    """`value` in the type of field `name`: '3' -> 3.0 for sigma, '8,16' -> (8, 16), 'none' -> None."""
    return coerce_as(name, field_type(name), value)


def _optional(kind: Any) -> tuple[Any, bool]:
    """(the inner type, whether None is allowed) of `X | None`."""
    args = typing.get_args(kind)
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return inner[0], len(inner) < len(args)
    return kind, False


_EXPECTED = {bool: "true or false", int: "an integer", float: "a finite number", str: "text"}
_PLURAL = {bool: "true/false values", int: "integers", float: "finite numbers", str: "names"}


def coerce_as(name: str, declared: Any, value: Any) -> Any:
    """`value` as the declared type of field `name` (see `coerce`)."""
    kind, nullable = _optional(declared)
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
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            return int(value)  # exactly, past float's 53 bits
        number = float(value) if isinstance(value, str) else value
        if isinstance(number, float) and not number.is_integer():
            raise ValueError
        return int(number)
    number = float(value)
    if not math.isfinite(number):
        raise ValueError
    return number


_SETTINGS_TYPES = typing.get_type_hints(Settings)
