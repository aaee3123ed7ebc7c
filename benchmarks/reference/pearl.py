"""PEARL (github:PGSmall/PEARL): `PEARL` from `pearl_ovss.py` with its configs, TLP on (`run.sh`) and off."""

from __future__ import annotations

from pathlib import Path

import torch

from benchmarks.reference.common import Authors, Checkout, construct, framework_stubs, read_config

CHECKOUT = "pearl"  # the command-line flag naming the checkout
METHODS = ("pearl", "pearl-notlp")
# Whole image with the background threshold (VOC21), windows with it (Context60), windows without (Context59),
# 560 px with alpha_kk 0.3 and TLP grid 224 (Cityscapes), alpha_kk 0.3 at 336 (ADE20K).
BENCHMARKS = {
    "pearl": ("voc21", "context60", "context59", "cityscapes", "ade20k"),
    "pearl-notlp": ("voc21", "context59", "cityscapes"),
}
FAST_BENCHMARKS = {"pearl": ("voc21", "context59", "cityscapes"), "pearl-notlp": ("voc21", "cityscapes")}


def load(root: Path) -> Checkout:
    """The checkout with its own `clip`, `pearl` and `prompts` packages."""
    return Checkout(root, "pearl_ovss.py", ("clip", "pearl", "prompts"), framework_stubs())


def segmentor(
    checkout: Checkout, method: str, benchmark: str, checkpoint: Path, queries: torch.Tensor | None
) -> Authors:
    """Their config for `benchmark` with `use_prop` 'on' (`run.sh --prop on`) for pearl, 'off' for pearl-notlp,
    the weights at `checkpoint`, on the CPU.

    `clip.load(path, device=cpu)` gives a float32 model (`clip/clip.py:131-134`), and everything after runs in
    float32. Their TLP binds the text matrix at construction (`pearl_ovss.py:67-69`); where the query
    embeddings are replaced by ours it is bound again to them. Nothing is patched.
    """
    kwargs, short_side = read_config(checkout.root, benchmark)
    kwargs.update(
        clip_path=str(checkpoint),
        device=torch.device("cpu"),
        use_prop="off" if method == "pearl-notlp" else "on",
    )
    authors = construct(checkout, "PEARL", kwargs, short_side, queries)
    if authors.model.prop is not None:
        with checkout.active():
            authors.model.prop.bind_text(authors.model.query_features)
    return authors


if __name__ == "__main__":
    from benchmarks.reference import cost

    cost.main(("naclip-nopamr", "pearl-notlp", "pearl"))
