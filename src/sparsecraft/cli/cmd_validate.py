"""Check a recipe without running it: unknown keys, wrong types and unknown registry names
are reported with the key path and the allowed values."""

from __future__ import annotations

import argparse

from sparsecraft.cli.common import print_json

NAME = "validate"
HELP = "check a recipe file (or built-in name) without running it"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe file or built-in name")
    p.add_argument("--json", action="store_true", help="print the validated recipe as JSON")


def run(args: argparse.Namespace) -> int:
    from sparsecraft.jobs.recipe import load_recipe

    job, config = load_recipe(args.recipe)
    name = job.registry_name  # type: ignore[attr-defined]
    if args.json:
        print_json({"valid": True, "job": name, "config": config.model_dump()})
    else:
        print(f"ok: {args.recipe} is a valid '{name}' recipe")
    return 0
