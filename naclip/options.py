"""Command-line flags derived from `Settings` and the methods' own parameters, shared by `naclip segment`
and `naclip eval`."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import typing
from collections.abc import Sequence
from typing import Any

from naclip.methods import METHODS, get_method
from naclip.settings import GROUPS, SETTINGS_FIELDS, coerce_as, option_fields


def chosen_method(argv: Sequence[str]) -> str:
    """The `--method` named in `argv` (default naclip; an unknown name is left to the parser to refuse).

    A combination (``sclip+resclip``) is built here, so that its parameters get their flags."""
    for index, arg in enumerate(argv):
        if arg == "--method" and index + 1 < len(argv):
            name = argv[index + 1]
        elif arg.startswith("--method="):
            name = arg.partition("=")[2]
        else:
            continue
        try:
            return get_method(name).name
        except ValueError:
            return "naclip"
    return "naclip"


def _method(name: str) -> str:
    try:
        return get_method(name).name
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _parse(name: str, kind: Any, text: str) -> Any:
    try:
        return coerce_as(name, kind, text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _own_fields() -> dict[str, tuple[dataclasses.Field, Any, list[str]]]:
    """Every method's own parameter: (field, declared type, the methods that have it)."""
    fields: dict[str, tuple[dataclasses.Field, Any, list[str]]] = {}
    for name, method in METHODS.items():
        params = method.head_spec.params
        kinds = typing.get_type_hints(params)
        for f in option_fields(params):
            fields.setdefault(f.name, (f, kinds[f.name], []))[2].append(name)
    return fields


def add_settings_arguments(parser: argparse.ArgumentParser, argv: Sequence[str] = ()) -> None:
    """`--method`, a flag per shared `Settings` field (`--pamr-steps`, ...) and per parameter of the method that
    `argv` (the command line to parse) names; other methods' parameters parse but are hidden, and are refused
    later with the name of the method they belong to.

    Only flags given on the command line are set on the parsed namespace, so the method's preset
    (and a benchmark's protocol) decide every value the user did not give.
    """
    method = chosen_method(argv)
    preset = get_method(method).settings()
    presets = parser.add_argument_group("method preset")
    presets.add_argument(
        "--method",
        default="naclip",
        type=_method,
        metavar="NAME",
        help=f"a method as its authors ran it ({', '.join(METHODS)}), or one with plug-ins stacked on it "
        "(base+plugin, like sclip+resclip); the flags below override its settings (default: naclip; "
        "`--method NAME --help` lists NAME's own parameters)",
    )
    groups = {group: parser.add_argument_group(f"{group} settings") for group in GROUPS}
    own = parser.add_argument_group(f"{method}'s own parameters")
    kinds = typing.get_type_hints(type(preset))
    for name, f in SETTINGS_FIELDS.items():
        if name != "method":
            _add_flag(groups[f.metadata["group"]], f, kinds[name], f"{method}: {_spell(getattr(preset, name))}")
    for name, (f, kind, owners) in _own_fields().items():
        if method in owners:
            _add_flag(own, f, kind, f"{method}: {_spell(getattr(preset, name))}")
        else:
            _add_flag(own, f, kind, None)


def _add_flag(group: argparse._ArgumentGroup, f: dataclasses.Field, kind: Any, default: str | None) -> None:
    """A flag for field `f`; `default` None hides it from --help."""
    choices = f.metadata["choices"]
    choices = list(choices()) if callable(choices) else choices
    shown = argparse.SUPPRESS if default is None else f"{f.metadata['help']} ({default})"
    kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": shown}
    if kind is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif f.name == "pamr_dilations":
        kwargs.update(nargs="+", type=int, metavar="D")
    else:
        kwargs.update(type=functools.partial(_parse, f.name, kind), choices=choices)
    group.add_argument("--" + f.name.replace("_", "-"), **kwargs)


def _spell(value: Any) -> str:
    if isinstance(value, tuple):
        return " ".join(str(v) for v in value) or "none"
    return "none" if value is None else str(value)


def settings_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags: shared fields and any method's own parameters (checked against the method
    when the settings are made)."""
    names = [name for name in SETTINGS_FIELDS if name != "method"] + list(_own_fields())
    return {name: getattr(args, name) for name in names if hasattr(args, name)}
