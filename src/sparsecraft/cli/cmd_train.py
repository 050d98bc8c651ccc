"""Train a model sparse from a recipe (job ``train``): progress bar, evaluation every epoch,
checkpoints, ``--resume`` from the run folder's last checkpoint, report with loss/accuracy
and sparsity plots and the final per-layer table.

    sparsecraft train recipe.yaml --out runs/rigl90
    sparsecraft train recipe.yaml --out runs/rigl90 --resume
"""

from __future__ import annotations

import argparse

from sparsecraft.cli.common import print_json

NAME = "train"
HELP = "train sparse from a recipe (job: train), with checkpoints and --resume"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe file or built-in name (its job must be 'train')")
    p.add_argument("--out", default=None, help="run folder (default: output.dir or runs/train-<timestamp>)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    from sparsecraft.errors import RecipeError, SparsecraftError
    from sparsecraft.jobs.recipe import read_recipe_text, run_recipe

    doc = read_recipe_text(args.recipe)
    if doc.get("job", "train") != "train":
        raise RecipeError(f"sparsecraft train runs 'job: train' recipes; this one is {doc.get('job')!r} (use run)")
    doc["job"] = "train"
    if args.resume:
        output = doc.get("output")
        if not (args.out or (isinstance(output, dict) and output.get("dir"))):
            raise SparsecraftError("--resume needs the run folder: pass --out DIR (or set output.dir in the recipe)")
        doc["resume"] = True
    run_dir, result = run_recipe(doc, args.out)
    if args.json:
        print_json({"run_dir": str(run_dir), **{k: v for k, v in result.items() if k != "table_markdown"}})
        return 0
    f = result["final"]
    if f is None:  # stopped early on purpose (stop_after): nothing final to print yet
        print(f"stopped after epoch {result.get('stopped_after_epoch')}; continue with --resume --out {run_dir}")
        return 0
    print(result.get("table_markdown", ""))
    print(f"\n{result['method']} at sparsity {f['sparsity']:.4f}: test accuracy {100 * f['test_accuracy']:.2f}%, "
          f"test loss {f['test_loss']:.4f}, {f['nonzero_params']}/{f['params']} non-zero parameters")  # fmt: skip
    print(f"run folder: {run_dir}  (report.json, curves.png, sparsity.png, layers.md, checkpoint/)")
    return 0
