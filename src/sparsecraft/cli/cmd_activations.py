"""Activation sparsity of a model's MLPs: natural, under top-k, or PPL-p% with CETT thresholds.

Examples::

    sparsecraft activations --model smollm2-135m --data shakespeare --json          # natural sparsity
    sparsecraft activations --model smollm2-135m --cett --ppl-increase 0.01 --json  # PPL-1%
    sparsecraft activations --model smollm2-135m --topk 256                         # top-k perplexity

Without ``--cett`` or ``--topk`` it reports, per layer, the fraction of exact zeros and of
``|a| <= --eps`` of the MLP hidden activation on the evaluation windows (and the perplexity
measured in the same pass, for a causal LM). ``--cett`` computes the per-layer CETT thresholds
from the dense model on the calibration windows and bisects the global CETT ``c`` (``--steps``
evaluations) until the perplexity on the evaluation windows has risen by ``--ppl-increase``
(0.01 = 1%): one JSON object with ``sparsity`` (fraction of MLP hidden activations zeroed on the
evaluation windows), ``ppl_dense``, ``ppl``, ``cett``, the final ``bracket`` and per-layer
``layers`` (threshold, sparsity). ``--topk K`` keeps the K largest activations per token.
``--calib`` (alias ``--data``), ``--n-calib``, ``--n-eval``, ``--seq-len`` are the Shakespeare
protocol flags of ``sparsecraft prune``; ``--out DIR`` also writes the JSON to
``DIR/activations.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sparsecraft.cli.common import add_data_arguments, add_run_arguments, print_json
from sparsecraft.errors import SparsecraftError

NAME = "activations"
# argparse formats help strings with %, so the percent sign is escaped
HELP = "activation sparsity of a model's MLPs: natural, top-k, or PPL-p%% (CETT thresholds)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m", help="HF directory or built-in name (smollm2-135m)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--cett", action="store_true", help="PPL-p%% sparsity with CETT thresholds (Sparsing Law)")
    mode.add_argument("--topk", type=int, default=None, help="keep the K largest activations per token")
    p.add_argument("--ppl-increase", type=float, default=0.01, help="p of PPL-p%% (default 0.01 = 1%%)")
    p.add_argument("--steps", type=int, default=10, help="bisection steps over the CETT budget (default 10)")
    p.add_argument("--eps", type=float, default=1e-3, help="|a| <= eps counts as near zero (default 1e-3)")
    add_data_arguments(p, n_calib=8, n_eval=16, calib_aliases=("--data",))
    add_run_arguments(p, "folder for activations.json (default: none)")


def _validate(args: argparse.Namespace) -> None:
    from sparsecraft.activations.search import check_increase

    check_increase(args.ppl_increase)
    if not 1 <= args.steps <= 16:
        raise SparsecraftError(f"--steps must be in [1, 16], got {args.steps}")
    if not args.eps >= 0:
        raise SparsecraftError(f"--eps must be >= 0, got {args.eps}")
    for flag, value, low in (("--n-eval", args.n_eval, 1), ("--seq-len", args.seq_len, 2),
                             ("--batch-size", args.batch_size, 1), ("--n-calib", args.n_calib, 1 if args.cett else 0)):
        if value < low:
            raise SparsecraftError(f"{flag} must be >= {low}, got {value}")
    if args.threads is not None and args.threads < 1:
        raise SparsecraftError(f"--threads must be >= 1, got {args.threads}")
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        raise SparsecraftError(f"--out {args.out!r} exists and is not a folder")


def _layers(rep: Any) -> list[dict[str, Any]]:
    return [{"name": s.name, "sparsity": s.zero_fraction, "eps_fraction": s.eps_fraction,
             "token_sparsity_p50": s.per_token_zero["p50"], "dead_neurons": s.dead_neurons} for s in rep.layers]


def run(args: argparse.Namespace) -> int:
    _validate(args)
    import torch

    from sparsecraft.activations import ActivationMeter, apply_transform, find_sites, ppl_p
    from sparsecraft.activations.topk import check_k
    from sparsecraft.data.text import build_protocol
    from sparsecraft.evaluation.perplexity import perplexity
    from sparsecraft.models.loader import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    causal = lm.kind == "causal-lm"
    if args.cett and not causal:
        raise SparsecraftError(f"--cett needs perplexity, i.e. a causal LM; {args.model} is an {lm.kind}")
    sites = find_sites(lm.model)
    if args.topk is not None:
        check_k(args.topk, min(s.hidden for s in sites))
    if lm.tokenizer is None:
        raise SparsecraftError(f"{args.model} has no tokenizer files; the text protocol needs one")
    proto = build_protocol(lm.tokenizer, args.calib, args.eval, args.n_calib if args.cett else 0,
                           args.n_eval, args.seq_len, args.seed)
    progress = not args.json
    result: dict[str, Any] = {"model": args.model, "calib": args.calib, "seq_len": args.seq_len}
    if args.cett:
        res = ppl_p(lm.model, proto.calib, proto.eval, p=args.ppl_increase, steps=args.steps,
                    batch_size=args.batch_size, progress=progress)
        result.update(mode="cett", **res.to_dict())
    else:
        if args.topk is not None:
            apply_transform(lm.model, "topk", k=args.topk)
        result["mode"] = "topk" if args.topk is not None else "natural"
        if args.topk is not None:
            result["k"] = args.topk
        with ActivationMeter(lm.model, eps=args.eps) as meter:
            if causal:
                result["ppl"] = perplexity(lm.model, proto.eval, batch_size=args.batch_size, progress=progress)
            else:
                with torch.no_grad():
                    for i in range(0, len(proto.eval), args.batch_size):
                        lm.model(input_ids=proto.eval[i : i + args.batch_size])
        rep = meter.report()
        result.update(sparsity=rep.zero_fraction, eps=args.eps, eps_fraction=rep.eps_fraction,
                      eval_tokens=int(proto.eval.numel()), layers=_layers(rep))
    if args.out is not None:
        from sparsecraft.atomic import write_json

        Path(args.out).mkdir(parents=True, exist_ok=True)
        write_json(Path(args.out) / "activations.json", result)
    if args.json:
        print_json(result)
        return 0
    _print(result)
    return 0


def _print(r: dict[str, Any]) -> None:
    print(f"model     {r['model']} ({r['mode']})")
    if r["mode"] == "cett":
        b = r["bracket"]
        print(f"PPL-{r['ppl_increase']:.0%}    sparsity {r['sparsity']:.2%} at CETT {r['cett']:.4f} "
              f"(bracket [{b['cett_lo']:.4f}, {b['cett_hi']:.4f}])")
        print(f"perplexity {r['ppl_dense']:.3f} dense -> {r['ppl']:.3f} (target {r['ppl_target']:.3f})")
        for x in r["layers"]:
            print(f"  {x['name']:40s} t={x['threshold']:.4g}  {x['sparsity']:.2%}")
        return
    if "ppl" in r:
        print(f"perplexity {r['ppl']:.3f}")
    print(f"sparsity  {r['sparsity']:.2%} exact zeros, {r['eps_fraction']:.2%} with |a| <= {r['eps']:g}")
    for x in r["layers"]:
        print(f"  {x['name']:40s} {x['sparsity']:7.2%} zeros {x['eps_fraction']:7.2%} <= eps")
