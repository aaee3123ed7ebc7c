"""The resumable, distributed evaluation runner behind `naclip eval`."""

from naclip.evaluation.runner import evaluate, make_variants

__all__ = ["evaluate", "make_variants"]
