"""`naclip workbook run`: regenerate the studies' tables and figures."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from naclip.workbook.regenerate import DEFAULT_PROFILE, FALLBACK_PROFILE


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `workbook` subcommand and its `run` action."""
    parser = subparsers.add_parser("workbook", help="run the study notebooks (tables and figures)")
    actions = parser.add_subparsers(dest="action", required=True)
    run = actions.add_parser(
        "run",
        help="execute study notebooks with papermill and rebuild results/index.md",
        description=(
            "Execute study notebooks with papermill into results/<study>/<run>/ and rebuild results/index.md. "
            "Completed runs are skipped (--force redoes them); a failed run does not stop the others, and "
            f"the exit status is 1 if any failed. Without --profile, the '{DEFAULT_PROFILE}' profile runs "
            "(embedded samples, real ViT-B-16 weights); if those weights cannot be loaded, the "
            f"'{FALLBACK_PROFILE}' profile runs instead and every output says the weights were random."
        ),
    )
    run.add_argument("targets", nargs="*", metavar="STUDY", help="study names or study files (default: all)")
    run.add_argument("--profile", help="profile name in params/ or a profile file (smoke, samples, paper)")
    run.add_argument("--force", action="store_true", help="redo runs that are already complete")
    run.add_argument("--results", type=Path, help="results folder (default: results/ in the repository)")
    run.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from naclip.workbook.regenerate import regenerate

    report = regenerate(args.targets, profile=args.profile, results=args.results, force=args.force)
    print(
        f"workbook: {len(report.executed)} run(s) executed, {len(report.skipped)} skipped, "
        f"{len(report.failed)} failed"
    )
    for run, error in report.failed:
        last = error.strip().splitlines()[-1] if error.strip() else ""
        print(f"  FAILED {run.study.name}/{run.name}: {last}", file=sys.stderr)
    return 0 if report.ok else 1
