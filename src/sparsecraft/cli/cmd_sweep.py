"""Essential-sparsity sweep: one-shot prune a model at a list of sparsities, evaluate each,
plot the curve (PNG), and report the dense-tolerance point and the knee.

Examples::

    sparsecraft sweep --model all-minilm-l6-v2 --sparsity 0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9
    sparsecraft sweep --model smollm2-135m --criterion wanda --distribution uniform --calib shakespeare

Metric: perplexity for a causal LM; for an encoder the mean cosine similarity of mean-pooled
sentence embeddings to the dense model's. The dense-tolerance point is the largest sparsity
whose metric (and that of every smaller one) stays within --tolerance of dense; the knee is the
Kneedle point of the degradation curve (see ``sparsecraft.analysis.knee``). Runs the
``sparsity-sweep`` recipe job.
"""

from __future__ import annotations

import argparse

from sparsecraft.cli.common import add_data_arguments, add_prune_arguments, add_run_arguments, float_list, print_json

NAME = "sweep"
HELP = "essential-sparsity sweep: metric vs. sparsity, dense-tolerance point and knee"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="all-minilm-l6-v2", help="HF directory or built-in name")
    add_prune_arguments(p, "comma-separated sparsities of the curve")
    p.set_defaults(sparsity="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9", distribution="global")
    add_data_arguments(p)
    p.add_argument("--metric", default="auto", choices=["auto", "perplexity", "embedding"])
    p.add_argument("--n-sentences", type=int, default=256, help="sentences for the embedding metric")
    p.add_argument("--tolerance", type=float, default=0.01, help="dense-tolerance (fraction, default 0.01)")
    add_run_arguments(p, "run folder (default runs/sparsity-sweep-<time>)")


def run(args: argparse.Namespace) -> int:
    from sparsecraft.jobs.recipe import run_recipe

    recipe = {
        "job": "sparsity-sweep", "model": args.model, "method": args.method, "criterion": args.criterion,
        "distribution": args.distribution, "pattern": args.pattern,
        "sparsities": float_list(args.sparsity, "sparsity"), "metric": args.metric,
        "text": args.eval or args.calib, "n_calib": args.n_calib, "n_eval": args.n_eval, "seq_len": args.seq_len,
        "n_sentences": args.n_sentences, "tolerance": args.tolerance, "targets": args.targets,
        "ignore": args.ignore, "threads": args.threads, "progress": not args.json,
    }
    run_dir, result = run_recipe(recipe, args.out)
    if args.json:
        print_json({"run_dir": str(run_dir), **result})
        return 0
    print((run_dir / "sweep.md").read_text().rstrip())
    print(f"plot: {result['plot']}")
    print(f"report: {run_dir / 'report.json'}")
    return 0
