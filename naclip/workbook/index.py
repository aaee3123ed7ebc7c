"""The results index: ``results/index.md`` (links) and ``results/index.html`` (self-contained: every table
rendered, every figure embedded, random-weight runs marked, the provenance of each run).

Both are rebuilt from what the run folders hold (``run.json``, ``failed.json``, ``outputs.json``), so they
describe the results on disk whichever invocation made them. Studies with several complete runs also get one
table per table name with every run's rows (``<study>/<table>.all-runs.csv``).
"""

from __future__ import annotations

import base64
import html
import re
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from naclip.io import atomic_write, write_csv
from naclip.workbook.layout import Study, Workbook, discover
from naclip.workbook.outputs import MANIFEST, RANDOM_BANNER, read_manifest
from naclip.workbook.params import changed as changed_parameters
from naclip.workbook.runner import COMPLETE, PARAMETERS, recorded_state

INDEX_MD, INDEX_HTML = "index.md", "index.html"
MAX_ROWS = 200  # rows of a table shown in index.html; the CSV has them all


@dataclass
class Entry:
    """One run folder as the index shows it."""

    study: Study
    folder: Path
    record: dict[str, Any]
    state: str
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def anchor(self) -> str:
        return "".join(c if c.isalnum() or c in "-_" else "-" for c in f"{self.study.name}-{self.name}".lower())

    @property
    def random_weights(self) -> bool:
        return bool(self.manifest.get("random_weights"))


def _entries(workbook: Workbook) -> list[Entry]:
    """Every run folder under the results, in study order, with its state against today's notebook and code."""
    entries = []
    for study in discover(workbook.notebooks):
        for folder in sorted(p for p in (workbook.results / study.name).glob("*") if p.is_dir()):
            record, state = recorded_state(folder, study)
            if record or (folder / MANIFEST).is_file():
                entries.append(Entry(study, folder, record, str(state), read_manifest(folder)))
    return entries


def combine_runs(study_dir: Path, entries: list[Entry]) -> list[Path]:
    """Concatenate each table over a study's complete runs (a ``run`` column added); the files written."""
    complete = [e for e in entries if e.state == COMPLETE]
    if len(complete) < 2:
        return []
    frames: dict[str, list[pd.DataFrame]] = {}
    for entry in complete:
        for table in entry.manifest["tables"]:
            frame = pd.read_csv(entry.folder / table["file"])
            frames.setdefault(table["name"], []).append(frame.assign(run=entry.name))
    written = []
    for name, parts in frames.items():
        path = study_dir / f"{name}.all-runs.csv"
        write_csv(pd.concat(parts, ignore_index=True), path)
        written.append(path)
    return written


def _provenance(entry: Entry) -> str:
    record = entry.record
    if not record:
        return "no run record: made outside `naclip workbook run`, or interrupted"
    env = record.get("provenance", {})
    commit = (env.get("git_commit") or "unknown")[:12] + (" (uncommitted changes)" if env.get("git_dirty") else "")
    parts = [f"profile {record.get('profile')}", f"started {record.get('started')}"]
    if "seconds" in record:
        parts.append(f"{record['seconds']:.1f} s")
    parts += [
        f"commit {commit}",
        f"naclip {env.get('naclip_version')}",
        f"torch {env.get('torch')}",
        f"open_clip {env.get('open_clip')}",
        f"Python {env.get('python')}",
        f"host {env.get('host')}",
    ]
    return "; ".join(parts)


def _weights(entry: Entry) -> str:
    labels = entry.manifest.get("weights") or []
    if not labels:
        return "no model" if entry.manifest.get("tables") or entry.manifest.get("figures") else ""
    return ", ".join(labels)  # random weights are named so in each label


def _relative(entry: Entry, results: Path, name: str) -> str:
    return (entry.folder / name).relative_to(results).as_posix()


# -- Markdown --------------------------------------------------------------------------------------------

_MD_PUNCTUATION = "\\`*_[]|~"  # backslash-escaped: no code, emphasis, link, image or table cell made of a value


def _md(text: Any) -> str:
    """`text` as literal Markdown on one line: punctuation backslash-escaped, HTML escaped as in index.html."""
    line = " ".join(str(text).splitlines())
    return html.escape("".join(f"\\{c}" if c in _MD_PUNCTUATION else c for c in line))


def _url(path: str) -> str:
    """A relative link target, percent-encoded (a name with spaces, brackets or quotes stays one link)."""
    return urllib.parse.quote(path)


