"""The results index: ``results/index.md`` links every table and figure with the configuration and provenance.

It is rebuilt from what the run folders hold (``run.json``, ``failed.json``, ``outputs.json``), so it always
describes the results on disk, whichever invocation made them. Studies with several runs also get one
table per table name with every run's rows (``<study>/<table>.all-runs.csv``).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from naclip.io import atomic_write, write_csv
from naclip.workbook.outputs import RANDOM_BANNER, read_manifest
from naclip.workbook.runner import FAILED, MARKER

INDEX = "index.md"


def _records(results: Path) -> list[dict[str, Any]]:
    records = []
    for folder in sorted(p for p in results.glob("*/*") if p.is_dir()):
        record = {"study": folder.parent.name, "run": folder.name, "status": "incomplete"}
        for name, status in ((MARKER, "complete"), (FAILED, "failed")):
            if (folder / name).is_file():
                record = {**json.loads((folder / name).read_text()), "status": status}
                break
        records.append({**record, "folder": folder})
    return sorted(records, key=lambda r: (r.get("notebook", "~"), r["study"], r["run"]))


def combine_runs(study_dir: Path, records: list[dict[str, Any]]) -> list[Path]:
    """Concatenate each table over a study's complete runs (a ``run`` column added); the files written."""
    complete = [r for r in records if r["status"] == "complete"]
    if len(complete) < 2:
        return []
    frames: dict[str, list[pd.DataFrame]] = {}
    for record in complete:
        for table in read_manifest(record["folder"])["tables"]:
            frame = pd.read_csv(record["folder"] / table["file"])
            frames.setdefault(table["name"], []).append(frame.assign(run=record["run"]))
    written = []
    for name, parts in frames.items():
        path = study_dir / f"{name}.all-runs.csv"
        write_csv(pd.concat(parts, ignore_index=True), path)
        written.append(path)
    return written


def _config(parameters: dict[str, Any]) -> str:
    return ", ".join(f"`{k}={v}`" for k, v in parameters.items())


def _provenance(record: dict[str, Any]) -> str:
    env = record.get("provenance", {})
    commit = (env.get("git_commit") or "unknown")[:12] + (" (uncommitted changes)" if env.get("git_dirty") else "")
    parts = [f"profile `{record.get('profile')}`", f"commit `{commit}`", f"started {record.get('started')}"]
    if "seconds" in record:
        parts.append(f"{record['seconds']:.1f} s")
    parts.append(f"naclip {env.get('naclip_version')}, torch {env.get('torch')}, open_clip {env.get('open_clip')}, "
                 f"Python {env.get('python')}")
    return "; ".join(parts)


def _run_section(record: dict[str, Any], results: Path) -> list[str]:
    rel = record["folder"].relative_to(results).as_posix()
    lines = [f"### `{record['study']}/{record['run']}`: {record['status']}", ""]
    if record.get("random_weights"):
        lines += [f"> **{RANDOM_BANNER}**", ""]
    if record.get("note"):
        lines += [f"> {record['note']}", ""]
    if "parameters" in record:
        lines += [f"- configuration: {_config(record['parameters'])}", f"- provenance: {_provenance(record)}"]
    if record.get("notebook") and (record["folder"] / record["notebook"]).is_file():
        lines.append(f"- executed notebook: [{record['notebook']}]({rel}/{record['notebook']})")
    if record["status"] == "failed":
        lines += ["- error:", "", "```", record.get("error", "").strip()[-1500:], "```"]
    manifest = read_manifest(record["folder"])
    for table in manifest["tables"]:
        caption = f": {table['caption']}" if table.get("caption") else ""
        lines.append(f"- table [{table['file']}]({rel}/{table['file']}) ({table['rows']} rows){caption}")
    lines.append("")
    for fig in manifest["figures"]:
        caption = fig.get("caption") or fig["name"]
        lines += [
            f"**{fig['name']}**: {caption} ([PNG]({rel}/{fig['png']}), [SVG]({rel}/{fig['svg']}))",
            "",
            f"![{caption}]({rel}/{fig['png']})",
            "",
        ]
    return lines


def write_index(results: Path, banner: str | None = None) -> Path:
    """Rebuild ``index.md`` under `results` (and the combined multi-run tables); its path."""
    records = _records(results)
    lines = ["# NACLIP workbook results", ""]
    if banner:
        lines += [f"> **{banner}**", ""]
    if any(r.get("random_weights") for r in records):
        lines += [f"> **{RANDOM_BANNER}** (runs marked below)", ""]
    lines += [
        "Regenerate with `naclip workbook run` (see `naclip workbook run --help`); "
        f"index written {datetime.now(timezone.utc).isoformat(timespec='seconds')}.",
        "",
        "| study | run | status | weights | seconds |",
        "|---|---|---|---|---|",
    ]
    for r in records:
        has_model = "pretrained" in r.get("parameters", {})
        weights = "RANDOM" if r.get("random_weights") else "pretrained" if has_model else ""
        seconds = f"{r['seconds']:.1f}" if "seconds" in r else ""
        link = f"[{r['run']}](#{_anchor(r)})"
        lines.append(f"| {r.get('title', r['study'])} | {link} | {r['status']} | {weights} | {seconds} |")
    lines.append("")
    studies: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        studies.setdefault(r["study"], []).append(r)
    for study, group in studies.items():
        lines += [f"## {group[0].get('title', study)} (`{study}`)", ""]
        for path in combine_runs(results / study, group):
            lines += [f"- all runs together: [{path.name}]({study}/{path.name})", ""]
        for record in group:
            lines += _run_section(record, results)
    path = results / INDEX
    atomic_write(path, "\n".join(lines).encode())
    return path


def _anchor(record: dict[str, Any]) -> str:
    text = f"{record['study']}/{record['run']}: {record['status']}".lower()
    return "".join(c for c in text if c.isalnum() or c in " -_").replace(" ", "-")
