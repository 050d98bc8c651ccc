"""Structure removal on SmolLM2-135M (Shakespeare protocol): perplexity, parameters and speed vs dense.

Rows: SliceGPT 10/20/30% (embeddings kept, head tied) and the reference layout (rotated + sliced
embedding, untied head) at 10/20/25/30% beside the official-code anchors; MLP-channel removal
25/50% (Wanda-weighted channel norms); query-head removal 25% (evenly per key/value group, global
ranking); depth pruning 2/4/6 blocks (Block Influence). Every structured row also gets a short
recovery fine-tune (``--recover-steps`` steps of next-token loss on the calibration windows, batch
1, AdamW ``--recover-lr``). Peers: SparseGPT 50% and 2:4 (masks, sparse kernels for timing).

Protocol: 32 calibration windows of 512 tokens from the calibration pool (seed 0), 16 evaluation
windows of 512. Two parts, results cached in ``--work`` (rerunning skips finished rows; a row is
kept before its recovery, so ``--recover-steps 0`` first and a later run adds the recovered numbers)::

    python benchmarks/bench_structure.py --part quality
    flock /tmp/sparsecraft-heavy.lock python benchmarks/bench_structure.py --part timing

Timing (torch's dense kernels for structured rows; ``sparsecraft.convert(backend="auto")`` for the
SparseGPT peers): batch-16 prefill of 128 tokens -- KV cache and next-token logits, as ``generate``
computes them (``--prefill-logits all``: every position's logits) -- (``time_blocks``, each row interleaved with the
dense model in the same process, median of block medians) and batch-1 greedy decode of 32 tokens
after a 16-token prompt (median of 3, interleaved with dense). Writes docs/results/structure.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from _env import header, load, load_line, write_atomic

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results" / "structure.md"
#: official microsoft/TransformerCompression on this protocol (issue 13): slicing -> perplexity
ANCHORS = {"dense": 56.48, 0.10: 66.98, 0.20: 81.74, 0.25: 90.00, 0.30: 100.89}
#: key, label, method, sparsity, options, criterion, distribution, pattern, recover
U, REF = "unstructured", {"embeddings": "slice"}
ROWS = [
    ("slicegpt-ref-25", "SliceGPT 25% (reference layout)", "slicegpt", 0.25, REF, None, "uniform", U, False),
    ("slicegpt-10", "SliceGPT 10%", "slicegpt", 0.10, {}, None, "uniform", U, True),
    ("slicegpt-20", "SliceGPT 20%", "slicegpt", 0.20, {}, None, "uniform", U, True),
    ("slicegpt-30", "SliceGPT 30%", "slicegpt", 0.30, {}, None, "uniform", U, True),
    ("channels-25", "MLP channels 25%", "channels", 0.25, {}, "wanda", "uniform", U, True),
    ("channels-50", "MLP channels 50%", "channels", 0.50, {}, "wanda", "uniform", U, True),
    ("heads-25", "query heads 25%", "heads", 0.25, {}, "wanda", "global", U, True),
    ("heads-25-layer", "query heads, per layer (25% rounds to 1 of 3 per group)", "heads", 0.25, {}, "wanda",
     "uniform", U, True),
    ("depth-2", "depth 2 blocks", "depth", 0.0, {"blocks": 2}, None, "uniform", U, True),
    ("depth-4", "depth 4 blocks", "depth", 0.0, {"blocks": 4}, None, "uniform", U, True),
    ("depth-6", "depth 6 blocks", "depth", 0.0, {"blocks": 6}, None, "uniform", U, True),
    ("sparsegpt-50", "SparseGPT 50% (peer)", "sparsegpt", 0.5, {}, None, "uniform", U, False),
    ("sparsegpt-24", "SparseGPT 2:4 (peer)", "sparsegpt", 0.5, {}, None, "uniform", "2:4", False),
    ("slicegpt-ref-10", "SliceGPT 10% (reference layout)", "slicegpt", 0.10, REF, None, "uniform", U, False),
    ("slicegpt-ref-20", "SliceGPT 20% (reference layout)", "slicegpt", 0.20, REF, None, "uniform", U, False),
    ("slicegpt-ref-30", "SliceGPT 30% (reference layout)", "slicegpt", 0.30, REF, None, "uniform", U, False),
]


def nonzero_params(model: torch.nn.Module) -> int:
    return sum(int(torch.count_nonzero(p)) for p in {id(p): p for p in model.parameters()}.values())


def quality(args: argparse.Namespace, cache: dict, save: callable) -> None:
    from sparsecraft import prune
    from sparsecraft.data.text import build_protocol
    from sparsecraft.evaluation.perplexity import perplexity
    from sparsecraft.models import load_model
    from sparsecraft.oneshot.recovery import recover
    from sparsecraft.structure import count_params, save_pretrained

    lm = load_model(args.model)
    proto = build_protocol(lm.tokenizer, "shakespeare", n_calib=32, n_eval=16, seq_len=512, seed=0)
    cache["protocol"] = proto.fingerprint
    if "dense" not in cache["rows"]:
        cache["rows"]["dense"] = {"label": "dense", "params": count_params(lm.model),
                                  "ppl": perplexity(lm.model, proto.eval, 2, False)}
        save()
    dense = cache["rows"]["dense"]
    if args.recover_steps and "ppl_recovered" not in dense:  # the same fine-tune on the unpruned model: the
        model = lm.model  # recovered rows also adapt to the plays, so this, not 'dense', is their bar
        dense["recovery"] = recover(model, proto.calib, None, loss="lm", steps=args.recover_steps,
                                    lr=args.recover_lr, batch_size=1, progress=False).to_dict()
        dense["ppl_recovered"] = perplexity(model, proto.eval, 2, False)
        save()
    order = [r for k in args.only for r in ROWS if r[0] == k] if args.only else ROWS  # --only's order
    for key, label, method, sp, opts, crit, dist, pattern, rec in order:
        row = cache["rows"].get(key)
        if row is None:
            model = load_model(args.model).model
            t0 = time.perf_counter()
            rep = prune(model, sp, method=method, criterion=crit, distribution=dist, pattern=pattern,
                        calib=proto.calib, batch_size=8, progress=False, **opts)
            row = {"label": label, "method": method, "prune_s": round(time.perf_counter() - t0, 1),
                   "params": count_params(model), "nonzero": nonzero_params(model)}
            if "structure" in rep.info:
                st = rep.info["structure"]
                row.update({k: st[k] for k in ("blocks_removed", "width", "native_config") if k in st})
            row["ppl"] = perplexity(model, proto.eval, 2, False)
            save_pretrained(model, Path(args.work) / "models" / key)
            cache["rows"][key] = row  # kept before recovery: a later run (--recover-steps > 0) adds it
            print(f"{label}: {row}", flush=True)
            save()
            del model
        if rec and args.recover_steps and "ppl_recovered" not in row:
            model = load_model(Path(row.get("work", args.work)) / "models" / key).model
            r = recover(model, proto.calib, None, loss="lm", steps=args.recover_steps, lr=args.recover_lr,
                        batch_size=1, progress=False)
            row["recovery"] = r.to_dict()
            row["ppl_recovered"] = perplexity(model, proto.eval, 2, False)
            print(f"{label} recovered: {row['ppl_recovered']:.2f}", flush=True)
            save()
            del model


@torch.no_grad()
def _decode(model: torch.nn.Module, ids: torch.Tensor, n: int) -> float:
    t0 = time.perf_counter()
    model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, attention_mask=torch.ones_like(ids),
                   pad_token_id=0)
    return time.perf_counter() - t0


def _prefill(model: torch.nn.Module, batch: torch.Tensor, logits: str) -> callable:
    """A batch prefill: the KV cache filled and the next-token logits (``logits="last"``, what
    ``generate`` computes), or a scoring forward with the logits of every position (``"all"``)."""
    if logits == "last":
        return lambda: model(batch, use_cache=True, logits_to_keep=1)
    return lambda: model(batch, use_cache=False)


def timing(args: argparse.Namespace, cache: dict, save: callable) -> None:
    from sparsecraft.kernels import convert
    from sparsecraft.kernels.timing import block_median, time_blocks
    from sparsecraft.models import load_model

    dense = load_model(args.model).model
    cache["timing"] = {"prefill": f"16 x {args.prefill_len} tokens", "decode": f"{args.decode_len} tokens",
                       "logits": args.prefill_logits,
                       "rounds": args.rounds, "repeats": args.repeats, "command": " ".join(__import__("sys").argv)}
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 49152, (1, 16), generator=g)
    batch = torch.randint(0, 49152, (16, args.prefill_len), generator=g)
    for key, *_ in ROWS:
        row = cache["rows"].get(key)
        if row is None or ("prefill_ratio" in row and not args.retime) or (args.only and key not in args.only):
            continue
        model = load_model(Path(row.get("work", args.work)) / "models" / key).model
        pre, dec = model, model
        if row["method"] == "sparsegpt":  # the existing sparse kernels, chosen per layer where faster
            import copy

            dec = copy.deepcopy(model)
            row["convert_b1"] = sum(x.converted for x in convert(dec, backend="auto", batch=1).layers)
            row["convert_b16"] = sum(x.converted for x in convert(pre, backend="auto", batch=batch.numel()).layers)
        calls = {"dense": _prefill(dense, batch, args.prefill_logits), key: _prefill(pre, batch, args.prefill_logits)}
        with torch.no_grad():
            blocks = time_blocks(calls, rounds=args.rounds, block=2, warmup=1, pause_s=0.2)
        t_dense, t_row = block_median(blocks["dense"]), block_median(blocks[key])
        dd, dr = [], []
        for _ in range(args.repeats + 1):
            dd.append(_decode(dense, prompt, args.decode_len))
            dr.append(_decode(dec, prompt, args.decode_len))
        row.update({"timed_by": cache["timing"]["command"], "prefill_s": t_row, "prefill_dense_s": t_dense,
                    "prefill_ratio": t_row / t_dense,
                    "decode_tps": args.decode_len / statistics.median(dr[1:]),
                    "decode_dense_tps": args.decode_len / statistics.median(dd[1:])})
        print(f"{row['label']}: prefill {t_row / t_dense:.3f} x dense, decode {row['decode_tps']:.1f} tok/s",
              flush=True)
        save()
        del model, pre, dec


def _fmt(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def render(cache: dict, args: argparse.Namespace, load0: float) -> str:
    rows = cache["rows"]
    dense = rows.get("dense", {})
    p0 = dense.get("params", 0)
    head = ("| config | parameters (M) | reduction | perplexity | after recovery | reference ppl | "
            "prefill b16 vs dense | speed goal | decode b1 tok/s (dense) |\n" + "|---" * 9 + "|")
    lines = [f"| dense | {p0 / 1e6:.1f} | - | {_fmt(dense.get('ppl'))} | {_fmt(dense.get('ppl_recovered'))} | "
             f"{ANCHORS['dense']} | 1.000 | - | - |"]
    for key, label, method, sp, opts, *_ in ROWS:  # noqa: B007
        r = rows.get(key)
        if r is None:
            continue
        eff = r["nonzero"] if method == "sparsegpt" else r["params"]
        red = 1 - eff / p0 if p0 else 0.0
        ref = ANCHORS.get(sp) if opts.get("embeddings") == "slice" else None
        goal = "-"
        if "prefill_ratio" in r and red <= 0:
            goal = "n/a (not fewer parameters)"
        elif "prefill_ratio" in r:
            need = 0.8 * red
            verdict = "met" if 1 - r["prefill_ratio"] >= need else "MISSED"
            if method == "sparsegpt":  # the goal is the structured rows'; the peers are shown against it
                verdict = "peer, " + ("would meet" if verdict == "met" else "would miss")
            goal = f"{verdict} (needs <= {1 - need:.3f})"
        dec = f"{r['decode_tps']:.1f} ({r['decode_dense_tps']:.1f})" if "decode_tps" in r else "-"
        pm = f"{eff / 1e6:.1f}" + (" nonzero" if method == "sparsegpt" else "")
        lines.append(f"| {label} | {pm} | {red:+.1%} | {_fmt(r.get('ppl'))} | {_fmt(r.get('ppl_recovered'))} | "
                     f"{ref if ref else '-'} | {_fmt(r.get('prefill_ratio'), '.3f')} | {goal} | {dec} |")
    text = [*header("Structure removal on SmolLM2-135M (Shakespeare protocol)", "bench_structure.py", args.threads),
            load_line(load0, load()) + "  ",
            "Protocol: 32 x 512 calibration windows from the calibration pool (seed 0), 16 x 512 evaluation windows; "
            + (f"recovery: {args.recover_steps} steps of next-token loss on the calibration windows, AdamW lr "
               f"{args.recover_lr}, batch 1; the dense row's 'after recovery' is the same fine-tune of the unpruned "
               "model (it adapts to the plays too: that, not the untuned dense, is the bar for recovered rows)."
               if any("ppl_recovered" in r for r in rows.values()) else
               "recovery: not run for any row yet (the 'after recovery' column is empty).")
            + " Reduction = 1 - parameters / dense (tied weights once; for the SparseGPT "
            "peers the nonzero parameters). Speed goal: prefill time reduction >= 0.8 x parameter reduction.  ",
            _timing_line(cache),
            "", head, *lines, "", *_comparisons(rows, p0)]
    return "\n".join(text) + "\n"


def _timing_line(cache: dict) -> str:
    t = cache.get("timing")
    if not t:
        return "Timing: not run yet (`--part timing`)."
    by: dict[str, list[str]] = {}
    for r in cache["rows"].values():
        if "timed_by" in r:
            by.setdefault(r["timed_by"], []).append(r["label"])
    cmds = (" ".join(f"Rows timed by `{c}`: {', '.join(labels)}." for c, labels in by.items()) if len(by) > 1
            else f"Command `{t['command']}`.")
    what = ("KV cache and next-token logits, as generate's prefill" if t.get("logits", "all") == "last"
            else "a scoring forward with every position's logits")
    return (f"Timing (under the heavy lock): batch-16 prefill of {t['prefill']} ({what}; time_blocks, each row "
            f"interleaved with dense), batch-1 greedy decode of {t['decode']} (median of {t['repeats']}, "
            "interleaved with dense); torch's dense kernels for structured rows, sparsecraft.convert(backend='auto') "
            f"for the SparseGPT peers. {cmds}")


def _comparisons(rows: dict, p0: int) -> list[str]:
    """Each SliceGPT row beside the other structured rows within 4% of its parameter count."""
    out = ["## SliceGPT at equal parameter count", ""]
    structured = {k: r for k, r in rows.items() if k != "dense" and r.get("method") not in ("sparsegpt", None)}
    for r in structured.values():
        if r["method"] != "slicegpt":
            continue
        near = [(k2, r2) for k2, r2 in structured.items() if r2["method"] != "slicegpt"
                and abs(r2["params"] - r["params"]) <= 0.04 * p0]
        for _, r2 in near:
            for tag, a, b in (("one-shot", r.get("ppl"), r2.get("ppl")),
                              ("recovered", r.get("ppl_recovered"), r2.get("ppl_recovered"))):
                if a is None or b is None:
                    continue
                verdict = "slicing loses" if a > b else "slicing wins"
                out.append(f"- {r['label']} ({r['params'] / 1e6:.1f}M) vs {r2['label']} ({r2['params'] / 1e6:.1f}M), "
                           f"{tag}: {a:.2f} vs {b:.2f} -> {verdict}")
    return out if len(out) > 2 else []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--part", choices=["quality", "timing", "render"], default="quality")
    ap.add_argument("--only", nargs="*", default=None, help="row keys to run, in this order")
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench_structure"))
    ap.add_argument("--merge", nargs="*", default=[], help="other --work folders whose rows (and saved models) to "
                    "include (quality rows run in parallel processes)")
    ap.add_argument("--recover-steps", type=int, default=32)
    ap.add_argument("--recover-lr", type=float, default=5e-5)
    ap.add_argument("--repeats", type=int, default=3, help="decodes per model (median)")
    ap.add_argument("--rounds", type=int, default=4, help="prefill timing rounds (blocks of 2 calls)")
    ap.add_argument("--prefill-len", type=int, default=128, help="tokens per sequence of the batch-16 prefill")
    ap.add_argument("--prefill-logits", choices=("last", "all"), default="last",
                    help="last: the prefill generate runs (KV cache, next-token logits); all: a scoring forward "
                         "with the logits of every position (the LM head then costs a quarter of SmolLM2's time)")
    ap.add_argument("--decode-len", type=int, default=32, help="greedy tokens per batch-1 decode")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--retime", action="store_true", help="timing: measure rows that already have times again")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load0 = load()
    path = Path(args.work) / "results.json"
    cache = json.loads(path.read_text()) if path.exists() else {"rows": {}}
    for other in args.merge:  # rows another process measured: keep theirs where this cache has none
        extra = json.loads((Path(other) / "results.json").read_text())
        for key, row in extra["rows"].items():
            if key not in cache["rows"]:
                cache["rows"][key] = {**row, "work": str(other)}

    def save() -> None:
        from sparsecraft.atomic import write_json

        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, cache)
        write_atomic(OUT, render(cache, args, load0))

    if args.part == "quality":
        quality(args, cache, save)
    elif args.part == "timing":
        timing(args, cache, save)
    save()


if __name__ == "__main__":
    main()
