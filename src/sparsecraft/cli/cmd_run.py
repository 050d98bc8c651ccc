"""Run a recipe (a YAML file or a built-in recipe name) and print its table.

With no argument, runs the built-in default recipe. Outputs (report.json, the markdown
table, checkpoints, plots) go to the run folder printed at the end (``--out`` to choose it).
"""

from __future__ import annotations

import argparse

from sparsecraft.cli.common import print_json

NAME = "run"
HELP = "run a recipe (default: the built-in default recipe) and print its results"

#: The built-in recipe ``sparsecraft run`` uses when given no argument.
DEFAULT_RECIPE = "smollm2-quick"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", nargs="?", default=None, help=f"recipe file or built-in name (default: {DEFAULT_RECIPE})")
    p.add_argument("--out", default=None, help="run folder (default: runs/<job>-<timestamp>)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    from sparsecraft.jobs.recipe import run_recipe

    recipe = args.recipe or DEFAULT_RECIPE
    run_dir, result = run_recipe(recipe, args.out)
    if args.json:
        print_json({"run_dir": str(run_dir), **result})
        return 0
    table = result.get("table_markdown")
    if table:
        print(table)
    files = ", ".join(sorted(p.name for p in run_dir.iterdir() if not p.name.startswith(".")))
    print(f"\nrun folder: {run_dir}  ({files})")
    return 0
