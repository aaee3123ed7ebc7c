"""The text classifier: prompt embeddings on their own length, class lists and class files."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from naclip.text import encode_queries, parse_classes, read_class_file
from tests.conftest import make_segmenter


def _full_context(clip, tokenizer, queries, templates):
    """The classifier computed on the whole 77-token context, as CLIP does it."""
    with torch.no_grad():
        rows = []
        for query in queries:
            each = F.normalize(clip.encode_text(tokenizer([t(query) for t in templates])), dim=-1)
            rows.append(F.normalize(each.mean(0), dim=-1))
    return torch.stack(rows)


@pytest.mark.parametrize("query", ["price!$", "stop!%", "r&d!&"])
def test_prompts_ending_in_token_zero_keep_their_end_token(query):
    """Token id 0 is "!": a prompt's length comes from its end-of-text token, not its non-zero ids."""
    seg = make_segmenter()
    templates = [lambda c: c, lambda c: f"a photo of {c}"]
    tokens = seg.tokenizer([query])
    assert (tokens[0, : tokens.argmax()] == 0).any()  # a "!" inside the prompt
    ours = encode_queries(seg.clip, seg.tokenizer, [query], templates)
    torch.testing.assert_close(ours, _full_context(seg.clip, seg.tokenizer, [query], templates))
    assert seg.clip.positional_embedding.shape[0] == tokens.shape[1]  # the tower is restored


def test_duplicate_class_names_are_refused_with_their_lines(tmp_path):
    with pytest.raises(ValueError, match=r"duplicate class names: 'cat' on lines 1, 3; expected each class once"):
        parse_classes(["cat", "dog", "cat"])
    path = tmp_path / "classes.txt"
    path.write_text("sky\ncat\ndog\ncat\ndog\n")
    with pytest.raises(
        ValueError, match=r"classes\.txt: duplicate class names: 'cat' on lines 2, 4; 'dog' on lines 3, 5"
    ):
        read_class_file(path)
    # a synonym may name another class (the published COCO-Object file has "bed" in the background line)
    assert parse_classes(["wall, bed", "bed"]).names == ["wall", "bed"]
    # a first name shared with a class of that one name gives way to the next synonym (ADE20K-847's "bag" lines)
    assert parse_classes(["cat", "dog", "cat, kitten"]).names == ["cat", "dog", "kitten"]


def test_class_file_encodings(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9\nsky\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt' is not UTF-8 text.*expected a UTF-8 file"):
        read_class_file(path)
    path.write_bytes("\ufeffcafé\r\nsky\r\n".encode())  # a byte-order mark and Windows line ends
    assert read_class_file(path).names == ["café", "sky"]


def test_class_spans_group_each_class_synonyms():
    from naclip.text import ClassSet

    classes = parse_classes(["sky, cloud", "cat", "dog, puppy, hound"])
    assert classes.spans == ((0, 2), (2, 3), (3, 6))
    assert [classes.queries[a:b] for a, b in classes.spans][2] == ("dog", "puppy", "hound")
    with pytest.raises(ValueError, match="grouped by class"):
        ClassSet(("a", "b"), ("a", "b", "a2"), (0, 1, 0))


def test_class_lines_cut_by_the_context_length_are_named(tmp_path):
    import warnings

    from naclip.text import TEMPLATES, warn_cut_prompts

    seg = make_segmenter()
    context = seg.tokenizer.context_length
    outcomes = set()
    for words in range(55, 75):
        name = " ".join(["cat"] * words)
        longest = max(int(seg.tokenizer([t(name)], context_length=200).argmax()) + 1 for t in TEMPLATES)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warn_cut_prompts(parse_classes(["dog", f"bird, {name}"]), seg.tokenizer)
        assert len(caught) == (longest > context), words
        if caught:
            assert str(caught[0].message).startswith("class list: class line 2 ('bird, cat cat ")
            assert f"prompts of up to {longest} tokens; the text encoder reads {context}" in str(caught[0].message)
        outcomes.add(longest > context)
    assert outcomes == {True, False}
    path = tmp_path / "classes.txt"
    path.write_text("dog\ncat\n" + "very " * 80 + "long\n")
    expected = rf"^{re.escape(str(path))}: class line 3 \('very very .*\.\.\.'\) makes prompts of up to"
    with pytest.warns(UserWarning, match=expected):
        seg.set_classes(path)
