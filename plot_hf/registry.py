"""One registry helper for every named choice in plot-hf (losses, solvers, baselines, data sources, samplers).

A :class:`Registry` is a read-only mapping from names to entries (classes, functions or specs), filled with
:meth:`Registry.register` (a decorator) or :meth:`Registry.add`. Looking up an unknown name raises
``ValueError`` naming the kind, the bad value and every valid name (never a bare ``KeyError``); registering a
name that is already taken raises ``ValueError``. Config validation reads :meth:`Registry.names`, so an entry
added by a user becomes a valid config value without editing the config.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")
E = TypeVar("E")


class Registry(Mapping[str, T], Generic[T]):
    """A read-only ``name -> entry`` mapping; ``kind`` names what it holds in error messages ("loss")."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` under ``name``; returns ``entry``."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"A {self.kind} name must be a non-empty string, got {name!r}.")
        if name in self._entries:
            taken = getattr(self._entries[name], "__qualname__", repr(self._entries[name]))
            raise ValueError(f"{self.kind} `{name}` is already registered (to {taken}); pick another name.")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[E], E]:
        """Decorator form of :meth:`add`: ``@LOSSES.register("ldam")``."""

        def decorator(entry: E) -> E:
            self.add(name, entry)  # type: ignore[arg-type]
            return entry

        return decorator

    def names(self) -> tuple[str, ...]:
        """The registered names, sorted."""
        return tuple(sorted(self._entries))

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ValueError(f"Unknown {self.kind} {name!r}; valid names are: {', '.join(self.names())}.") from None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={list(self.names())})"
