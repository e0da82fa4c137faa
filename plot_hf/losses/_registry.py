"""Name -> loss-class registry: a failed lookup lists the valid names; registering a name twice is an error."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

T = TypeVar("T")


class Registry(Mapping[str, type]):
    """A read-only mapping from names to classes, filled with the :meth:`register` decorator.

    Looking up an unknown name raises ``ValueError`` naming the bad value and every valid name (never a
    bare ``KeyError``); registering a name that is already taken raises ``ValueError``.
    """

    def __init__(self, kind: str) -> None:
        self._kind = kind
        self._entries: dict[str, type] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator: ``@LOSSES.register("ldam")``."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"A {self._kind} name must be a non-empty string, got {name!r}.")

        def decorator(cls: type[T]) -> type[T]:
            if name in self._entries:
                raise ValueError(
                    f"{self._kind} `{name}` is already registered (to {self._entries[name].__qualname__}); "
                    "pick another name."
                )
            self._entries[name] = cls
            return cls

        return decorator

    def __getitem__(self, name: str) -> type:
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(
                f"Unknown {self._kind} {name!r}; valid names are: {', '.join(sorted(self._entries))}."
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self._kind!r}, names={sorted(self._entries)})"
