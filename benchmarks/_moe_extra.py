"""Parts ``speed`` and ``expert-pruning`` of benchmarks/bench_moe.py (see its docstring)."""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import _env
import torch
from _sections import write_section

#: (d_model, experts, expert width, top-k): the dense reference is a SwiGLU of width k x expert width
SPEED_CONFIGS = [(512, 8, 512, 1), (512, 16, 256, 2), (512, 32, 128, 4), (512, 64, 128, 1), (256, 32, 64, 1),
                 (128, 8, 256, 1), (128, 16, 128, 2)]  # the last two: the layers of the training grid
TOKENS = 4096


def run_speed(args: argparse.Namespace, results: Path, title: str, models: list[tuple[str, dict[str, Any]]]) -> None:
    from sparsecraft.kernels.timing import block_median, time_blocks
    from sparsecraft.moe import MoEFFN, SwiGLU

    start = _env.load()
    lines = ["## 4. Speed: MoE layer vs dense FFN with the same active parameters", "",
             f"Command: `{_env.command('bench_moe.py')}`  ", _env.environment(args.threads) + "  ", "",
             f"Forward + backward of one layer on {TOKENS} tokens (input gradient, weight gradients from None as in a "
             "training step, the router's f.p loss included; router at initialisation, so the load is near "
             "uniform), median over blocks of calls, both callables timed side by side in one process. "
             "Goal: MoE / dense <= 1.5.", "",
             "| d_model | experts x width, top-k | dense width | MoE (ms) | dense (ms) | MoE / dense | goal met |",
             "|---|---|---|---|---|---|---|"]
    for d, e, w, k in SPEED_CONFIGS:
        torch.manual_seed(0)
        x = torch.randn(TOKENS, d, requires_grad=True, device=args.device)
        moe = MoEFFN(d, e, w, top_k=k, aux_loss_coef=0.01).to(args.device)
        dense = SwiGLU(d, k * w).to(args.device)

        def run_moe(moe: MoEFFN = moe, x: torch.Tensor = x) -> None:
            moe.zero_grad(set_to_none=True)  # as a training step does (no accumulation into old gradients)
            x.grad = None
            y = moe(x)
            (y.sum() + moe.router.aux_loss).backward()
            _sync(args)

        def run_dense(dense: SwiGLU = dense, x: torch.Tensor = x) -> None:
            dense.zero_grad(set_to_none=True)
            x.grad = None
            dense(x).sum().backward()
            _sync(args)

        blocks = time_blocks({"moe": run_moe, "dense": run_dense}, rounds=6, block=5, warmup=2, pause_s=0.2)
        m, dn = block_median(blocks["moe"]), block_median(blocks["dense"])
        lines.append(f"| {d} | {e} x {w}, top-{k} | {k * w} | {1e3 * m:.1f} | {1e3 * dn:.1f} | {m / dn:.2f} | "
                     f"{'yes' if m / dn <= 1.5 else 'no'} |")
        print(lines[-1], flush=True)
    lines += model_speed(args, models)
    lines.insert(4, _env.load_line(start, _env.load()) + "  ")
    write_section(results, "speed", "\n".join(lines), title)


def model_speed(args: argparse.Namespace, models: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Training-step tokens/s of the parts' whole models, timed side by side in one process (the
    training tables' tokens/s come from runs at different machine loads and cannot rank them)."""
    from sparsecraft.kernels.timing import block_median, time_blocks
    from sparsecraft.moe import SparseLM, SparseLMConfig, aux_loss

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (args.batch_size, args.seq_len + 1), generator=gen).to(args.device)
    calls = {}
    for name, cfg in models:
        torch.manual_seed(0)
        model = SparseLM(SparseLMConfig(vocab_size=256, max_seq_len=args.seq_len, **cfg)).to(args.device).train()

        def step(model: SparseLM = model) -> None:
            model.zero_grad(set_to_none=True)
            out = model(input_ids=ids[:, :-1], labels=ids[:, 1:])
            (out.loss + aux_loss(model)).backward()
            _sync(args)

        calls[name] = step
    blocks = time_blocks(calls, rounds=7, block=5, warmup=1, pause_s=0.2)
    tokens = args.batch_size * args.seq_len
    ref = block_median(blocks[models[0][0]])
    out = ["", f"Whole models of parts 1 and 3: one training step (forward, loss + router losses, backward; no "
           f"optimizer) on {args.batch_size} x {args.seq_len} tokens, all models timed side by side in one "
           "process (median of blocks).", "",
           "| model | step (ms) | tokens/s | time / dense |", "|---|---|---|---|"]
    for name, _ in models:
        t = block_median(blocks[name])
        out.append(f"| {name} | {1e3 * t:.1f} | {tokens / t:.0f} | {t / ref:.2f} |")
        print(out[-1], flush=True)
    return out


