"""Optimal learning rate and batch size from the Step Law (Li et al. 2025).

    lr_opt = 1.79 N^-0.713 D^0.307,  batch_opt = 0.58 D^0.571 tokens

Example: ``sparsecraft steplaw --params 1e8 --tokens 2e9`` -> lr 2.54e-3, batch ~118.7k tokens.
"""

from __future__ import annotations

import argparse

from sparsecraft.cli.common import print_json

NAME = "steplaw"
HELP = "optimal learning rate and batch size from N and D (Step Law)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", type=float, required=True, help="non-embedding parameters N")
    p.add_argument("--tokens", type=float, required=True, help="training tokens D")
    p.add_argument("--seq-len", type=int, default=None, help="also give the batch in sequences")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    from sparsecraft.scaling.steplaw import step_law

    r = step_law(args.params, args.tokens, args.seq_len)
    if args.json:
        print_json(r.to_dict())
        return 0
    print(f"N = {r.params:.4g} params, D = {r.tokens:.4g} tokens")
    print(f"learning rate  {r.lr:.4g}")
    line = f"batch size     {r.batch_tokens:,.0f} tokens"
    if r.batch_sequences is not None:
        line += f" ({r.batch_sequences:,.1f} sequences of {args.seq_len})"
    print(line)
    return 0
