"""Experts and memory on a small byte-level LM trained on Shakespeare (job ``lm-train``), CPU-sized
by default. Five parts, each a section of docs/results/moe.md (every finished run is also appended
to docs/results/moe_runs.jsonl, so a killed part keeps what it finished; ``--render`` rebuilds
the sections from it):

* ``dense-vs-moe``: dense SwiGLU vs MoE at equal *active* parameters, total FFN parameters x 2, 4, 8
  (top-1: 2/4/8 experts of the dense width; top-2: 4/8/16 experts of half the width), validation
  loss, tokens/s, load CV per layer (the optimal-sparsity paper's memorisation axis);
* ``balance``: top-1 of 16 experts with the plain f.p loss, with progressive sparsification
  (Sigma-MoE-Tiny: layers 0 and 1 start at top-4 / top-2, top-1 from 40% of training) and with
  auxiliary-loss-free bias balancing: per-layer load CV and max/mean load;
* ``memory``: dense vs Engram (layer 1) vs STEM (every layer) at equal active FLOPs per token (the
  FFN width of Engram's and STEM's models is solved so their FLOPs match the dense model's);
* ``speed``: one MoE layer forward + backward at 4096 tokens vs a dense SwiGLU with the same active
  parameters, side by side in one process (median of blocks, :mod:`sparsecraft.kernels.timing`);
  goal: at most 1.5x; then one training step of the whole models of parts 1 and 3 (dense, top-1 x8,
  top-2 x8, Engram, STEM), timed side by side (the training tables' tokens/s come from runs at
  different machine loads). Run it under the heavy lock;
* ``expert-pruning``: the top-2 / 8-expert model of part 1 (seed 0): remove 25% / 50% of the experts
  by frequency or saliency, and Wanda 50% / 2:4 on the expert weights: validation loss before/after.

    python benchmarks/bench_moe.py --parts dense-vs-moe balance memory expert-pruning
    flock /tmp/sparsecraft-heavy.lock python benchmarks/bench_moe.py --parts speed
    python benchmarks/bench_moe.py --device cuda --d-model 512 --layers 8 --seq-len 256 --steps 3000 ...

``--device cuda`` runs the same protocol on a GPU (benchmarks/moe_gpu.sh is the prepared script for
the bigger grid); CPU defaults: d_model 128, 4 layers, 4 heads, dense FFN 256, seq 64, batch 16,
300 steps, AdamW lr 3e-3 (warmup 30, cosine to 10%), wd 0.1, clip 1, seeds 0 1 2.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "src"))

import _env  # noqa: E402
from _sections import write_section  # noqa: E402

from sparsecraft.jobs.recipe import run_recipe  # noqa: E402

DEFAULT_STEPS = 300
PARTS = ("dense-vs-moe", "balance", "memory", "speed", "expert-pruning")
RESULTS = ROOT / "docs/results/moe.md"
RUNS = ROOT / "docs/results/moe_runs.jsonl"
TITLE = "Experts and memory: MoE, progressive sparsification, Engram, STEM (benchmarks/bench_moe.py)"


def base(args: argparse.Namespace, **model: Any) -> dict[str, Any]:
    m = {"d_model": args.d_model, "n_layers": args.layers, "n_heads": args.heads, "d_ff": args.d_ff, **model}
    return {"job": "lm-train", "data": {"source": "shakespeare", "tokenizer": args.tokenizer}, "model": m,
            "steps": args.steps, "batch_size": args.batch_size, "seq_len": args.seq_len,
            "optimizer": {"lr": args.lr, "warmup_steps": max(1, args.steps // 10)},
            "eval": {"every": max(1, args.steps // 5), "windows": args.eval_windows}, "device": args.device,
            "threads": args.threads, "progress": False}  # fmt: skip


def moe(args: argparse.Namespace, experts: int, width: int, k: int, **extra: Any) -> dict[str, Any]:
    opts = {"n_experts": experts, "expert_dim": width, "top_k": k, "aux_loss_coef": 0.01, "z_loss_coef": 0.001}
    return {"ffn": "moe", "moe": {**opts, **extra}}


def grid(args: argparse.Namespace, part: str) -> list[tuple[str, dict[str, Any]]]:
    d = args.d_ff
    if part == "dense-vs-moe":
        out = [("dense", base(args))]
        for mult in (2, 4, 8):
            out.append((f"top-1, {mult} experts x {d} (total x{mult})", base(args, **moe(args, mult, d, 1))))
        for mult in (2, 4, 8):
            out.append((f"top-2, {2 * mult} experts x {d // 2} (total x{mult})",
                        base(args, **moe(args, 2 * mult, d // 2, 2))))
        return out
    if part == "balance":
        n, switch = 16, int(0.4 * args.steps)
        prog = base(args, **moe(args, n, d, 1))
        prog["top_k_schedule"] = {"layers": {"0": [[0, 4], [switch, 1]], "1": [[0, 2], [switch, 1]], "default": 1}}
        return [("plain f.p loss 0.01", base(args, **moe(args, n, d, 1))),
                ("progressive sparsification + f.p loss", prog),
                ("aux-loss-free bias (rate 1e-3), no f.p loss",
                 base(args, **moe(args, n, d, 1, aux_loss_coef=0.0, bias_update_rate=1e-3)))]
    if part == "memory":
        engram = {"layers": [1], "table_size": args.engram_table, "embed_dim": 64, "heads": 4}
        return [("dense", base(args)), ("engram (layer 1)", base(args, d_ff=_match_flops(args, engram=engram),
                                                                  engram=engram)),
                ("stem (every layer)", base(args, ffn="stem", d_ff=_match_flops(args, ffn="stem")))]
    raise ValueError(part)


def _flops(args: argparse.Namespace, d_ff: int, **model: Any) -> float:
    from sparsecraft.moe import SparseLM, SparseLMConfig
    from sparsecraft.training.causal_lm import count_parameters

    cfg = SparseLMConfig(vocab_size=256, d_model=args.d_model, n_layers=args.layers, n_heads=args.heads,
                         d_ff=d_ff, max_seq_len=args.seq_len, **model)
    return count_parameters(SparseLM(cfg), args.seq_len)["flops_per_token"]


def _match_flops(args: argparse.Namespace, **model: Any) -> int:
    """The FFN width (a multiple of 8) whose model has the dense model's FLOPs per token (FLOPs are
    linear in the width: solved from two widths)."""
    target = _flops(args, args.d_ff)
    a, b = args.d_ff, 2 * args.d_ff
    fa, fb = _flops(args, a, **model), _flops(args, b, **model)
    return max(8, int(round((a + (target - fa) * (b - a) / (fb - fa)) / 8)) * 8)


def train(args: argparse.Namespace, part: str, name: str, recipe: dict[str, Any], seed: int) -> dict[str, Any]:
    recipe = {**recipe, "seed": seed}
    out = Path(args.work) / f"{part}-{abs(hash((name, seed))) % 10**8}-{time.time_ns()}"
    t0, load0 = time.perf_counter(), _env.load()
    _, rep = run_recipe(recipe, out)
    f = rep["final"]
    row = {"part": part, "config": name, "seed": seed, "steps": args.steps, "d_model": args.d_model,
           "device": args.device, "val_loss": f["val_loss"], "train_loss": f["train_loss"],
           "tokens_per_s": f["tokens_per_s"], "params": f["params"], "active_params": f["active_params"],
           "flops_per_token": f["flops_per_token"], "load_cv": [ld["cv"] for ld in f["expert_load"]],
           "max_load": [ld["max_load"] for ld in f["expert_load"]], "dead": [ld["dead"] for ld in f["expert_load"]],
           "cv_curve": [c["load_cv"] for c in rep["curves"]], "run_dir": str(out),
           "wall_s": round(time.perf_counter() - t0, 1), "command": _env.command("bench_moe.py"),
           "date": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M}", "load": [load0, _env.load()]}  # fmt: skip
    RUNS.parent.mkdir(parents=True, exist_ok=True)
    with RUNS.open("a") as fh:
        fh.write(json.dumps(row) + "\n")
    print(f"[{part}] {name} seed {seed}: val {row['val_loss']:.4f}, {row['tokens_per_s']:.0f} tok/s, "
          f"CV {[round(c, 2) for c in row['load_cv']]} ({row['wall_s']} s)", flush=True)
    return row


def mean_sd(xs: list[float]) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.4f}"
    return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}"


def rows_of(part: str, args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    by: dict[str, list[dict[str, Any]]] = {}
    if not RUNS.is_file():
        return by
    latest: dict[tuple, dict[str, Any]] = {}
    for line in RUNS.read_text().splitlines():
        r = json.loads(line)
        same = (r["steps"], r["d_model"], r["device"]) == (args.steps, args.d_model, args.device)
        if r["part"] == part and same:
            latest[(r["config"], r["seed"])] = r
    for (name, _), r in latest.items():
        by.setdefault(name, []).append(r)
    return by


def runs_line(rows: list[dict[str, Any]]) -> str:
    """When the rows' runs ran and under what machine load (rows written before the JSON lines
    carried ``date`` / ``load`` are counted, not guessed)."""
    dated = [r for r in rows if "date" in r]
    text = ""
    if dated:
        loads = [x for r in dated for x in r["load"]]
        text = (f"Runs: {min(r['date'] for r in dated)} to {max(r['date'] for r in dated)} UTC; 1-min load average "
                f"{min(loads):.1f} to {max(loads):.1f} during them (2 shared cores: tokens/s is noisy). ")
    if len(dated) < len(rows):
        text += f"{len(rows) - len(dated)} of the {len(rows)} runs predate the date/load fields of moe_runs.jsonl."
    return text.strip()


def render_training(part: str, args: argparse.Namespace, heading: str, note: str) -> None:
    by = rows_of(part, args)
    if not by:
        return
    longer = args.steps != DEFAULT_STEPS  # a longer (or shorter) run gets its own section
    if longer:
        heading += f" ({args.steps} steps)"
    commands = list(dict.fromkeys(r["command"] for rs in by.values() for r in rs))  # every run's, in order
    rows = [r for rs in by.values() for r in rs]
    lines = [f"## {heading}", "", *(f"Command: `{c}`  " for c in commands),
             _env.environment(args.threads).replace("Date:", "Table written:") + "  ", runs_line(rows), "",
             "Each row: the latest run of every config and seed in moe_runs.jsonl.", "", note, "",
             "| config | params (total / active) | FLOPs/token | val loss (mean ± sd) | train loss | tokens/s | "
             "load CV per layer (mean of seeds) | max/mean load per layer (mean of seeds) | "
             "dead experts per layer (sum of seeds) | seeds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, rs in by.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        r0 = rs[0]
        cv = ", ".join(f"{statistics.mean(c):.2f}" for c in zip(*(r["load_cv"] for r in rs))) or "-"
        mx = ", ".join(f"{statistics.mean(c):.2f}" for c in zip(*(r["max_load"] for r in rs))) or "-"
        dead = ", ".join(str(sum(c)) for c in zip(*(r["dead"] for r in rs))) or "-"
        lines.append(f"| {name} | {r0['params']:,} / {r0['active_params']:,} | {r0['flops_per_token'] / 1e6:.2f} M | "
                     f"{mean_sd([r['val_loss'] for r in rs])} | {mean_sd([r['train_loss'] for r in rs])} | "
                     f"{statistics.mean(r['tokens_per_s'] for r in rs):.0f} | {cv} | {mx} | {dead} | "
                     f"{' '.join(str(r['seed']) for r in rs)} |")
    write_section(RESULTS, f"{part}-{args.steps}" if longer else part, "\n".join(lines), TITLE)


NOTES = {
    "dense-vs-moe": "Every MoE model has the dense model's active FFN parameters per token; its total FFN parameters "
                    "are 2, 4 or 8 times as many. Validation: 64 windows of the last 10% of the text (bytes).",
    "balance": "16 experts of the dense width, top-1. Load statistics on the validation tokens at the end of "
               "training (CV = std/mean of the tokens per expert; max/mean = most loaded expert over the mean).",
    "memory": "FLOPs/token = 2 x matmul parameters + attention; table lookups cost no FLOPs. The Engram and STEM "
              "models' FFN width is chosen so their FLOPs/token equal the dense model's.",
}


#: the whole models the speed part times side by side (dense first: the reference)
SPEED_MODELS = ("dense", "top-1, 8 experts", "top-2, 16 experts", "engram", "stem")


HEADINGS = {"dense-vs-moe": "1. Dense vs MoE at equal active parameters",
            "balance": "2. Load balance of top-1 over 16 experts",
            "memory": "3. Dense vs Engram vs STEM at equal active FLOPs"}


def run_training_part(part: str, args: argparse.Namespace) -> None:
    for name, recipe in grid(args, part):
        if args.only and not any(o in name for o in args.only):
            continue
        for seed in args.seeds:
            train(args, part, name, recipe, seed)
            render_training(part, args, HEADINGS[part], NOTES[part])


def main(argv: list[str] | None = None) -> int:
    global RESULTS, RUNS
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", nargs="+", choices=PARTS, default=["dense-vs-moe", "balance", "memory",
                                                                 "expert-pruning"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument("--only", nargs="+", help="run only the configs whose name contains one of these strings")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--d-ff", type=int, default=256)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--eval-windows", type=int, default=64)
    p.add_argument("--engram-table", type=int, default=4099)
    p.add_argument("--tokenizer", default="byte")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default="/tmp/sparsecraft-bench-moe", help="folder for the run folders")
    p.add_argument("--render", action="store_true", help="only rebuild the tables from the JSON lines")
    p.add_argument("--results", default=str(RESULTS), help="markdown results file (default docs/results/moe.md)")
    p.add_argument("--runs", default=str(RUNS), help="JSON lines of the finished runs (default: docs/results/)")
    args = p.parse_args(argv)
    RESULTS, RUNS = Path(args.results), Path(args.runs)
    torch.set_num_threads(args.threads)
    from _moe_extra import run_expert_pruning, run_speed

    for part in args.parts:
        if part == "speed":
            models = {name: recipe["model"] for part in ("dense-vs-moe", "memory") for name, recipe in grid(args, part)
                      if name.startswith(SPEED_MODELS)}  # dense first (the reference), once
            run_speed(args, RESULTS, TITLE, list(models.items()))
        elif part == "expert-pruning":
            run_expert_pruning(args, RESULTS, TITLE, rows_of("dense-vs-moe", args))
        elif args.render:
            render_training(part, args, HEADINGS[part], NOTES[part])
        else:
            run_training_part(part, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
