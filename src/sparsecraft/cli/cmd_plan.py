"""Recommend sparsity, model size and tokens for a compute budget from a fitted sparse law.

Example::

    sparsecraft fit runs.csv --law sparse --x sparsity,params,tokens --y loss --out fit-sparse
    sparsecraft plan --fit fit-sparse/fit.json --budget-flops 1e18 --params-max 1e8

Training FLOPs are 6 * N_eff * D; ``--compute`` says which parameters are paid for (see
``sparsecraft.scaling.planner``). The best sparse option is compared with the best dense one.
"""

from __future__ import annotations

import argparse

from sparsecraft.cli.common import float_list, print_json

NAME = "plan"
HELP = "recommend sparsity, model size and tokens for a FLOP budget from a fitted law"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fit", required=True, help="fit.json written by 'sparsecraft fit' (a fitted law)")
    p.add_argument("--budget-flops", type=float, required=True, help="training FLOP budget")
    p.add_argument("--params-max", type=float, default=None, help="cap on non-zero (inference) params")
    p.add_argument("--sparsity", default=None, help="comma-separated sparsities to consider")
    p.add_argument(
        "--compute",
        default="gradual",
        choices=["gradual", "sparse", "dense"],
        help="which parameters training FLOPs are paid on (default: gradual)",
    )
    p.add_argument("--json", action="store_true", help="print the plan as JSON")


def run(args: argparse.Namespace) -> int:
    from sparsecraft.scaling.planner import plan
    from sparsecraft.scaling.result import load_fit

    res = load_fit(args.fit)
    sp = float_list(args.sparsity, "sparsity") if args.sparsity else None
    pl = plan(res, args.budget_flops, args.params_max, sp, args.compute)
    if args.json:
        print_json(pl.to_dict())
        return 0
    cap = f", non-zero params <= {args.params_max:.3g}" if args.params_max else ""
    print(f"budget {args.budget_flops:.3g} FLOPs{cap}, compute mode {args.compute}")
    print(f"{'sparsity':>8} {'non-zero N':>11} {'dense N':>11} {'tokens D':>11} {'pred. loss':>11}")
    for o in pl.per_sparsity:
        mark = "  <- best" if o is pl.best else ""
        print(
            f"{o.sparsity:8.3f} {o.params_nonzero:11.4g} {o.params_dense:11.4g} {o.tokens:11.4g} {o.loss:11.5g}{mark}"
        )
    b, d = pl.best, pl.dense
    print(
        f"recommend: sparsity {b.sparsity:g}, {b.params_nonzero:.4g} non-zero params "
        f"({b.params_dense:.4g} dense), {b.tokens:.4g} tokens -> loss {b.loss:.5g}"
    )
    print(
        f"best dense: {d.params_nonzero:.4g} params, {d.tokens:.4g} tokens -> loss {d.loss:.5g} "
        f"(sparse gains {pl.loss_gain_vs_dense:.4g}, inference params x{b.params_nonzero / d.params_nonzero:.3g})"
    )
    print("assumptions: " + "; ".join(pl.assumptions))
    return 0