def _fence(text: str) -> str:
    """A code fence longer than any run of backticks in `text`, so that `text` cannot close it."""
    longest = max((len(run) for run in re.findall("`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _markdown_run(entry: Entry, results: Path) -> list[str]:
    lines = [f"### {_md(entry.study.name)}/{_md(entry.name)}: {_md(entry.state)}", ""]
    if entry.random_weights:
        lines += [f"> **{_md(RANDOM_BANNER)}**", ""]
    if entry.record.get("note"):
        lines += [f"> {_md(entry.record['note'])}", ""]
    changed = changed_parameters(entry.record.get("parameters") or {}, entry.study)
    lines.append(f"- weights: {_md(_weights(entry) or 'not recorded')}")
    if changed:
        lines.append(
            "- parameters (other than the notebook's defaults): "
            + ", ".join(f"<code>{_md(k)}={_md(repr(v))}</code>" for k, v in changed.items())
        )
    lines.append(f"- provenance: {_md(_provenance(entry))}")
    notebook = entry.record.get("notebook")
    if notebook and (entry.folder / notebook).is_file():
        lines.append(
            f"- executed notebook: [{_md(notebook)}]({_url(_relative(entry, results, notebook))}), "
            f"parameters: [{PARAMETERS}]({_url(_relative(entry, results, PARAMETERS))})"
        )
    if "error" in entry.record:
        error = entry.record["error"].strip()[-1500:]
        lines += ["- error:", "", _fence(error), error, _fence(error)]
    for table in entry.manifest["tables"]:
        caption = f": {_md(table['caption'])}" if table.get("caption") else ""
        link = _url(_relative(entry, results, table["file"]))
        lines.append(f"- table [{_md(table['file'])}]({link}) ({table['rows']} rows){caption}")
    lines.append("")
    for fig in entry.manifest["figures"]:
        caption = _md(fig.get("caption") or fig["name"])
        png, svg = _url(_relative(entry, results, fig["png"])), _url(_relative(entry, results, fig["svg"]))
        lines += [f"**{_md(fig['name'])}**: {caption} ([PNG]({png}), [SVG]({svg}))", "", f"![{caption}]({png})", ""]
    return lines


def _markdown(
    entries: list[Entry], results: Path, combined: dict[str, list[Path]], banner: str | None, written: str
) -> str:
    lines = ["# NACLIP workbook results", ""]
    if banner:
        lines += [f"> **{_md(banner)}**", ""]
    if any(e.random_weights for e in entries):
        lines += [f"> **{_md(RANDOM_BANNER)}** (runs marked below)", ""]
    lines += [
        f"The same with every table and figure on one page: [{INDEX_HTML}]({INDEX_HTML}). Regenerate with "
        f"`naclip workbook run`; `naclip workbook list` shows each run's state. Written {written}.",
        "",
        "| study | run | state | weights | seconds |",
        "|---|---|---|---|---|",
    ]
    for e in entries:
        seconds = f"{e.record['seconds']:.1f}" if "seconds" in e.record else ""
        lines.append(
            f"| {_md(e.study.name)} | [{_md(e.name)}](#{e.anchor}) | {_md(e.state)} | {_md(_weights(e))} | {seconds} |"
        )
    lines.append("")
    for study, group in _by_study(entries):
        lines += [f"## {_md(study.name)}: {_md(study.title)}", ""]
        for path in combined.get(study.name, []):
            lines += [f"- all runs together: [{_md(path.name)}]({_url(f'{study.name}/{path.name}')})", ""]
        for entry in group:
            lines += [f'<a id="{entry.anchor}"></a>', "", *_markdown_run(entry, results)]
    return "\n".join(lines)


def _by_study(entries: list[Entry]) -> list[tuple[Study, list[Entry]]]:
    groups: dict[str, tuple[Study, list[Entry]]] = {}
    for entry in entries:
        groups.setdefault(entry.study.name, (entry.study, []))[1].append(entry)
    return list(groups.values())


# -- HTML ------------------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1300px; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #ccc; margin-top: 2em; }
.run { border: 1px solid #ddd; border-radius: 6px; padding: 0.5em 1em 1em; margin: 1em 0; }
.run.random { border: 3px solid #c00; }
.banner { background: #fde8e8; color: #a00; border: 2px solid #c00; padding: 0.6em; font-weight: bold; }
.note { background: #fff6d6; padding: 0.4em 0.6em; }
.state { font-size: 0.8em; padding: 0.1em 0.5em; border-radius: 4px; background: #eee; }
.state.complete { background: #dff5df; } .state.failed { background: #fdd; } .state.stale { background: #fff0c2; }
table.data, table.summary { border-collapse: collapse; font-size: 0.85em; margin: 0.4em 0; }
table.data td, table.data th, table.summary td, table.summary th { border: 1px solid #ccc; padding: 2px 6px; }
table.data th, table.summary th { background: #f3f3f3; position: sticky; top: 0; }
.scroll { max-height: 32em; overflow: auto; display: inline-block; max-width: 100%; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #444; } pre { background: #f6f6f6; padding: 0.5em; overflow: auto; }
dl { font-size: 0.9em; } dt { font-weight: bold; float: left; clear: left; width: 8em; } dd { margin-left: 9em; }
"""


def _table_html(path: Path) -> str:
    frame = pd.read_csv(path)
    shown = frame.head(MAX_ROWS)
    body = shown.to_html(index=False, na_rep="", border=0, classes="data", float_format=lambda v: f"{v:.4g}")
    more = f"<p>{len(frame) - MAX_ROWS} more rows in the CSV.</p>" if len(frame) > MAX_ROWS else ""
    return f'<div class="scroll">{body}</div>{more}'


def _html_run(entry: Entry, results: Path) -> str:
    esc = html.escape
    state = entry.state.split(" ")[0]
    parts = [
        f'<div class="run{" random" if entry.random_weights else ""}" id="{entry.anchor}">',
        f'<h3>{esc(entry.study.name)}/{esc(entry.name)} <span class="state {state}">{esc(entry.state)}</span></h3>',
    ]
    if entry.random_weights:
        parts.append(f'<p class="banner">{esc(RANDOM_BANNER)}</p>')
    if entry.record.get("note"):
        parts.append(f'<p class="note">{esc(entry.record["note"])}</p>')
    changed = changed_parameters(entry.record.get("parameters") or {}, entry.study)
    items = [("weights", esc(_weights(entry) or "not recorded"))]
    if changed:
        items.append(
            (
                "parameters",
                ", ".join(f"<code>{esc(k)}={esc(repr(v))}</code>" for k, v in changed.items())
                + " (others: the notebook's defaults)",
            )
        )
    items.append(("provenance", esc(_provenance(entry))))
    links = [(n, n) for n in (entry.record.get("notebook"), PARAMETERS) if n and (entry.folder / n).is_file()]
    links += [(t["file"], t["file"]) for t in entry.manifest["tables"]]
    links += [(f["svg"], f["svg"]) for f in entry.manifest["figures"]]
    if links:
        items.append(
            (
                "files",
                " · ".join(f'<a href="{esc(_relative(entry, results, f))}">{esc(label)}</a>' for label, f in links),
            )
        )
    parts.append("<dl>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items) + "</dl>")
    if "error" in entry.record:
        parts.append(f"<pre>{esc(entry.record['error'].strip()[-3000:])}</pre>")
    for fig in entry.manifest["figures"]:
        data = base64.b64encode((entry.folder / fig["png"]).read_bytes()).decode()
        caption = esc(fig.get("caption") or fig["name"])
        parts.append(
            f'<figure><img alt="{caption}" src="data:image/png;base64,{data}">'
            f"<figcaption><b>{esc(fig['name'])}</b>: {caption}</figcaption></figure>"
        )
    for table in entry.manifest["tables"]:
        opened = " open" if table["rows"] <= 60 else ""
        caption = esc(table.get("caption") or "")
        parts.append(
            f"<details{opened}><summary><b>{esc(table['name'])}</b> ({table['rows']} rows): {caption}"
            f"</summary>{_table_html(entry.folder / table['file'])}</details>"
        )
    parts.append("</div>")
    return "\n".join(parts)


def _html(
    entries: list[Entry], results: Path, combined: dict[str, list[Path]], banner: str | None, written: str
) -> str:
    esc = html.escape
    body = [
        "<h1>NACLIP workbook results</h1>",
        f"<p>Regenerate with <code>naclip workbook run</code>; <code>naclip workbook list</code> shows each "
        f"run's state. Written {esc(written)}. Every figure and table of every run is on this page; the files "
        "are in the folders beside it.</p>",
    ]
    if banner:
        body.append(f'<p class="banner">{esc(banner)}</p>')
    if any(e.random_weights for e in entries):
        body.append(f'<p class="banner">{esc(RANDOM_BANNER)} (the runs framed in red)</p>')
    rows = "".join(
        f'<tr><td>{esc(e.study.name)}</td><td><a href="#{e.anchor}">{esc(e.name)}</a></td><td>{esc(e.state)}</td>'
        f"<td>{esc(_weights(e))}</td><td>{e.record.get('seconds', '')}</td></tr>"
        for e in entries
    )
    body.append(
        '<table class="summary"><tr><th>study</th><th>run</th><th>state</th><th>weights</th>'
        f"<th>seconds</th></tr>{rows}</table>"
    )
    for study, group in _by_study(entries):
        body.append(f'<h2 id="{esc(study.name)}">{esc(study.name)}: {esc(study.title)}</h2>')
        for path in combined.get(study.name, []):
            body.append(f'<p>All runs together: <a href="{esc(study.name)}/{esc(path.name)}">{esc(path.name)}</a></p>')
        body += [_html_run(entry, results) for entry in group]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>NACLIP workbook results</title>'
        f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_index(workbook: Workbook, banner: str | None = None) -> list[Path]:
    """Rebuild ``index.md`` and ``index.html`` under the results (and the combined multi-run tables); their paths."""
    results = workbook.results
    entries = _entries(workbook)
    combined = {study.name: combine_runs(results / study.name, group) for study, group in _by_study(entries)}
    written = datetime.now(timezone.utc).isoformat(timespec="seconds")
    paths = [results / INDEX_MD, results / INDEX_HTML]
    atomic_write(paths[0], _markdown(entries, results, combined, banner, written).encode())
    atomic_write(paths[1], _html(entries, results, combined, banner, written).encode())
    return paths
