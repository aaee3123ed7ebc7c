"""Command-line flags derived from `Settings`, shared by `naclip segment` and `naclip eval`."""

from __future__ import annotations

import argparse
import functools
from typing import Any

from naclip.methods import METHODS
from naclip.settings import FIELDS, GROUPS, TYPES, Settings, coerce

_DEFAULTS = Settings()


def _parse(name: str, text: str) -> Any:
    try:
        return coerce(name, text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """`--method` and a flag per `Settings` field (`--pamr-steps`, ...).

    Only flags given on the command line are set on the parsed namespace, so the method's preset
    (and a benchmark's protocol) decide every value the user did not give.
    """
    presets = parser.add_argument_group("method preset")
    presets.add_argument(
        "--method",
        default="naclip",
        choices=list(METHODS),
        help="a method as its authors ran it; the flags below override its settings (default: naclip)",
    )
    groups = {group: parser.add_argument_group(f"{group} settings") for group in GROUPS}
    for name, f in FIELDS.items():
        flag = "--" + name.replace("_", "-")
        choices = f.metadata["choices"]
        choices = choices() if callable(choices) else choices
        help_text = f"{f.metadata['help']} (naclip: {_spell(getattr(_DEFAULTS, name))})"
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_text}
        if TYPES[name] is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif name == "pamr_dilations":
            kwargs.update(nargs="+", type=int, metavar="D")
        else:
            kwargs.update(type=functools.partial(_parse, name), choices=choices)
        groups[f.metadata["group"]].add_argument(flag, **kwargs)


def _spell(value: Any) -> str:
    if isinstance(value, tuple):
        return " ".join(str(v) for v in value)
    return "none" if value is None else str(value)


def settings_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The `Settings` fields given as flags."""
    return {name: getattr(args, name) for name in FIELDS if hasattr(args, name)}
