"""Training-free segmentation methods as presets (one file each) and their registry.

A method outside this package registers itself when its module is imported, or, once installed,
through an entry point of the group ``naclip.methods`` naming that module
(``[project.entry-points."naclip.methods"] mine = "mypackage.mymethod"``), loaded here.
"""

import importlib.metadata
import warnings

from naclip.methods import (  # noqa: F401  (registers the methods)
    baselines,
    cass,
    clearclip,
    dihclip,
    naclip,
    pearl,
    proxyclip,
    resclip,
    scclip,
    sclip,
    sfp,
    trident,
)
from naclip.methods.registry import METHODS, Method, Protocol, get_method, register_method, unregister_method

ENTRY_POINTS = "naclip.methods"


def load_entry_points() -> list[str]:
    """Import every installed module of the `naclip.methods` entry point group; the names of those that loaded.

    A module that fails to import is reported as a warning naming it, and the rest still load.
    """
    loaded = []
    for entry in importlib.metadata.entry_points(group=ENTRY_POINTS):
        try:
            entry.load()
        except Exception as error:  # a broken external method must not break the library
            warnings.warn(f"external method {entry.name!r} ({entry.value}) failed to load: {error}", stacklevel=2)
        else:
            loaded.append(entry.name)
    return loaded


load_entry_points()

__all__ = ["METHODS", "Method", "Protocol", "get_method", "load_entry_points", "register_method", "unregister_method"]
