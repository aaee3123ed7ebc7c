"""The `naclip` command: `segment`, `eval`, `data` and `workbook` subcommands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from naclip import segment_cli
from naclip.datasets import cli as data_cli
from naclip.evaluation import cli as eval_cli
from naclip.workbook import cli as workbook_cli

# Each subcommand module exposes `register(subparsers, argv)`, which adds its parser and sets `func`; `argv` is the
# command line about to be parsed (`naclip eval --method resclip --help` lists ResCLIP's own flags).
SUBCOMMANDS = [segment_cli, eval_cli, data_cli, workbook_cli]


class _Parser(argparse.ArgumentParser):
    """A parser whose usage errors are one line (the full usage of `naclip eval` is 40 lines).

    Flags are never abbreviated (`--sigm 3` is an error, not `--sigma 3`); sub-parsers are of this class too.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "allow_abbrev": False})

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    parser = _Parser(prog="naclip", description="Training-free open-vocabulary semantic segmentation (NACLIP).")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.register(subparsers, argv)
    return parser


INTERRUPTED = 130  # the shell's code for a command ended by Ctrl-C (128 + SIGINT)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; an error is one line on stderr (exit 2), Ctrl-C one line saying what was kept (130)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as interrupt:
        print(f"naclip {args.command}: {str(interrupt) or 'interrupted'}", file=sys.stderr)
        return INTERRUPTED
    except (OSError, ValueError, RuntimeError) as error:
        print(f"naclip {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
