"""A tiny name -> class registry used by every plug-in axis and subsystem.

Adding a pattern, criterion, distribution, schedule, method, one-shot method, format, kernel
backend, scaling law, job or CLI command is one new module with one ``@REGISTRY.register("name")``
class; the CLI, the recipes and ``sparsecraft list`` only look names up here.

There is one discovery mechanism: a registry built with ``package="sparsecraft.x"`` imports every
module of that package (:meth:`Registry.discover`) the first time a name is looked up, so a new
module is found with no edit anywhere else. Modules whose name starts with ``_`` are skipped; a
module that needs an optional extra which is not installed is skipped too (the lookup error then
lists what is available).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from collections.abc import Callable, Iterator
from types import ModuleType
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


_ALL: list[Registry] = []


def all_registries() -> list[Registry]:
    """Every registry of the library, in creation order (for ``sparsecraft list``): imports each
    top-level module and sub-package of ``sparsecraft`` first, skipping missing extras."""
    import sparsecraft

    for info in pkgutil.iter_modules(sparsecraft.__path__):
        if not info.name.startswith("_"):
            try:
                importlib.import_module(f"sparsecraft.{info.name}")
            except ImportError as e:
                if not _is_missing_extra(e):
                    raise
    return list(_ALL)


def _is_missing_extra(e: ImportError) -> bool:
    """True when ``e`` is a third-party module that is not installed (not a bug in sparsecraft)."""
    name = getattr(e, "name", None) or ""
    return isinstance(e, ModuleNotFoundError) and bool(name) and not name.startswith("sparsecraft")


class Registry(Generic[T]):
    """Maps names to classes (or factories) of one kind, e.g. all patterns.

    Args:
        kind: what an entry is, for messages ("pattern", "method", ...).
        package: dotted package whose modules register entries; imported on first lookup.
        module_attr: register *modules* that define this attribute under its value (the CLI's
            ``cmd_*.py`` modules register themselves by their ``NAME``).
    """

    def __init__(self, kind: str, package: str | None = None, module_attr: str | None = None,
                 title: str | None = None) -> None:
        self.kind = kind
        self.title = title or f"{kind}s"
        self.package = package
        self.module_attr = module_attr
        self._entries: dict[str, T] = {}
        self._discovered = package is None
        self.skipped: dict[str, str] = {}  #: module -> why it was not imported (missing extra)
        _ALL.append(self)

    def discover(self) -> list[ModuleType]:
        """Import every module of :attr:`package` (once) so that their registrations run."""
        if self._discovered:
            return []
        self._discovered = True  # set first: modules may look names up while they import
        pkg = importlib.import_module(self.package)  # type: ignore[arg-type]
        mods = []
        for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
            if info.name.startswith("_"):
                continue
            full = f"{self.package}.{info.name}"
            try:
                mod = importlib.import_module(full)
            except ImportError as e:
                if not _is_missing_extra(e):
                    raise
                self.skipped[full] = f"needs {e.name!r}"
                continue
            mods.append(mod)
            if self.module_attr and hasattr(mod, self.module_attr):
                self.register(str(getattr(mod, self.module_attr)))(mod)  # type: ignore[arg-type]
        return mods

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
        self.discover()
        key = str(name).lower()
        if key not in self._entries:
            raise SparsecraftError(f"unknown {self.kind} {name!r}; allowed: {', '.join(self.names())}")
        return self._entries[key]

    def __contains__(self, name: object) -> bool:
        self.discover()
        return isinstance(name, str) and name.lower() in self._entries

    def names(self) -> list[str]:
        self.discover()
        return sorted(self._entries)

    def __iter__(self) -> Iterator[tuple[str, T]]:
        self.discover()
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
