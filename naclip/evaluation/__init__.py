"""The resumable, distributed evaluation runner behind `naclip eval`."""

from naclip.evaluation.runner import Interrupted, NothingScored, evaluate, make_variants

__all__ = ["Interrupted", "NothingScored", "evaluate", "make_variants"]
