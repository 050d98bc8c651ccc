"""List what is registered on every axis (patterns, criteria, distributions, schedules,
methods, jobs, ...) with one-line docs."""

from __future__ import annotations

import argparse

from sparsecraft.cli.common import print_json

NAME = "list"
HELP = "list registered patterns, criteria, distributions, schedules, methods and jobs"

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("axis", nargs="?", default=None, help="only this axis (e.g. patterns)")
    p.add_argument("--json", action="store_true", help="print as JSON")


def collect() -> dict[str, list[tuple[str, str]]]:
    """``{title: [(name, one-line doc)]}`` for every registry of the library."""
    from sparsecraft.registry import all_registries

    return {reg.title: reg.summary() for reg in all_registries()}


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