def _sync(args: argparse.Namespace) -> None:
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()


def run_expert_pruning(args: argparse.Namespace, results: Path, title: str, runs: dict[str, list[dict[str, Any]]]
                       ) -> None:
    import sparsecraft
    from sparsecraft.data.text import calibration_windows
    from sparsecraft.moe import load_lm
    from sparsecraft.moe.expert_pruning import RouterStats, prune_experts, router_statistics
    from sparsecraft.training.causal_lm import evaluate_lm, split_tokens, text_tokens

    name = f"top-2, 8 experts x {args.d_ff // 2} (total x4)"
    seed0 = [r for r in runs.get(name, []) if r["seed"] == 0]
    if not seed0:
        raise SystemExit(f"expert-pruning needs the part dense-vs-moe run {name!r} (seed 0) first")
    path = Path(seed0[0]["run_dir"]) / "model.safetensors"
    tokens, _, _ = text_tokens("shakespeare", args.tokenizer)
    train, val = split_tokens(tokens, 0.1, args.seq_len, args.eval_windows)  # as lm-train splits it
    n = len(val)
    calib = calibration_windows(train, 32, args.seq_len, seed=0)
    base = load_lm(path).eval()
    stats = router_statistics(base, calib)
    dense_loss = evaluate_lm(base, val)
    rows = [("none (trained model)", "-", dense_loss)]
    gen = torch.Generator().manual_seed(0)
    for frac in (0.25, 0.5):
        for crit in ("frequency", "saliency", "random"):
            m = copy.deepcopy(base)
            st = stats if crit != "random" else [
                RouterStats(s.name, s.frequency, torch.rand(s.saliency.shape, generator=gen, dtype=torch.float64))
                for s in stats]
            prune_experts(m, st, fraction=frac, criterion="saliency" if crit == "random" else crit)
            rows.append((f"remove {int(frac * 8)} of 8 experts per layer", crit, evaluate_lm(m, val)))
    for crit, sp, pat in (("magnitude", 0.5, "unstructured"), ("wanda", 0.5, "unstructured"),
                          ("magnitude", 0.0, "2:4"), ("wanda", 0.0, "2:4")):
        m = copy.deepcopy(base)
        sparsecraft.prune(m, sp, criterion=crit, pattern=pat, targets=[r"experts"], calib=calib, progress=False)
        rows.append((f"expert weights {'50%' if pat == 'unstructured' else pat}", crit, evaluate_lm(m, val)))
    lines = ["## 5. Pruning the trained MoE model: experts and expert weights", "",
             f"Command: `{_env.command('bench_moe.py')}`  ", _env.environment(args.threads) + "  ", "",
             f"Model: part 1's `{name}` (seed 0). Router statistics and Wanda norms from 32 calibration windows of "
             f"{args.seq_len} bytes of the training part; validation loss on the {n} validation windows. Removing "
             "experts renormalises the router over the kept ones (exactly the masked model, see docs/moe.md); "
             "`random` removes the same number of experts at random.", "",
             "| pruning | criterion | val loss | change |", "|---|---|---|---|"]
    for what, crit, loss in rows:
        lines.append(f"| {what} | {crit} | {loss:.4f} | {loss - dense_loss:+.4f} |")
    print("\n".join(lines[-len(rows):]), flush=True)
    write_section(results, "expert-pruning", "\n".join(lines), title)
