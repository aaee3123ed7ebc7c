"""`naclip workbook run`, `list`, `index` and `gather`: regenerate the studies' tables and figures, show their
state, rebuild the index, gather a sweep's runs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from naclip.workbook.layout import Workbook
from naclip.workbook.params import DEFAULT_PROFILE, FALLBACK_PROFILE


def _folders(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--notebooks",
        type=Path,
        help="the study notebooks (default: notebooks/ of the workbook "
        "found from the working directory, else of the naclip checkout)",
    )
    parser.add_argument(
        "--params", type=Path, help="the profiles' parameter files (default: params/ beside the notebooks)"
    )
    parser.add_argument("--results", type=Path, help="where runs go (default: results/ beside the notebooks)")


def register(subparsers: argparse._SubParsersAction, argv: Sequence[str] = ()) -> None:
    """Add the `workbook` subcommand and its `run` and `list` actions."""
    parser = subparsers.add_parser("workbook", help="run the study notebooks (tables and figures)")
    actions = parser.add_subparsers(dest="action", required=True)
    run = actions.add_parser(
        "run",
        help="execute study notebooks with papermill and rebuild results/index.md and index.html",
        description=(
            "Execute study notebooks with papermill into results/<study>/<run>/ and rebuild results/index.md and "
            "results/index.html. Complete runs are skipped (--force redoes them); stale ones (notebook, "
            "parameters, naclip's version or code changed) are redone; a failed run does not stop the others, "
            f"and the exit status is 1 if any failed. Without --profile, the '{DEFAULT_PROFILE}' profile runs "
            "(the notebooks' defaults: real ViT-B-16 weights on the embedded samples); if those weights cannot "
            f"be loaded, the '{FALLBACK_PROFILE}' profile runs instead and every output says the weights were "
            "random. --model, --pretrained and --device override the profile in every study that has them."
        ),
    )
    run.add_argument("targets", nargs="*", metavar="STUDY", help="study names (default: all)")
    run.add_argument(
        "--profile",
        help=f"a folder of parameter files in params/ (paper, smoke), or its path; default: {DEFAULT_PROFILE}",
    )
    run.add_argument("--model", help="open_clip model for every study (e.g. ViT-L-14)")
    run.add_argument("--pretrained", help="pretrained tag or checkpoint file for every study ('none': random)")
    run.add_argument("--device", help="device for every study (auto, cpu, cuda, mps)")
    run.add_argument("--force", action="store_true", help="redo runs that are already complete")
    run.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="notebooks run at once (default 1; more only where the "
        "cores and the memory allow: each notebook loads its own model)",
    )
    run.add_argument("--dry-run", action="store_true", help="show what would run, with each run's state; run nothing")
    _folders(run)
    run.set_defaults(func=_run)
    listing = actions.add_parser(
        "list",
        help="the studies, their runs and each run's state",
        description="Every study with its runs under each profile (or --profile's) and "
        "any other run folder: complete, stale (and why), failed or missing.",
    )
    listing.add_argument("--profile", help="only this profile's runs")
    _folders(listing)
    listing.set_defaults(func=_list)
    index = actions.add_parser(
        "index",
        help="rebuild results/index.md and results/index.html from the run folders",
        description="Rebuild results/index.md and results/index.html from what the run folders hold, "
        "whoever made the runs (papermill, Run All, naclip workbook run).",
    )
    _folders(index)
    index.set_defaults(func=_index)
    gather = actions.add_parser(
        "gather",
        help="gather the runs of a study that differ in swept parameters into one table and figure",
        description="Read a table of every complete run of STUDY (or of --runs), add the parameters that differ "
        "between them as columns and draw mIoU against the swept one, into results/STUDY/gathered/ "
        "(a papermill sweep of one run per value gives one curve); then rebuild the index.",
    )
    gather.add_argument("study", metavar="STUDY", help="the study whose runs are gathered (e.g. sigma)")
    gather.add_argument("--table", default="results", help="the table gathered (default: results)")
    gather.add_argument("--x", help="the swept parameter (default: the only one that differs between the runs)")
    gather.add_argument("--runs", nargs="+", default=(), metavar="RUN", help="only these runs (default: all complete)")
    _folders(gather)
    gather.set_defaults(func=_gather)


def _workbook(args: argparse.Namespace) -> Workbook:
    return Workbook.at(args.notebooks, args.params, args.results)


def _run(args: argparse.Namespace) -> int:
    from naclip.workbook.regenerate import preview, regenerate, resolve

    overrides = {k: getattr(args, k) for k in ("model", "pretrained", "device") if getattr(args, k) is not None}
    if overrides.get("pretrained", "").lower() in ("none", "null", "random"):
        overrides["pretrained"] = None
    elif Path(overrides.get("pretrained", "")).is_file():  # the notebooks run elsewhere: make it absolute
        overrides["pretrained"] = str(Path(overrides["pretrained"]).resolve())
    workbook = _workbook(args)
    if args.dry_run:
        print("\n".join(preview(resolve(args.targets, args.profile, workbook, overrides), args.force)))
        return 0
    report = regenerate(args.targets, args.profile, workbook, args.force, overrides, args.jobs)
    print(
        f"workbook: {len(report.executed)} run(s) executed, {len(report.skipped)} skipped, {len(report.failed)} failed"
    )
    for run, error in report.failed:
        last = error.strip().splitlines()[-1] if error.strip() else ""
        print(f"  FAILED {run.study.name}/{run.name}: {last}", file=sys.stderr)
    return 0 if report.ok else 1


def _list(args: argparse.Namespace) -> int:
    from naclip.workbook.regenerate import listing

    print("\n".join(listing(_workbook(args), args.profile)))
    return 0


def _index(args: argparse.Namespace) -> int:
    from naclip.workbook.index import write_index

    for path in write_index(_workbook(args)):
        print(f"index: {path}")
    return 0


def _gather(args: argparse.Namespace) -> int:
    from naclip.workbook.gather import gather
    from naclip.workbook.index import write_index

    workbook = _workbook(args)
    print(f"gathered: {gather(workbook, args.study, args.table, args.x, args.runs)}")
    for path in write_index(workbook):
        print(f"index: {path}")
    return 0
