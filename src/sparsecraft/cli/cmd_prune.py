"""One-shot prune a language model with calibration data (magnitude, Wanda, SparseGPT; N:M;
OWL budgets), report perplexity before/after, and save the pruned model.

Example::

    sparsecraft prune --model smollm2-135m --method sparsegpt --sparsity 0.5 --pattern 2:4 \\
        --calib shakespeare --eval shakespeare --out runs/x

The run folder gets ``model/`` (loadable with ``from_pretrained``), ``sparse.safetensors``
(masks as bits), ``sparsity.md`` (per-layer true sparsity), ``results.json``, ``table.md`` and
``report.json``. This command runs the ``prune-llm`` recipe job with the options given.
"""

from __future__ import annotations

import argparse

from sparsecraft.cli.common import print_json

NAME = "prune"
HELP = "one-shot prune a language model (magnitude / wanda / sparsegpt, N:M, OWL) and evaluate it"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m", help="HF directory or built-in name (smollm2-135m)")
    p.add_argument("--method", default="sparsegpt", choices=["magnitude", "wanda", "sparsegpt"])
    p.add_argument("--sparsity", type=float, default=0.5, help="fraction of zeros per layer (ignored by N:M)")
    p.add_argument("--pattern", default="unstructured", help="unstructured, 2:4, 4:8, any N:M")
    p.add_argument("--owl", action="store_true", help="OWL non-uniform block sparsities (unstructured)")
    p.add_argument("--owl-m", type=float, default=5.0, help="OWL outlier threshold M (score > M * mean)")
    p.add_argument("--owl-lambda", type=float, default=0.08, help="OWL sparsity spread lambda")
    p.add_argument("--calib", default="shakespeare", help="calibration text file or built-in name")
    p.add_argument("--eval", default=None, help="evaluation text file or built-in name (default: --calib)")
    p.add_argument("--n-calib", type=int, default=32, help="calibration windows (default 32)")
    p.add_argument("--n-eval", type=int, default=16, help="evaluation windows (default 16)")
    p.add_argument("--seqlen", type=int, default=512, help="tokens per window (default 512)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--targets", action="append", default=None, help="regex of layers to prune (repeatable)")
    p.add_argument("--ignore", action="append", default=None, help="regex of layers to keep dense (repeatable)")
    p.add_argument("--recover-steps", type=int, default=0, help="SquareHead recovery fine-tune steps (0 = none)")
    p.add_argument("--recover-loss", default="squarehead", choices=["squarehead", "lm", "lm+squarehead"],
                   help="SquareHead features, next-token loss, or both (the paper's task + lambda x SquareHead)")
    p.add_argument("--recover-lr", type=float, default=1e-5)
    p.add_argument("--recover-feature-weight", type=float, default=1.0, help="lambda of the SquareHead term")
    p.add_argument("--recover-kd-weight", type=float, default=0.0, help="> 0 adds logit distillation")
    p.add_argument("--recover-kd-temperature", type=float, default=1.0, help="logit distillation temperature")
    p.add_argument("--batch-size", type=int, default=8, help="calibration windows per forward")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--no-save", action="store_true", help="do not write the pruned model")
    p.add_argument("--no-dense", action="store_true", help="skip the dense perplexity")
    p.add_argument("--out", default=None, help="run folder (default runs/prune-llm-<time>)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def recipe_from_args(args: argparse.Namespace) -> dict:
    return {
        "job": "prune-llm",
        "model": args.model,
        "data": {"calib": args.calib, "eval": args.eval, "n_calib": args.n_calib, "n_eval": args.n_eval,
                 "seqlen": args.seqlen, "seed": args.seed},
        "runs": [{"method": args.method, "sparsity": args.sparsity, "pattern": args.pattern, "owl": args.owl,
                  "owl_m": args.owl_m, "owl_lambda": args.owl_lambda}],
        "dense": not args.no_dense,
        "targets": args.targets,
        "ignore": args.ignore,
        "batch_size": args.batch_size,
        "recovery": {"steps": args.recover_steps, "loss": args.recover_loss, "lr": args.recover_lr,
                     "feature_weight": args.recover_feature_weight, "kd_weight": args.recover_kd_weight,
                     "kd_temperature": args.recover_kd_temperature},
        "save": not args.no_save,
        "plot": False,
        "threads": args.threads,
        "progress": not args.json,
    }


def run(args: argparse.Namespace) -> int:
    from sparsecraft.jobs.recipe import run_recipe

    run_dir, result = run_recipe(recipe_from_args(args), args.out)
    if args.json:
        print_json({"run_dir": str(run_dir), **result})
        return 0
    rows = result["rows"]
    dense = next((r for r in rows if r["method"] == "dense"), None)
    pruned = rows[-1]
    print(f"model           {result['model']}")
    print(f"method          {pruned['method']} ({pruned['pattern']}, target {pruned['sparsity']})")
    print(f"true sparsity   {pruned['true_sparsity']:.4f} over the pruned Linear layers")
    if dense:
        print(f"perplexity      {dense['perplexity']:.3f} dense -> {pruned['perplexity']:.3f} pruned")
    else:
        print(f"perplexity      {pruned['perplexity']:.3f} pruned")
    print(f"prune wall time {pruned['wall_time_s']:.1f} s (peak RSS {pruned['peak_rss_mb']:.0f} MB)")
    if "saved_hf" in pruned:
        print(f"saved           {pruned['saved_hf']} and {pruned['saved_sparse']}")
    print(f"report          {run_dir / 'report.json'}")
    return 0
