"""List what is registered on every axis (patterns, criteria, distributions, schedules,
methods, jobs, ...) with one-line docs."""

from __future__ import annotations

import argparse
import importlib
import pkgutil

from sparsecraft.cli.common import print_json

NAME = "list"
HELP = "list registered patterns, criteria, distributions, schedules, methods and jobs"

#: (title, module, attribute); modules that are absent in this install are skipped.
REGISTRIES = [
    ("patterns", "sparsecraft.patterns", "PATTERNS"),
    ("criteria", "sparsecraft.criteria", "CRITERIA"),
    ("distributions", "sparsecraft.distributions", "DISTRIBUTIONS"),
    ("schedules", "sparsecraft.schedules", "SCHEDULES"),
    ("methods", "sparsecraft.methods", "METHODS"),
    ("one-shot methods", "sparsecraft.oneshot", "ONESHOT"),
    ("formats", "sparsecraft.formats", "FORMATS"),
    ("kernel backends", "sparsecraft.kernels", "BACKENDS"),
    ("scaling laws", "sparsecraft.scaling", "LAWS"),
    ("jobs", "sparsecraft.recipe", "JOBS"),
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("axis", nargs="?", default=None, help="only this axis (e.g. patterns)")
    p.add_argument("--json", action="store_true", help="print as JSON")


def _import_submodules(mod) -> None:  # noqa: ANN001
    """Registration happens at import: import a package's modules so every entry is listed."""
    for info in pkgutil.iter_modules(getattr(mod, "__path__", [])):
        if not info.name.startswith("_"):
            try:
                importlib.import_module(f"{mod.__name__}.{info.name}")
            except ImportError:  # optional extras (e.g. transformers) that are not installed
                continue


def collect() -> dict[str, list[tuple[str, str]]]:
    from sparsecraft.recipe import discover_jobs

    discover_jobs()
    out = {}
    for title, modname, attr in REGISTRIES:
        try:
            mod = importlib.import_module(modname)
        except ImportError:
            continue
        _import_submodules(mod)
        reg = getattr(mod, attr, None)
        if reg is not None:
            out[title] = reg.summary()
    return out


def run(args: argparse.Namespace) -> int:
    from sparsecraft.errors import SparsecraftError

    data = collect()
    if args.axis:
        if args.axis not in data:
            raise SparsecraftError(f"unknown axis {args.axis!r}; allowed: {', '.join(data)}")
        data = {args.axis: data[args.axis]}
    if args.json:
        print_json({k: [{"name": n, "doc": d} for n, d in v] for k, v in data.items()})
        return 0
    for title, rows in data.items():
        print(f"{title}:")
        width = max((len(n) for n, _ in rows), default=0)
        for name, doc in rows:
            print(f"  {name.ljust(width)}  {doc}")
        print()
    return 0
