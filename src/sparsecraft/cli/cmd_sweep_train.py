"""Train a recipe over a grid of sparsities x seeds, resumably, and write the runs table.

Example::

    sparsecraft sweep-train my-recipe.yaml --sparsity 0.5,0.75,0.9,0.95 --seeds 3 --jobs 2
    sparsecraft fit runs/sweep/runs.csv --law power --x final.density --y final.test_loss
    sparsecraft sweep-train my-recipe.yaml --sparsity 0.5,0.9 --seeds 2 --engine ray --cpus-per-trial 1 --asha

Each run goes to ``OUT/s<sparsity>-seed<seed>/``; runs with a ``report.json`` are skipped.
"""

from __future__ import annotations

import argparse

from sparsecraft.cli.common import float_list, print_json

NAME = "sweep-train"
HELP = "run a training recipe over sparsities x seeds (resumable) and write runs.csv"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "recipe", help="recipe file or built-in recipe name (its job must accept top-level 'sparsity' and 'seed')"
    )
    p.add_argument("--sparsity", required=True, help="comma-separated target sparsities")
    p.add_argument("--seeds", default="1", help="number of seeds (3 -> 0,1,2) or a comma list of seeds (e.g. 0,5,7)")
    p.add_argument("--jobs", type=int, default=1, help="parallel worker processes (engine ray: concurrent trials)")
    p.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="local processes, or one Ray Tune trial per grid point (extra sparsecraft[ray])")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="engine ray: CPUs each trial reserves")
    p.add_argument("--gpus-per-trial", type=float, default=0.0, help="engine ray: GPUs each trial reserves")
    p.add_argument("--asha", action="store_true", help="engine ray: ASHA early stopping on the per-epoch metric")
    p.add_argument("--asha-metric", default="test_loss", help="metric ASHA compares (default test_loss)")
    p.add_argument("--asha-mode", default="min", choices=["min", "max"])
    p.add_argument("--asha-grace", type=int, default=1, help="epochs every trial runs before it can be stopped")
    p.add_argument("--max-t", type=int, default=None, help="epochs of a full run (default: the recipe's epochs)")
    p.add_argument("--out", default="runs/sweep", help="output folder")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")


def parse_seeds(text: str) -> int | list[int]:
    from sparsecraft.errors import SparsecraftError

    try:
        if "," in text:
            return [int(s) for s in text.split(",") if s.strip()]
        n = int(text)
    except ValueError:
        raise SparsecraftError(f"bad --seeds {text!r}: give a count or a comma list") from None
    if n < 1:
        raise SparsecraftError(f"--seeds must be >= 1, got {n}")
    return n


def run(args: argparse.Namespace) -> int:
    from sparsecraft.errors import SparsecraftError
    from sparsecraft.jobs.train_sweep import train_sweep

    if args.jobs < 1:
        raise SparsecraftError(f"--jobs must be >= 1, got {args.jobs}")
    asha = None
    if args.asha:
        max_t = args.max_t
        if max_t is None:
            from sparsecraft.jobs.recipe import read_recipe_text

            max_t = read_recipe_text(args.recipe).get("epochs")
        if not isinstance(max_t, int):
            raise SparsecraftError("--asha needs the number of epochs of a full run: give --max-t N")
        asha = {"metric": args.asha_metric, "mode": args.asha_mode, "grace_period": args.asha_grace, "max_t": max_t}
    ray_opts = {}
    if args.engine == "ray":
        ray_opts = {"resources": {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial}, "asha": asha}
    elif asha is not None:
        raise SparsecraftError("--asha needs --engine ray")
    rows = train_sweep(args.recipe, float_list(args.sparsity, "sparsity"), parse_seeds(args.seeds), args.out,
                       jobs=args.jobs, engine=args.engine, **ray_opts)
    failed = [r for r in rows if r["status"] == "failed"]
    if args.json:
        print_json(rows)
    else:
        done = sum(r["status"] == "done" for r in rows)
        skipped = sum(r["status"] == "skipped" for r in rows)
        stopped = sum(r["status"] == "stopped" for r in rows)
        print(f"{len(rows)} runs: {done} trained, {skipped} already done, {len(failed)} failed"
              + (f", {stopped} stopped early (ASHA)" if stopped else ""))
        for r in failed:
            print(f"  failed {r['run_dir']}: {r.get('error', '')}")
        print(f"wrote {args.out}/runs.csv")
    return 1 if failed else 0
