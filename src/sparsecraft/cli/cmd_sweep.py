"""Essential-sparsity sweep: one-shot prune a model at a list of sparsities, evaluate each,
plot the curve (PNG), and report the dense-tolerance point and the knee.

Examples::

    sparsecraft sweep --model all-minilm-l6-v2 --sparsities 0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9
    sparsecraft sweep --model smollm2-135m --method wanda --distribution uniform --text shakespeare

Metric: perplexity for a causal LM; for an encoder the mean cosine similarity of mean-pooled
sentence embeddings to the dense model's. The dense-tolerance point is the largest sparsity
whose metric (and that of every smaller one) stays within --tolerance of dense; the knee is the
Kneedle point of the degradation curve (see ``sparsecraft.analysis.knee``). Runs the
``sparsity-sweep`` recipe job.
"""

from __future__ import annotations

import argparse

from sparsecraft.cli.common import float_list, print_json

NAME = "sweep"
HELP = "essential-sparsity sweep: metric vs. sparsity, dense-tolerance point and knee"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="all-minilm-l6-v2", help="HF directory or built-in name")
    p.add_argument("--sparsities", default="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9")
    p.add_argument("--method", default="magnitude", choices=["magnitude", "wanda", "sparsegpt"])
    p.add_argument("--distribution", default="global", choices=["global", "uniform"],
                   help="global |w| ranking across layers (magnitude) or the same sparsity per layer")
    p.add_argument("--pattern", default="unstructured")
    p.add_argument("--metric", default="auto", choices=["auto", "perplexity", "embedding"])
    p.add_argument("--text", "--eval", dest="text", default="shakespeare", help="text file or built-in name")
    p.add_argument("--n-calib", type=int, default=32)
    p.add_argument("--n-eval", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--n-sentences", type=int, default=256, help="sentences for the embedding metric")
    p.add_argument("--tolerance", type=float, default=0.01, help="dense-tolerance (fraction, default 0.01)")
    p.add_argument("--targets", action="append", default=None)
    p.add_argument("--ignore", action="append", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="run folder (default runs/sparsity-sweep-<time>)")
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    from sparsecraft.jobs.recipe import run_recipe

    recipe = {
        "job": "sparsity-sweep", "model": args.model, "method": args.method,
        "distribution": args.distribution, "pattern": args.pattern,
        "sparsities": float_list(args.sparsities, "sparsity"), "metric": args.metric, "text": args.text,
        "n_calib": args.n_calib, "n_eval": args.n_eval, "seqlen": args.seqlen,
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
