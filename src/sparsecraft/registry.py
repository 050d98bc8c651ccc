"""A tiny name -> class registry used by every plug-in axis.

Adding a pattern, criterion, distribution, schedule, method or job is one new class with a
``@REGISTRY.register("name")`` decorator; the CLI, the recipes and ``sparsecraft list`` only
look names up here.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from sparsecraft.errors import SparsecraftError

T = TypeVar("T")


def first_sentence(text: str) -> str:
    """The text up to and including its first '. ' (or all of it)."""
    for m in re.finditer(r"\. (?=[A-Z(])", text):
        before = text[: m.start()].rsplit(" ", 1)[-1]
        if before not in ("al", "e.g", "i.e", "cf", "vs", "Eq", "eq"):
            return text[: m.start() + 1]
    return text


class Registry(Generic[T]):
    """Maps names to classes (or factories) of one kind, e.g. all patterns."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            key = name.lower()
            if key in self._entries and self._entries[key] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[key] = obj
            obj.registry_name = key  # type: ignore[attr-defined]
            return obj

        return decorator

    def get(self, name: str) -> T:
        key = str(name).lower()
        if key not in self._entries:
            raise SparsecraftError(f"unknown {self.kind} {name!r}; allowed: {', '.join(self.names())}")
        return self._entries[key]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._entries

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __iter__(self) -> Iterator[tuple[str, T]]:
        return iter(sorted(self._entries.items()))

    def build(self, spec: Any) -> Any:
        """An instance from a name (no arguments) or a dict ``{"type": name, **kwargs}``, with a
        clear error for a missing type, an unknown name or bad arguments."""
        if isinstance(spec, dict):
            kwargs = dict(spec)
            kind = kwargs.pop("type", None)
            if kind is None:
                raise SparsecraftError(f"a {self.kind} dict needs a 'type' key; allowed: {', '.join(self.names())}")
        else:
            kind, kwargs = str(spec), {}
        cls = self.get(kind)
        try:
            return cls(**kwargs)  # type: ignore[operator]
        except TypeError as e:
            raise SparsecraftError(f"bad arguments for {self.kind} {kind!r}: {e}") from None

    def summary(self) -> list[tuple[str, str]]:
        """(name, first line of the docstring) for every entry, for ``sparsecraft list``."""
        rows = []
        for name, obj in self:
            doc = (inspect.getdoc(obj) or "").strip().split("\n\n")[0]
            rows.append((name, first_sentence(" ".join(doc.split()))))
        return rows
