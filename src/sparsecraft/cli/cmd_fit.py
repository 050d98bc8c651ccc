"""Fit a scaling law to logged runs (CSV, JSON or run folders) and extrapolate.

Example::

    sparsecraft fit runs.csv --law bnsl --x compute --y loss --breaks 1 --holdout 3
    sparsecraft fit runs/ --law power --x final.density --y final.test_loss --holdout 2 \\
        --holdout-side low

Writes ``OUT/fit.json`` (reload with ``sparsecraft.scaling.load_fit`` or ``sparsecraft plan``)
and ``OUT/fit.png`` (data, fit, extrapolation, confidence band).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sparsecraft.cli.common import print_json

NAME = "fit"
HELP = "fit a scaling law (bnsl, power, chinchilla, average-param, sparse) to runs"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from sparsecraft.scaling.laws import LAWS

    p.add_argument("source", help="runs.csv, a .json of runs, or a folder of run reports")
    p.add_argument("--law", default="bnsl", help=f"one of: {', '.join(LAWS.names())}")
    p.add_argument(
        "--x",
        required=True,
        help="input column(s), comma-separated in the law's order; dotted paths for nested keys (final.density)",
    )
    p.add_argument("--y", required=True, help="target column; prefix 1- for one minus it")
    p.add_argument(
        "--rows", default=None, help="expand a list of row objects in each report (e.g. rows for a sweep report)"
    )
    p.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keep only rows where KEY equals VALUE (repeatable)",
    )
    p.add_argument("--breaks", type=int, default=1, help="number of breaks (bnsl only)")
    p.add_argument("--holdout", type=int, default=0, help="points held out for the extrapolation error")
    p.add_argument(
        "--holdout-side",
        choices=["high", "low"],
        default="high",
        help="hold out the largest (high) or smallest (low) first-input values",
    )
    p.add_argument(
        "--loss",
        default="auto",
        choices=["auto", "log", "log1p", "linear"],
        help="residual space (auto = the law's default; bnsl: log1p)",
    )
    p.add_argument("--restarts", type=int, default=8, help="grid points polished locally")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap refits (0 = none)")
    p.add_argument("--level", type=float, default=0.9, help="confidence level of intervals")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output folder (default: fit-<law>)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    from sparsecraft.errors import SparsecraftError
    from sparsecraft.scaling.fit import fit
    from sparsecraft.scaling.io import load_table

    if not 0 < args.level < 1:
        raise SparsecraftError(f"--level must be in (0, 1), got {args.level}")
    table = load_table(args.source, args.x, args.y, rows=args.rows, where=args.where)
    opts = {"breaks": args.breaks} if args.law.lower() == "bnsl" else {}
    res = fit(
        args.law,
        table.x,
        table.y,
        loss=args.loss,
        holdout=args.holdout,
        holdout_side=args.holdout_side,
        restarts=args.restarts,
        bootstrap=args.bootstrap,
        level=args.level,
        seed=args.seed,
        x_names=table.x_names,
        y_name=table.y_name,
        **opts,
    )
    out = Path(args.out or f"fit-{res.law.name}")
    json_path = res.save(out / "fit.json")
    png = None
    if not args.no_plot:
        from sparsecraft.scaling.plot import plot_fit

        png = plot_fit(res, out / "fit.png")
    summary = {
        **res.summary(),
        "rows_skipped": table.skipped,
        "fit_json": str(json_path),
        "plot": None if png is None else str(png),
    }
    if args.json:
        print_json(summary)
        return 0
    ci = summary["intervals"] or {}
    print(
        f"{res.law.name} fit of {res.y_name} vs {', '.join(res.x_names)} "
        f"({summary['n_fit']} fit points, {summary['n_holdout']} held out, loss {res.loss})"
    )
    for name, v in summary["params"].items():
        band = f"  [{ci[name][0]:.4g}, {ci[name][1]:.4g}]" if name in ci else ""
        print(f"  {name:>6} = {v:.6g}{band}")
    if ci:
        print(f"  ({int(args.level * 100)}% bootstrap intervals, {summary['n_bootstrap']} refits)")
    print(
        f"RMSLE fit {res.rmsle_fit:.4g}"
        + (f", held out {res.rmsle_holdout:.4g}" if res.rmsle_holdout is not None else "")
    )
    print(f"wrote {json_path}" + (f" and {png}" if png else ""))
    return 0
