"""Dense vs gated attention: small Llamas trained from scratch on Shakespeare (bytes), 3 seeds.

    python benchmarks/bench_gated_attention.py                         # CPU size, minutes
    python benchmarks/bench_gated_attention.py --size large --device cuda   # the GPU script

Every variant (``--gates``: none = dense, headwise, elementwise) and seed trains the same
``sparsecraft.attention.gated.small_llama`` config (same base init per seed: the gate weights are
added on top) on the same batches for the same number of steps, on the library's one training loop
as the ``lm-train`` job runs it (``sparsecraft.training.causal_lm.train_lm``: AdamW, warmup + cosine,
gradient clipping; the batches are pure functions of (seed, step)). Reported per variant (mean +- std
over seeds): final validation loss on the first ``eval_windows`` non-overlapping ``seq_len`` windows of
the held-out 10% (``split_tokens``, as ``lm-train`` splits a text), the largest |activation| of the
residual stream (outputs of every block, validation batch), the attention-sink mass (mean attention
probability on the first token, over layers, heads and query positions 1..L-1; eager attention) and
the mean gate value. ``--steps 5 --seeds 0 --no-write`` is a quick check that it runs. Writes the "gated-attention"
section of docs/results/attention.md (with ``--device cuda``: of docs/results/attention_cuda.md).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from _env import environment, load, load_line
from _sections import write_section

ROOT = Path(__file__).resolve().parents[1]
SIZES = {
    "small": dict(model=dict(hidden_size=64, layers=4, heads=4, intermediate_size=256),
                  train=dict(steps=300, batch_size=16, seq_len=64, lr=3e-3, warmup_steps=30), eval_every=100,
                  eval_windows=64),
    "large": dict(model=dict(hidden_size=512, layers=8, heads=8, intermediate_size=1536),
                  train=dict(steps=5000, batch_size=32, seq_len=512, lr=1e-3, warmup_steps=250), eval_every=500,
                  eval_windows=256),
}


@torch.no_grad()
def probe(model, val: torch.Tensor, n: int = 8) -> dict[str, float]:
    """Max |residual activation|, attention mass on token 0 and the mean gate on the first ``n``
    validation windows (rows of ``val``)."""
    device = next(model.parameters()).device
    wins = val[:n].to(device)
    impl = model.config._attn_implementation
    model.set_attn_implementation("eager")
    peaks: list[float] = []
    hooks = [b.register_forward_hook(lambda m, a, o: peaks.append(float((o[0] if isinstance(o, tuple) else o)
                                                                          .abs().max())))
             for b in model.model.layers]
    try:
        out = model(wins, output_attentions=True)
    finally:
        model.set_attn_implementation(impl)
        for h in hooks:
            h.remove()
    max_act = max(peaks)
    sink = statistics.mean(float(a[:, :, 1:, 0].mean()) for a in out.attentions)
    gates = [m.last_gate for m in model.modules() if getattr(m, "last_gate", None) is not None]
    gate = statistics.mean(float(g.mean()) for g in gates) if gates else float("nan")
    return {"max_act": max_act, "sink": sink, "gate": gate}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--gates", default="none,headwise,elementwise")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=None, help="override the size's step count")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from sparsecraft.attention.gated import small_llama
    from sparsecraft.training.causal_lm import (
        LMTrainSettings,
        evaluate_lm,
        make_lm_optimizer,
        split_tokens,
        text_tokens,
        train_lm,
    )

    size = SIZES[args.size]
    train_kw = dict(size["train"])
    if args.steps:
        train_kw["steps"] = args.steps
    tokens, vocab, _ = text_tokens("shakespeare", "byte")
    train, val = split_tokens(tokens, 0.1, train_kw["seq_len"], size["eval_windows"])
    load0 = load()
    results: dict[str, list[dict[str, float]]] = {}
    for gate in args.gates.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            model = small_llama(vocab, gate=None if gate == "none" else gate, seed=seed, max_positions=1024,
                                **size["model"]).to(args.device)
            s = LMTrainSettings(seed=seed, **train_kw)
            t0 = time.perf_counter()
            run = train_lm(model, make_lm_optimizer(model, s), train, s, eval_every=size["eval_every"],
                           evaluate=lambda step, m=model: {"val_loss": evaluate_lm(m, val)})
            row = {"val_loss": run.curves[-1]["val_loss"], "seconds": time.perf_counter() - t0,
                   **probe(model.eval(), val)}
            results.setdefault(gate, []).append(row)
            print(gate, seed, {k: round(v, 4) for k, v in row.items()}, flush=True)
    params = {g: sum(p.numel() for p in small_llama(vocab, gate=None if g == "none" else g,
                                                    **size["model"]).parameters()) for g in results}

    def ms(xs: list[float], fmt: str) -> str:
        return (f"{statistics.mean(xs):{fmt}} +- {statistics.stdev(xs):{fmt}}" if len(xs) > 1
                else f"{xs[0]:{fmt}}")

    rows = []
    for gate, rs in results.items():
        col = lambda k, rs=rs: [r[k] for r in rs]  # noqa: E731
        rows.append(f"| {gate} | {params[gate]:,} | {ms(col('val_loss'), '.4f')} | {ms(col('max_act'), '.1f')} | "
                    f"{ms(col('sink'), '.3f')} | {ms(col('gate'), '.3f') if gate != 'none' else '-'} | "
                    f"{statistics.mean(col('seconds')):.0f} s |")
    tk = train_kw
    body = "\n".join([
        f"## Gated attention: dense vs gated small Llamas ({args.size}, {args.device})", "",
        f"Command: `python benchmarks/bench_gated_attention.py {' '.join(__import__('sys').argv[1:])}`  ",
        environment(args.threads) + "  ", "",
        f"Model: `small_llama` {size['model']} (byte vocabulary 256, tied embeddings), trained from scratch on "
        f"the Shakespeare plays (UTF-8 bytes, first 90%) for {tk['steps']} AdamW steps of {tk['batch_size']} x "
        f"{tk['seq_len']} tokens ({tk['steps'] * tk['batch_size'] * tk['seq_len']:,} tokens; lr {tk['lr']}, "
        f"warmup {tk['warmup_steps']}, cosine to 10%, wd 0.1, clip 1.0; the `lm-train` loop), seeds {args.seeds} "
        f"(same batches and base init per seed for every variant). Validation: the first {len(val)} windows of "
        f"{tk['seq_len']} bytes of the last 10%. Gates: sigmoid(x W_g) on the "
        "SDPA output, x = the block's RMSNorm output; headwise = one gate per head, elementwise = one per channel.",
        "",
        "| attention | parameters | validation loss (nats/byte) | max residual activation | "
        "attention-sink mass (token 0) | mean gate | train time |",
        "|---|---|---|---|---|---|---|",
        *rows, "", load_line(load0, load()),
    ])
    print(body)
    if not args.no_write:
        out = ROOT / "docs" / "results" / ("attention.md" if args.device == "cpu" else "attention_cuda.md")
        write_section(out, "gated-attention", body, "Attention sparsity")


if __name__ == "__main__":
    main()
