"""KV-cache pruning (Mustafar) on SmolLM2-135M at long context: quality, bytes and decode speed.

    python benchmarks/bench_kv.py --part quality                                 # ppl + needle
    python benchmarks/bench_kv.py --part bytes                                   # seconds
    flock /tmp/sparsecraft-heavy.lock python benchmarks/bench_kv.py --part speed # tokens/s

Every part writes its own section of docs/results/kv.md (with its command).

quality: perplexity of ``--n-eval`` Shakespeare evaluation windows of ``--seq-len`` tokens (the
protocol's evaluation pool) scored in one forward through ``SparseKVCache(s, --window,
model=model)`` for each ``--sparsities`` value -- the exact per-token rule, every vector pruned as
soon as it leaves the window -- and exact-match accuracy on needle-in-a-haystack prompts of
``--seq-len`` tokens built from the plays (``--tasks`` at ``--depths``, ``--per-depth`` each;
sparsecraft.data.long_context), answered greedily through the same cache.
bytes: ``cache.nbytes()`` of real caches holding ``--seq-len`` tokens of SmolLM2's 30 layers x 3
KV heads x 64 (filled by one prefill, and by a half prefill + one-token decode steps, which adds
the capacity slack) against the format's bound and dense fp16/fp32 caches.
speed: greedy-free decode (the next ``--decode-tokens`` tokens of the text fed one at a time)
after a ``--seq-len``-token prefill, dense DynamicCache (SDPA) vs SparseKVCache (C++ kernel), each
round starting from a copy of the prefilled cache; median seconds per token over ``--rounds``.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _env import environment, load, load_line
from _sections import write_section

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results" / "kv.md"
TITLE = "KV-cache pruning (Mustafar) on SmolLM2-135M"


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def command() -> str:
    import shlex
    import sys

    return shlex.join(["python", "benchmarks/bench_kv.py", *sys.argv[1:]])


@torch.no_grad()
def window_nll(model, ids: torch.Tensor, cache) -> tuple[float, int]:
    logits = model(ids.view(1, -1), cache=cache, use_cache=True).logits[0, :-1].float()
    return float(F.cross_entropy(logits, ids[1:], reduction="sum")), ids.numel() - 1


def quality(args, model, tok) -> str:
    from sparsecraft.data.long_context import make_tasks
    from sparsecraft.data.text import build_protocol
    from sparsecraft.evaluation.long_context import accuracy
    from sparsecraft.kv import SparseKVCache

    windows = build_protocol(tok, "shakespeare", n_calib=0, n_eval=args.n_eval, seq_len=args.seq_len).eval
    samples = make_tasks(tok, args.tasks.split(","), args.seq_len, floats(args.depths), args.per_depth)
    rows = []
    with torch.no_grad():
        model.set_attn_implementation("sdpa")
        dense_nll = sum(window_nll(model, w, None)[0] for w in windows)
    n_tok = windows.shape[0] * (windows.shape[1] - 1)
    ppl_dense = math.exp(dense_nll / n_tok)
    for s in floats(args.sparsities):
        t0 = time.perf_counter()
        nll = sum(window_nll(model, w, SparseKVCache(s, args.window, model=model))[0] for w in windows)
        res = accuracy(model, tok, samples, make_cache=lambda s=s: SparseKVCache(s, args.window, model=model))
        per_depth = " / ".join(f"{v:.2f}" for v in res["depths"].values())
        row = (f"| {s:.0%} | {math.exp(nll / n_tok):.3f} | {math.exp(nll / n_tok) / ppl_dense - 1:+.2%} | "
               f"{res['accuracy']:.2f} ({round(res['accuracy'] * len(samples))}/{len(samples)}) | {per_depth} | "
               f"{time.perf_counter() - t0:.0f} s |")
        print(row, flush=True)
        rows.append(row)
    depths = ", ".join(f"{d:g}" for d in floats(args.depths))
    return "\n".join([
        "## Quality: perplexity and needle retrieval", "",
        f"Command: `{command()}`  ", environment(args.threads) + "  ", "",
        f"Perplexity: {windows.shape[0]} Shakespeare evaluation window(s) of {args.seq_len} tokens, each scored in "
        f"one forward through `SparseKVCache(s, window={args.window}, model=model)`: query t sees key/value j "
        f"dense when t - j < {args.window}, else pruned to floor(s * 64) zeros -- exactly what feeding the "
        f"tokens one at a time gives (tests/kv/test_cache.py checks this against a per-token reference). "
        f"Dense SDPA perplexity: {ppl_dense:.3f}. Needle: {len(samples)} prompts of {args.seq_len} tokens "
        f"(tasks {args.tasks}, depths {depths}, {args.per_depth} per depth; a planted line `The magic number "
        f"for <key> is <5 digits>.`, the question at the end), greedy answer through the same cache, exact match.",
        "",
        "| KV sparsity | perplexity | vs dense | needle exact match | by depth | time |",
        "|---|---|---|---|---|---|",
        *rows,
    ])


def fill(cache, layers: int, heads: int, dim: int, prefill: int, decode: int) -> None:
    g = torch.Generator().manual_seed(0)
    for li in range(layers):
        for n in [prefill] + [1] * decode:
            k, v = torch.randn(2, 1, heads, n, dim, generator=g)
            cache.update(k, v, li)


def bytes_part(args, model) -> str:
    from sparsecraft.kv import SparseKVCache, format_bound_bytes
    from sparsecraft.kv.tiles import dense_cache_bytes

    cfg = model.config
    layers, heads, dim = cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim
    rows = []
    for s in floats(args.sparsities):
        for dtype, size in ((torch.float16, 2), (torch.float32, 4)):
            for pre in (args.seq_len,) if s != args.growth_sparsity else (args.seq_len, args.seq_len // 2):
                cache = SparseKVCache(s, args.window, model=model, dtype=dtype)
                fill(cache, layers, heads, dim, pre, args.seq_len - pre)
                held, bound = cache.nbytes(), format_bound_bytes(args.seq_len, args.window, heads, dim, s, size, layers)
                d16, d32 = (dense_cache_bytes(args.seq_len, heads, dim, b, layers) for b in (2, 4))
                how = "prefill" if pre == args.seq_len else f"prefill {pre} + {args.seq_len - pre} decode steps"
                rows.append(f"| {s:.0%} | {str(dtype).split('.')[-1]} | {how} | {held / 2**20:.2f} MiB | "
                            f"{held / bound - 1:+.2%} | {held / d16:.1%} | {held / d32:.1%} |")
    return "\n".join([
        "## Bytes held", "",
        f"Command: `{command()}`  ", environment(args.threads) + "  ", "",
        f"`cache.nbytes()` of SparseKVCache objects holding {args.seq_len} tokens in each of SmolLM2-135M's "
        f"{layers} layers ({heads} KV heads x {dim}, batch 1, window {args.window}; K and V), filled by the same "
        "`update` calls the model makes (the values do not change the size). The format's bound: the dense "
        "window plus, per pruned vector, one 8-byte bitmap and its kept values (no offsets: the kept count is "
        "fixed). After a prefill the store is allocated exactly; one-token decode steps grow it by "
        f"max(8 tokens, 1/64), the slack shown. Dense caches: {args.seq_len} x {heads} x {dim} x K,V x {layers}.",
        "",
        "| KV sparsity | storage | filled by | bytes held | vs format bound | vs dense fp16 | vs dense fp32 |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ])


@torch.no_grad()
def speed(args, model, tok) -> str:
    from transformers import DynamicCache

    from sparsecraft.data.text import build_protocol
    from sparsecraft.kv import SparseKVCache

    n = args.decode_tokens
    ids = build_protocol(tok, "shakespeare", n_calib=0, n_eval=1, seq_len=args.seq_len + n).eval[0]
    prompt, forced = ids[: args.seq_len], ids[args.seq_len :]
    kinds = {"dense DynamicCache (SDPA)": lambda: DynamicCache(config=model.config)}
    for s in floats(args.speed_sparsities):
        kinds[f"SparseKVCache s={s:g} (C++ kernel)"] = lambda s=s: SparseKVCache(s, args.window, model=model,
                                                                                 kernel="cpp")
    model.set_attn_implementation("sdpa")
    snaps, prefill_s = {}, {}
    for name, make in kinds.items():
        cache = make()  # the sparse cache switches the attention to sparsecraft_kv (SDPA for DynamicCache)
        t0 = time.perf_counter()
        model(prompt.view(1, -1), cache=cache, use_cache=True)
        prefill_s[name] = time.perf_counter() - t0
        snaps[name] = cache
    per_tok: dict[str, list[float]] = {k: [] for k in kinds}
    names = list(kinds)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            cache = copy.deepcopy(snaps[name])
            model(forced[:1].view(1, 1), cache=cache)  # warm-up step
            t0 = time.perf_counter()
            for t in forced[1:]:
                model(t.view(1, 1), cache=cache)
            per_tok[name].append((time.perf_counter() - t0) / (n - 1))
    base = statistics.median(per_tok[names[0]])
    rows = []
    for name in names:
        med = statistics.median(per_tok[name])
        rows.append(f"| {name} | {snaps[name].get_seq_length()} | {1 / med:.2f} | {med * 1000:.1f} ms | "
                    f"{base / med:.2f}x | {prefill_s[name]:.1f} s |")
        print(rows[-1], flush=True)
    return "\n".join([
        "## Decode speed at long context", "",
        f"Command: `{command()}`  ", environment(args.threads) + "  ", "",
        f"Batch 1, float32, {args.threads} threads. Each cache is prefilled once with {args.seq_len} Shakespeare "
        f"tokens; every round deep-copies it and feeds the next {n} tokens of the text one at a time (one untimed "
        f"warm-up step, {n - 1} timed), caches interleaved, median over {args.rounds} rounds. The dense cache "
        "grows by `torch.cat` (transformers' DynamicCache) and runs SDPA; the sparse cache runs the "
        "`sparsecraft_kv` attention, i.e. the C++ `kv_decode_attention` over the bitmaps + packed values + window.",
        "",
        "| cache | tokens held at start | tokens/s | per token | speed-up vs dense | prefill |",
        "|---|---|---|---|---|---|",
        *rows,
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["quality", "bytes", "speed", "all"], default="all")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--sparsities", default="0,0.5,0.7,0.9")
    ap.add_argument("--speed-sparsities", default="0.7")
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--growth-sparsity", type=float, default=0.7, help="bytes: also filled by decode steps")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--n-eval", type=int, default=1, help="perplexity windows (full protocol: 4)")
    ap.add_argument("--tasks", default="needle")
    ap.add_argument("--depths", default="0.1,0.5,0.9", help="full protocol: 0.05,0.25,0.5,0.75,0.95")
    ap.add_argument("--per-depth", type=int, default=1)
    ap.add_argument("--decode-tokens", type=int, default=17)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from sparsecraft.models.loader import load_model

    lm = load_model(args.model)
    parts = ["quality", "bytes", "speed"] if args.part == "all" else [args.part]
    for part in parts:
        load0 = load()
        body = {"quality": lambda: quality(args, lm.model, lm.tokenizer), "bytes": lambda: bytes_part(args, lm.model),
                "speed": lambda: speed(args, lm.model, lm.tokenizer)}[part]()
        body += "\n\n" + load_line(load0, load())
        print(body)
        if not args.no_write:
            write_section(OUT, f"kv-{part}", body, TITLE)


if __name__ == "__main__":
    main()
