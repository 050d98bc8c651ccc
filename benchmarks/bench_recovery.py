"""Recovery of SparseGPT-pruned SmolLM2-135M (50% unstructured and 2:4): perplexity before, after
masked-LoRA recovery (merged with the mask), and after full SquareHead fine-tuning, same tokens seen.

Both recoveries run ``sparsecraft.oneshot.recovery.recover`` with the SquareHead loss (dense model
as teacher) on the same windows in the same order (``--steps`` windows of ``--seq-len`` tokens,
batch 1, drawn from the calibration pool with seed 1, so the evaluation windows are never seen):

* LoRA: ``sparsecraft.integrations.lora.lora_model`` (masked LoRA, rank ``--rank``, alpha 2 x rank,
  on every pruned Linear), only the adapters train (AdamW, ``--lora-lr``); then ``merge_lora``;
  the merged model's per-layer sparsity is checked equal to the pruned model's;
* full: every weight trains (AdamW, ``--full-lr``), masks re-applied after every step.

Pruned checkpoints come from benchmarks/_pruned.py (shared with bench_eval.py); finished rows are
kept as JSON beside them (``<cache>/recovery-rows``), so reruns resume and ``--only`` runs share. Run::

    python benchmarks/bench_recovery.py [--steps 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _env  # noqa: E402
import _pruned  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "results" / "recovery.md"
CONFIGS = [("sparsegpt", "unstructured"), ("sparsegpt", "2:4")]
OTHER = [("wanda", "unstructured"), ("wanda", "2:4"), ("magnitude", "unstructured"), ("magnitude", "2:4")]


def per_layer(model) -> list[tuple[str, int, int]]:
    import sparsecraft

    return [(row.name, row.nonzeros, row.numel) for row in sparsecraft.report(model).masked]


def render(rows: list[dict], args: argparse.Namespace, threads: int, load0: float, done: bool) -> str:
    status = "complete" if done else ("PARTIAL: not every SparseGPT configuration of the issue finished in the time "
                                      "this run had (see the note below the table)")
    tokens = args.steps * args.seq_len
    lines = _env.header("Recovery after one-shot pruning: masked LoRA (merged) vs full SquareHead fine-tuning",
                        "bench_recovery.py", threads, note=f"Status: {status}.")
    lines += [_env.load_line(load0, _env.load()), "",
              f"SmolLM2-135M pruned one-shot (first column; {_pruned.N_CALIB} calibration windows of 512 tokens), then "
              f"recovered with the SquareHead loss on the same {args.steps} windows of {args.seq_len} tokens "
              f"({tokens:,} tokens, batch 1) for both methods. LoRA: rank {args.rank}, alpha {2 * args.rank}, "
              f"AdamW lr {args.lora_lr}, masked (update M * s B A), merged with `merge_lora`. Full: AdamW lr "
              f"{args.full_lr}, masks re-applied after every step. Perplexity: the first {args.n_eval} non-overlapping "
              "512-token windows of the held-out text.", "",
              "| pruned | perplexity before | after LoRA (merged) | after full SquareHead | LoRA trainable params "
              "| sparsity kept after merge | LoRA time (s) | full time (s) |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['before']:.2f} | {r['lora']:.2f} | {r['full']:.2f} | "
                     f"{r['lora_params']:,} | {'yes, every layer' if r['kept'] else 'NO'} | {r['lora_s']:.0f} | "
                     f"{r['full_s']:.0f} |")
    missing = [_pruned.label(a, p) for a, p in CONFIGS if _pruned.label(a, p) not in {r["config"] for r in rows}]
    if missing:
        lines += ["", f"**Not measured yet: {', '.join(missing)}.** This run shared its 2 cores with many other "
                  "processes (load average above) and had a deadline; `python benchmarks/bench_recovery.py "
                  "--threads 1` adds the missing rows (finished rows are kept and reused)."]
    lines += ["", f"Dense perplexity on the same windows: {args.dense_ppl:.2f}.", "",
              "The learning rates are the usual defaults of each method (sparsecraft's `recover` default for full "
              "fine-tuning, a common LoRA rate for the adapters), not tuned here; with this few tokens the "
              "numbers show the direction of each recovery, not its ceiling.", ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--lora-lr", type=float, default=2e-4)
    p.add_argument("--full-lr", type=float, default=1e-5)
    p.add_argument("--n-eval", type=int, default=16, help="perplexity windows of 512 tokens (default 16)")
    p.add_argument("--only", default=None, help="comma list of configurations (sparsegpt-unstructured, sparsegpt-2of4; "
                   "also wanda-unstructured, wanda-2of4, magnitude-unstructured, magnitude-2of4)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--cache", type=Path, default=_pruned.DEFAULT_CACHE)
    p.add_argument("--wait", action="store_true", help="wait for `python benchmarks/_pruned.py` to fill the cache")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from sparsecraft import atomic
    from sparsecraft.data.text import build_protocol
    from sparsecraft.evaluation.perplexity import perplexity
    from sparsecraft.integrations.lora import lora_model, merge_lora
    from sparsecraft.models import load_model
    from sparsecraft.oneshot.recovery import recover

    load0 = _env.load()
    lm = load_model("smollm2-135m")
    teacher, tok = lm.model, lm.tokenizer
    proto = _pruned.protocol(tok)
    train = build_protocol(tok, "shakespeare", n_calib=args.steps, n_eval=0, seq_len=args.seq_len, seed=1).calib
    evals = proto.eval[: args.n_eval]
    settings = {k: getattr(args, k) for k in ("steps", "seq_len", "rank", "lora_lr", "full_lr", "n_eval")}
    store = args.cache / "recovery-rows"  # one JSON per configuration: parallel --only runs and reruns share them

    def saved(slug: str) -> dict | None:
        f = store / f"{slug}.json"
        row = json.loads(f.read_text()) if f.is_file() else None
        return row if row and row.get("settings") == settings else None

    def write() -> None:
        rows = [r for r in (saved(_pruned.slug(a, p)) for a, p in CONFIGS + OTHER) if r]
        if rows:
            args.dense_ppl = rows[0]["dense_ppl"]
            done = all(saved(_pruned.slug(a, p)) for a, p in CONFIGS)
            _env.write_atomic(OUT, render(rows, args, torch.get_num_threads(), load0, done))

    only = set(args.only.split(",")) if args.only else None
    for algo, pattern in CONFIGS + OTHER:
        slug = _pruned.slug(algo, pattern)
        if (algo, pattern) in OTHER and not (only and slug in only):
            continue  # the other pruned models only when asked for by name
        if (only and slug not in only) or saved(slug):
            continue
        pruned, info = _pruned.pruned(algo, pattern, args.cache, proto.calib, wait=args.wait)
        row = {"config": info["config"], "before": perplexity(pruned, evals, progress=False), "settings": settings,
               "dense_ppl": perplexity(teacher, evals, progress=False)}
        layers = per_layer(pruned)
        student = lora_model(copy.deepcopy(pruned), r=args.rank, lora_alpha=2 * args.rank)
        row["lora_params"] = sum(q.numel() for q in student.parameters() if q.requires_grad)
        t0 = time.perf_counter()
        recover(student, train, teacher=teacher, loss="squarehead", steps=args.steps, lr=args.lora_lr, progress=False)
        row["lora_s"] = time.perf_counter() - t0
        merged = merge_lora(student)
        row["kept"] = per_layer(merged) == layers
        row["lora"] = perplexity(merged, evals, progress=False)
        del merged, student
        t0 = time.perf_counter()
        recover(pruned, train, teacher=teacher, loss="squarehead", steps=args.steps, lr=args.full_lr, progress=False)
        row["full_s"] = time.perf_counter() - t0
        row["full"] = perplexity(pruned, evals, progress=False)
        atomic.write_json(store / f"{slug}.json", row)
        print(row, flush=True)
        write()
    write()

if __name__ == "__main__":
    main()
