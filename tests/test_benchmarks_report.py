"""The benchmark report: rows collected from a script's output and written between the README's markers."""

from __future__ import annotations

import subprocess

import pandas as pd
import pytest

from benchmarks import report
from benchmarks.reference_check import print_speed


def test_rows_are_collected_and_the_table_replaces_only_its_section(tmp_path, monkeypatch, capsys):
    printed = "PAMR, 60 classes\n  target: met\nREADME row: PAMR | gather: 100 ms | kernels: 2 ms | 50.0x\n"
    monkeypatch.setattr(
        subprocess, "run", lambda command, **kw: subprocess.CompletedProcess(command, 0, stdout=printed)
    )
    rows = report.run("pamr_speed", ("--classes", "60"))
    assert rows == ["| PAMR | `pamr_speed --classes 60` | gather: 100 ms | kernels: 2 ms | 50.0x |"]
    echoed = capsys.readouterr().out
    assert "target: met" in echoed and "README row" not in echoed
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\n{report.START}\nold table\n{report.END}\n\n## Licence\nMIT\n")
    report.write_readme(readme, report.table(rows))
    text = readme.read_text()
    assert "old table" not in text and rows[0] in text
    assert text.startswith("# Title\n\n") and text.endswith(f"{report.END}\n\n## Licence\nMIT\n")
    assert text.count(report.START) == 1 and "Measured on: " in text


def test_a_benchmark_without_rows_or_a_readme_without_markers_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(subprocess, "run", lambda command, **kw: subprocess.CompletedProcess(command, 0, stdout="x\n"))
    with pytest.raises(SystemExit, match="printed no 'README row: ' line"):
        report.run("text_encoding", ())
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    with pytest.raises(SystemExit, match="no performance table markers"):
        report.write_readme(readme, "table")
    assert readme.read_text() == "# no markers\n"


def test_every_benchmark_of_the_report_exists():
    for module, _ in report.RUNS:
        assert (report.Path(report.__file__).parent / f"{module}.py").exists()


def test_speed_verdict_is_on_the_worst_image(capsys):
    frame = pd.DataFrame(
        {
            "method": ["naclip"] * 3,
            "benchmark": ["voc21", "voc21", "coco_object"],
            "their_s": [10.0, 40.0, 30.0],
            "our_s": [1.0, 1.0, 1.0],
            "speedup": [10.0, 40.0, 30.0],
        }
    )
    print_speed(frame)
    out = capsys.readouterr().out
    assert "naclip/voc21: authors 50.00 s, naclip 2.00 s in all, 25.0 x; worst image 10.0 x" in out
    assert "(target >= 15 x: NOT met)" in out and "worst image 30.0 x (target >= 15 x: met)" in out
