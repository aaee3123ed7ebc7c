"""Run the speed benchmarks one after another and (with --readme) rewrite the README's performance table.

Each script prints its own figures and targets, then one `README row:` line per row of the table
(`benchmarks.timing.readme_row`); this collects them in order, under a line naming the machine.
Run: python -m benchmarks.report [--readme README.md]      (`make bench` runs it on the README)
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from benchmarks.timing import ROW_PREFIX
from naclip.io import atomic_write

# (module, arguments) in order: pamr_speed first, while no other benchmark has grown memory.
RUNS = (
    ("pamr_speed", ()),
    ("prediction_speed", ()),
    ("sliding_window", ()),
    ("sliding_window", ("--classes", "171")),
    ("naclip_overhead", ()),
    ("sigma_sweep", ()),
    ("text_encoding", ()),
)
START = "<!-- performance table: written by `python -m benchmarks.report --readme README.md` -->"
END = "<!-- end of performance table -->"


def machine() -> str:
    """The CPU's name, its cores, torch's version and today's date."""
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        name = models[0] if models else name
    return (
        f"{name}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, PyTorch {torch.__version__}, "
        f"{datetime.date.today().isoformat()}"
    )


def run(module: str, arguments: tuple[str, ...]) -> list[str]:
    """Run one benchmark, echo its output, return its table rows with the command in the second column."""
    command = [sys.executable, "-m", f"benchmarks.{module}", *arguments]
    print(f"$ python -m benchmarks.{module} {' '.join(arguments)}".rstrip(), flush=True)
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    rows = []
    for line in output.splitlines():
        if line.startswith(ROW_PREFIX):
            what, rest = line.removeprefix(ROW_PREFIX).split(" | ", 1)
            rows.append(f"| {what} | `{' '.join((module, *arguments))}` | {rest} |")
        else:
            print(line, flush=True)
    if not rows:
        raise SystemExit(f"benchmarks.{module} printed no '{ROW_PREFIX}' line")
    return rows


def table(rows: list[str]) -> str:
    header = ["| what | script | baseline | naclip | ratio |", "|---|---|---|---|---|"]
    return "\n".join([f"Measured on: {machine()}.", "", *header, *rows])


def write_readme(path: Path, text: str) -> None:
    """Replace what lies between the START and END markers of `path` with `text`."""
    readme = path.read_text()
    if START not in readme or END not in readme:
        raise SystemExit(f"{path}: no performance table markers; expected the lines {START!r} and {END!r}")
    before, rest = readme.split(START, 1)
    after = rest.split(END, 1)[1]
    atomic_write(path, f"{before}{START}\n{text}\n{END}{after}".encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", type=Path, help="rewrite this README's performance table")
    args = parser.parse_args()
    rows = [row for module, arguments in RUNS for row in run(module, arguments)]
    text = table(rows)
    print(f"\n{text}")
    if args.readme:
        write_readme(args.readme, text)
        print(f"\nwrote the table into {args.readme}")


if __name__ == "__main__":
    main()
