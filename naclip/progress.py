"""Progress bars that are saved as they ended.

In a notebook tqdm draws a widget whose text fallback (what a saved notebook shows where the widget's state
is not stored) is its first frame, ``0%| 0/1``: a finished run looks hung. `tqdm` makes tqdm's bar
(console or widget, as `tqdm.auto` chooses) and, in a notebook, rewrites that fallback with the final frame
when the bar closes. Use ``from naclip.progress import tqdm`` wherever a bar may run in a notebook.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm as auto_tqdm
from tqdm.notebook import tqdm_notebook


class _NotebookBar(tqdm_notebook):
    """tqdm's widget bar, displayed under a display id and displayed again (the final frame) when it closes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from IPython.display import display

        super().__init__(*args, display=False, **kwargs)
        self._handle = None
        if not self.disable:
            self._handle = display(self.container, display_id=True)
            self.displayed = True

    def close(self) -> None:
        if self.disable or self._handle is None:
            return super().close()
        super().close()
        self._handle.update(self.container)
        self._handle = None


def tqdm(iterable: Iterable | None = None, **kwargs: Any) -> auto_tqdm:
    """A tqdm bar (the arguments of `tqdm.tqdm`); in a notebook one saved with its final text."""
    bar = _NotebookBar if issubclass(auto_tqdm, tqdm_notebook) else auto_tqdm
    return bar(iterable, **kwargs)
