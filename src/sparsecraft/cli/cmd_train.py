"""Train from a recipe: job ``train`` (a model sparse: progress bar, evaluation every epoch,
checkpoints, ``--resume`` from the run folder's last checkpoint, report with loss/accuracy
and sparsity plots and the final per-layer table) or job ``lm-train`` (a small dense / MoE /
Engram / STEM language model, :mod:`sparsecraft.jobs.lm_train`).

    sparsecraft train recipe.yaml --out runs/rigl90
    sparsecraft train recipe.yaml --out runs/rigl90 --resume
    sparsecraft train lm-moe --out runs/moe
"""

from __future__ import annotations

import argparse

from sparsecraft.cli.common import print_json

NAME = "train"
HELP = "train from a recipe (job: train or lm-train), with checkpoints and --resume"
TRAIN_JOBS = ("train", "lm-train")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe file or built-in name (its job must be 'train' or 'lm-train')")
    p.add_argument("--out", default=None, help="run folder (default: output.dir or runs/train-<timestamp>)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    from sparsecraft.errors import RecipeError, SparsecraftError
    from sparsecraft.jobs.recipe import read_recipe_text, run_recipe

    doc = read_recipe_text(args.recipe)
    job = doc.get("job", "train")
    if job not in TRAIN_JOBS:
        raise RecipeError(f"sparsecraft train runs 'job: train' and 'job: lm-train' recipes; this one is "
                          f"{job!r} (use run)")
    doc["job"] = job
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
        where = (f"step {result['stopped_after_step']}" if "stopped_after_step" in result
                 else f"epoch {result.get('stopped_after_epoch')}")
        print(f"stopped after {where}; continue with --resume --out {run_dir}")
        return 0
    if job == "lm-train":
        print(f"validation loss {f['val_loss']:.4f} (perplexity {f['val_ppl']:.2f}), train loss {f['train_loss']:.4f}, "
              f"{f['tokens_per_s']:.0f} tokens/s, {f['active_params']}/{f['params']} active/total parameters")
        for ld in f["expert_load"]:
            print(f"  {ld['layer']}: load CV {ld['cv']:.3f}, max/mean {ld['max_load']:.2f}, dead experts {ld['dead']}")
        print(f"run folder: {run_dir}  (report.json, curves.png, model.safetensors, checkpoint/)")
        return 0
    print(result.get("table_markdown", ""))
    print(f"\n{result['method']} at sparsity {f['sparsity']:.4f}: test accuracy {100 * f['test_accuracy']:.2f}%, "
          f"test loss {f['test_loss']:.4f}, {f['nonzero_params']}/{f['params']} non-zero parameters")  # fmt: skip
    print(f"run folder: {run_dir}  (report.json, curves.png, sparsity.png, layers.md, checkpoint/)")
    return 0
