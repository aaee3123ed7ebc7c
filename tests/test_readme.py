"""The README's code for extending the library runs as written."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

from naclip.attention import ATTENTIONS
from naclip.heads import HEADS
from naclip.methods import METHODS, unregister_method

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("## Add a method", "## Add an attention variant")


def section_blocks(text: str, heading: str) -> list[str]:
    """The ```python blocks of the README section under `heading`, in order."""
    body = text.split(heading, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, flags=re.DOTALL)


def test_the_extension_examples_run_as_written(monkeypatch, capsys):
    text = (ROOT / "README.md").read_text()
    blocks = [block for heading in SECTIONS for block in section_blocks(text, heading)]
    assert len(blocks) >= 5
    before = (set(METHODS), set(HEADS), set(ATTENTIONS))
    monkeypatch.chdir(ROOT)  # the examples name the embedded sample by its path in the repository
    namespace: dict = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # random weights, said loudly
            for block in blocks:
                exec(compile(block, "README.md", "exec"), namespace)
        printed = capsys.readouterr().out.splitlines()
        assert printed == ["kkclip (513, 513)", "mineclip (513, 513)", "dinoclip (513, 513)"]
        assert {"kkclip", "mineclip", "dinoclip"} <= set(METHODS) and "kq" in ATTENTIONS
        assert METHODS["mineclip"].settings(mine_layer=1).to_dict()["mine_layer"] == 1
        with pytest.raises(ValueError, match="'mine_layer' is a parameter of method mineclip, not of 'naclip'"):
            METHODS["naclip"].settings(mine_layer=1)
    finally:
        for name in set(METHODS) - before[0]:
            unregister_method(name)
        for name in set(HEADS) - before[1]:
            HEADS.unregister(name)
        for name in set(ATTENTIONS) - before[2]:
            ATTENTIONS.unregister(name)
