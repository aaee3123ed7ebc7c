"""The text classifier: prompt embeddings on their own length."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from naclip.text import encode_queries
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
