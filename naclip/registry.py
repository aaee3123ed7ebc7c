"""One registry type for every named family of the library (attention variants, last-block
architectures, heads, methods, benchmarks): registration by name, lookup with a did-you-mean."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


def unknown(kind: str, name: str, known: list[str]) -> ValueError:
    """The error for a name that is not among `known`: the closest one, or the whole list."""
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; expected one of {', '.join(known)}"
    return ValueError(f"unknown {kind} {name!r}{hint}")


class Registry(Generic[T]):
    """Items by name, in registration order. Registering a name again replaces its item.

    `fallback(name)`, when set, may register a missing name on first lookup (a method combination
    such as ``sclip+resclip`` is built when asked for); it raises ValueError for a name it cannot make.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        self.fallback: Callable[[str], object] | None = None

    def register(self, name: str, item: T) -> T:
        self._items[name] = item
        return item

    def unregister(self, name: str) -> T:
        """Remove `name` (an external method unloaded, a test's own item); its item."""
        return self._items.pop(name)

    def decorator(self, name: str) -> Callable[[T], T]:
        """`@registry.decorator(name)` registers the decorated object under `name`."""
        return lambda item: self.register(name, item)

    def get(self, name: str) -> T:
        """The item `name`; ValueError naming the closest registered name otherwise."""
        if name not in self._items and self.fallback is not None:
            self.fallback(name)
        if name not in self._items:
            raise unknown(self.kind, name, list(self._items))
        return self._items[name]

    __getitem__ = get

    def __delitem__(self, name: str) -> None:
        self.unregister(name)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def names(self) -> list[str]:
        return list(self._items)

    def values(self) -> list[T]:
        return list(self._items.values())

    def items(self) -> list[tuple[str, T]]:
        return list(self._items.items())
