"""Training-free segmentation methods as presets (one file each) and their registry."""

from naclip.methods import baselines, clearclip, naclip, resclip, scclip, sclip  # noqa: F401  (registers the methods)
from naclip.methods.registry import (
    BENCHMARK_KEYS,
    METHODS,
    Method,
    Protocol,
    get_method,
    register_method,
)

__all__ = ["BENCHMARK_KEYS", "METHODS", "Method", "Protocol", "get_method", "register_method"]
