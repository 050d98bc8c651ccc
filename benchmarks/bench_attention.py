"""Training-free sparse attention on SmolLM2-135M: accuracy vs sparsity per method and phase.

    python benchmarks/bench_attention.py                     # default: 1024 tokens, minutes per method
    python benchmarks/bench_attention.py --seq-len 2048 --depths 0.1,0.3,0.5,0.7,0.9 --per-depth 2 --n-eval 4

Tasks (sparsecraft.data.long_context, built from the plays): needle, multi-key retrieval, variable
tracking, ``--seq-len`` tokens each at ``--depths`` (``--per-depth`` per depth). Every prompt is first
answered densely; a task the dense model fails entirely carries no signal and is reported but not
swept. For each method (``--methods``) and sparsity (``--sparsities``):

* prefill phase: the prompt's forward uses the method (every query selects its keys), the answer
  tokens are decoded densely;
* decode phase: the prompt's forward is dense (shared by all methods; vertical-slash remembers its
  pattern from the prompt's last queries), every answer token's query uses the method;
* perplexity: ``--n-eval`` Shakespeare evaluation windows of ``--seq-len`` tokens, every query sparse.

The realised sparsity (dropped / causal query-key pairs of the sparse calls) is reported next to
the nominal one. Writes the "sparse-attention" section of docs/results/attention.md.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from _env import environment, load, load_line
from _sections import write_section

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results" / "attention.md"


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--methods", default="topk,quest,vertical_slash")
    ap.add_argument("--sparsities", default="0.5,0.8,0.95")
    ap.add_argument("--tasks", default="needle,multikey,vartrack")
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--depths", default="0.2,0.5,0.8")
    ap.add_argument("--per-depth", type=int, default=1)
    ap.add_argument("--n-eval", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from sparsecraft.attention import sparse_attention
    from sparsecraft.attention.vertical_slash import VerticalSlashAttention
    from sparsecraft.data.long_context import make_tasks, score
    from sparsecraft.data.text import build_protocol
    from sparsecraft.evaluation.long_context import greedy_continue, prefill
    from sparsecraft.evaluation.perplexity import perplexity
    from sparsecraft.models.loader import load_model

    load0 = load()
    lm = load_model(args.model)
    model, tok = lm.model, lm.tokenizer
    stops = [tok.eos_token_id] if tok.eos_token_id is not None else []
    samples = make_tasks(tok, args.tasks.split(","), args.seq_len, [float(d) for d in args.depths.split(",")],
                         args.per_depth)
    windows = build_protocol(tok, "shakespeare", n_calib=0, n_eval=args.n_eval, seq_len=args.seq_len).eval
    methods = args.methods.split(",")
    sparsities = [float(s) for s in args.sparsities.split(",")]

    # dense prompts: shared prefill (+ vertical-slash's observed pattern) and the dense answers
    shared, dense_ok = [], defaultdict(list)
    for s in samples:
        with sparse_attention(model, VerticalSlashAttention(0.5), phase="decode") as ctx:
            logits, cache = prefill(model, s.ids)
        toks = greedy_continue(model, logits, copy.deepcopy(cache), s.max_new_tokens, stops)
        dense_ok[s.task].append(score(s, tok.decode(toks)))
        shared.append((logits, cache, ctx.states))
        print("dense", s.task, s.depth, repr(tok.decode(toks)), s.answers, flush=True)
    swept = [t for t in dict.fromkeys(s.task for s in samples) if mean(dense_ok[t]) > 0]
    ppl_dense = perplexity(model, windows, batch_size=1, progress=False)

    rows, acc = [], {}
    for method in methods:
        for sp in sparsities:
            t0 = time.perf_counter()
            res = {"prefill": defaultdict(list), "decode": defaultdict(list)}
            real = {}
            with sparse_attention(model, method, sp, phase="prefill") as ctx:
                ppl = perplexity(model, windows, batch_size=1, progress=False)
                real["ppl"] = ctx.realised_sparsity()
            pre_ctx_kept = [0, 0]
            for s, (logits, cache, states) in zip(samples, shared):
                if s.task not in swept:
                    continue
                with sparse_attention(model, method, sp, phase="prefill") as ctx:
                    lg, c = prefill(model, s.ids)
                pre_ctx_kept[0] += ctx.kept
                pre_ctx_kept[1] += ctx.causal
                toks = greedy_continue(model, lg, c, s.max_new_tokens, stops)
                res["prefill"][s.task].append(score(s, tok.decode(toks)))
                with sparse_attention(model, method, sp, phase="decode") as ctx:
                    ctx.states.update(copy.deepcopy(states))
                    toks = greedy_continue(model, logits, copy.deepcopy(cache), s.max_new_tokens, stops)
                res["decode"][s.task].append(score(s, tok.decode(toks)))
                real.setdefault("decode", []).append(ctx.realised_sparsity())
            real["prefill"] = 1 - pre_ctx_kept[0] / pre_ctx_kept[1] if pre_ctx_kept[1] else float("nan")
            for phase in ("prefill", "decode"):
                for task in swept:
                    acc[(method, sp, phase, task)] = mean(res[phase][task])
            cells = []
            for phase in ("prefill", "decode"):
                cells.append(" / ".join(f"{mean(res[phase][t]):.2f}" for t in swept))
            row = (f"| {method} | {sp:.0%} | {real['prefill']:.1%} | {cells[0]} | {mean(real.get('decode', [])):.1%} | "
                   f"{cells[1]} | {ppl:.2f} ({ppl / ppl_dense - 1:+.1%}) | {time.perf_counter() - t0:.0f} s |")
            rows.append(row)
            print(row, flush=True)

    winners = []
    for phase in ("prefill", "decode"):
        for task in swept:
            for sp in sparsities:
                scores = {m: acc[(m, sp, phase, task)] for m in methods}
                best = max(scores.values())
                names = [m for m, v in scores.items() if v == best]
                winners.append(f"| {phase} | {task} | {sp:.0%} | {', '.join(names)} ({best:.2f}) |")
    n_per = {t: len(v) for t, v in dense_ok.items()}
    body = "\n".join([
        "## Training-free sparse attention (The Sparse Frontier) on SmolLM2-135M", "",
        f"Command: `python benchmarks/bench_attention.py {' '.join(sys.argv[1:])}`  ",
        environment(args.threads) + "  ", "",
        f"Prompts of {args.seq_len} tokens built from the plays (sparsecraft.data.long_context), depths {args.depths}, "
        f"{args.per_depth} per depth and task; greedy answers, exact match. Dense accuracy: "
        + ", ".join(f"{t} {mean(v):.2f} ({int(sum(v))}/{n_per[t]})" for t, v in dense_ok.items())
        + f". Swept tasks (dense accuracy > 0): {', '.join(swept) or 'none'}. Dense perplexity on "
        f"{windows.shape[0]} evaluation window(s) of {args.seq_len} tokens: {ppl_dense:.2f}. Realised sparsity: "
        "dropped / causal query-key pairs of the sparse forwards (prefill: the prompts' causal triangles; "
        "decode: the answer tokens' rows). Accuracy cells list the swept tasks in order "
        f"({' / '.join(swept)}). This is an accuracy emulation (scores masked before the softmax), not a speed test.",
        "",
        "| method (unit) | nominal sparsity | realised, prefill | prefill-phase accuracy | realised, decode | "
        "decode-phase accuracy | perplexity (sparse prefill) | time |",
        "|---|---|---|---|---|---|---|---|",
        *rows, "",
        "Best method per phase, task and sparsity (ties listed):", "",
        "| phase | task | sparsity | best (accuracy) |", "|---|---|---|---|", *winners, "",
        load_line(load0, load()),
    ])
    print(body)
    if not args.no_write:
        write_section(OUT, "sparse-attention", body, "Attention sparsity")


if __name__ == "__main__":
    main()
