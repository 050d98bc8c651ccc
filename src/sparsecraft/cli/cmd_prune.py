"""One-shot prune a language model with calibration data (criterion magnitude or Wanda, method
SparseGPT; N:M; OWL budgets; or remove structures: SliceGPT, channels, heads, depth), report
perplexity before/after, and save the pruned model.

Example::

    sparsecraft prune --model smollm2-135m --method sparsegpt --pattern 2:4 --calib shakespeare --out runs/x
    sparsecraft prune --criterion wanda --sparsity 0.7 --distribution owl --n-calib 32 --seq-len 512
    sparsecraft prune --method slicegpt --sparsity 0.25                  # a smaller dense model
    sparsecraft prune --method depth --sparsity 0 --option blocks=4 --recover-steps 50 --recover-loss lm
    sparsecraft prune --model models/llama --criterion wanda --offload disk --out runs/big   # larger than RAM
    torchrun --nproc-per-node 2 -m sparsecraft prune --distributed --method sparsegpt ...      # data parallel

Without ``--method`` or ``--criterion`` it runs SparseGPT. The flags are the ones every command uses
(``--sparsity --pattern --distribution --targets --ignore --calib --n-calib --n-eval --seq-len
--batch-size --threads --out --json``), with the words of ``sparsecraft.prune``.

The run folder gets ``model/`` (loadable with ``from_pretrained``), ``sparse.safetensors``
(masks as bits), ``sparsity.md`` (per-layer true sparsity), ``results.json``, ``table.md`` and
``report.json``. This command runs the ``prune-llm`` recipe job with the options given.
"""

from __future__ import annotations

import argparse

from sparsecraft.cli.common import add_data_arguments, add_prune_arguments, add_run_arguments, one_float, print_json
from sparsecraft.errors import SparsecraftError

NAME = "prune"
HELP = ("one-shot prune a language model (criterion magnitude / wanda, method sparsegpt; N:M, OWL; or remove "
        "structures: slicegpt, channels, heads, depth) and evaluate it")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m", help="HF directory or built-in name (smollm2-135m)")
    add_prune_arguments(p)
    add_data_arguments(p)
    p.add_argument("--option", action="append", default=None, metavar="KEY=VALUE",
                   help="a method option, repeatable (slicegpt: embeddings=slice, round_to=8; depth: blocks=4; "
                        "heads: head_mode=kv)")
    p.add_argument("--recover-steps", type=int, default=0, help="SquareHead recovery fine-tune steps (0 = none)")
    p.add_argument("--recover-loss", default="squarehead", choices=["squarehead", "lm", "lm+squarehead"],
                   help="SquareHead features, next-token loss, or both (the paper's task + lambda x SquareHead)")
    p.add_argument("--recover-lr", type=float, default=1e-5)
    p.add_argument("--recover-feature-weight", type=float, default=1.0, help="lambda of the SquareHead term")
    p.add_argument("--recover-kd-weight", type=float, default=0.0, help="> 0 adds logit distillation")
    p.add_argument("--recover-kd-temperature", type=float, default=1.0, help="logit distillation temperature")
    p.add_argument("--no-save", action="store_true", help="do not write the pruned model")
    p.add_argument("--no-dense", action="store_true", help="skip the dense perplexity")
    p.add_argument("--offload", default="auto", choices=["auto", "disk", "none"],
                   help="disk: read the model one block at a time from its safetensors (larger than RAM); "
                        "auto (default): disk when the model would not fit in memory; none: load it whole")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel calibration under torchrun (each rank a shard of the windows; rank 0 writes)")
    add_run_arguments(p, "run folder (default runs/prune-llm-<time>)")


def parse_options(items: list[str]) -> dict:
    """``["blocks=4", "embeddings=slice"]`` -> ``{"blocks": 4, "embeddings": "slice"}`` (numbers parsed)."""
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SparsecraftError(f"--option {item!r}: give KEY=VALUE, e.g. --option blocks=4")
        for cast in (int, float):
            try:
                out[key.strip()] = cast(value)
                break
            except ValueError:
                continue
        else:
            out[key.strip()] = value
    return out


def recipe_from_args(args: argparse.Namespace) -> dict:
    if args.method is None and args.criterion is None:
        args.method = "sparsegpt"
    return {
        "job": "prune-llm",
        "model": args.model,
        "data": {"calib": args.calib, "eval": args.eval, "n_calib": args.n_calib, "n_eval": args.n_eval,
                 "seq_len": args.seq_len, "seed": args.seed},
        "runs": [{"method": args.method, "criterion": args.criterion, "sparsity": one_float(args.sparsity),
                  "pattern": args.pattern, "distribution": args.distribution,
                  **({"options": parse_options(args.option)} if args.option else {})}],
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
        "offload": args.offload,
        "distributed": args.distributed,
    }


def run(args: argparse.Namespace) -> int:
    from sparsecraft.distributed import group
    from sparsecraft.jobs.recipe import run_recipe

    if args.distributed:
        group.init_from_env()
    run_dir, result = run_recipe(recipe_from_args(args), args.out)
    if not group.is_writer():
        return 0
    if args.json:
        print_json({"run_dir": str(run_dir), **result})
        return 0
    rows = result["rows"]
    dense = next((r for r in rows if r["method"] == "dense"), None)
    pruned = rows[-1]
    print(f"model           {result['model']}")
    what = pruned["method"] or pruned["criterion"]
    print(f"pruned with     {what} ({pruned['pattern']}, {pruned['distribution']}, target {pruned['sparsity']})")
    if "structure" in pruned:
        st = pruned["structure"]
        print(f"parameters      {st['params_before']:,} -> {st['params_after']:,} ({st['param_reduction']:.1%} fewer)")
    else:
        print(f"true sparsity   {pruned['true_sparsity']:.4f} over the pruned Linear layers")
    print(f"offload         {pruned.get('offload', 'none')}")
    if "data_parallel" in pruned:
        dp = pruned["data_parallel"]
        print(f"data parallel   {dp['world_size']} ranks, {dp['batches']} calibration batches")
    if pruned["perplexity"] is None:
        print("perplexity      not measured (the model was pruned block by block; evaluate the saved folder)")
    elif dense:
        print(f"perplexity      {dense['perplexity']:.3f} dense -> {pruned['perplexity']:.3f} pruned")
    else:
        print(f"perplexity      {pruned['perplexity']:.3f} pruned")
    print(f"prune wall time {pruned['wall_time_s']:.1f} s (peak RSS {pruned['peak_rss_mb']:.0f} MB)")
    if "saved_hf" in pruned:
        print(f"saved           {pruned['saved_hf']}" + (f" and {pruned['saved_sparse']}" if "saved_sparse" in pruned
                                                          else " (masks as bits in its masks/ folder)"))
    print(f"report          {run_dir / 'report.json'}")
    return 0
