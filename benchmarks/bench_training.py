"""Sparse training on Fashion-MNIST: MLP 784-300-100-10, SGD m0.9 lr 0.1 cosine, wd 5e-4,
batch 128 (ANCHORS.md protocol). Dense, static-ERK, GMP, SET and RigL at several sparsities
and seeds; mean +- std test accuracy, and step-time overhead vs dense in the same process.

    flock /tmp/sparsecraft-heavy.lock python benchmarks/bench_training.py \
        --epochs 20 --seeds 0,1,2 --sparsities 0.9,0.95,0.98

Results are appended run by run to ``--raw`` (JSON; a restarted script skips finished runs)
and the Markdown table ``--out`` is rewritten after every run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import sparsecraft
from sparsecraft.atomic import write_text
from sparsecraft.data.fashion_mnist import load_fashion_mnist
from sparsecraft.methods import attach
from sparsecraft.models.vision import mlp
from sparsecraft.training.loop import OptimSettings, StepTimes, evaluate, lr_at, make_optimizer, train_epoch

METHOD_CONFIG = {
    "static": {"distribution": "erk"},
    "gmp": {"distribution": "uniform", "every": 100},
    "set": {"distribution": "erk", "update": {"every": 100, "stop": 0.75}, "alpha": 0.3},
    "rigl": {"distribution": "erk", "update": {"every": 100, "stop": 0.75}, "alpha": 0.3},
}


def run_one(method: str, sparsity: float, seed: int, data, epochs: int, batch: int) -> dict:
    x, y, xt, yt = data
    torch.manual_seed(seed)
    model = mlp()
    s = OptimSettings()
    opt = make_optimizer(model, s)
    steps_per_epoch = -(-len(x) // batch)
    total = steps_per_epoch * epochs
    m = None
    if method != "dense":
        m = attach(model, opt, method=method, total_steps=total, sparsity=sparsity, seed=seed, **METHOD_CONFIG[method])
    times = StepTimes()
    step = 0
    t0 = time.perf_counter()
    for epoch in range(epochs):
        _, _, step = train_epoch(
            model, opt, m, x, y, batch_size=batch, seed=seed, epoch=epoch, step0=step,
            lr_fn=lambda t: lr_at(t, total, s.lr), times=times,
        )  # fmt: skip
    wall = time.perf_counter() - t0
    if m is not None:
        m.finalize()
    loss, acc = evaluate(model, xt, yt)
    rep = sparsecraft.report(model)
    return {
        "method": method, "sparsity": sparsity if method != "dense" else 0.0, "seed": seed,
        "epochs": epochs, "test_accuracy": acc, "test_loss": loss, "achieved_sparsity": rep.sparsity,
        "wall_s": wall, "timing": times.summary(), "mask_updates": len(m.dynamics.updates) if m else 0,
    }  # fmt: skip


def interleaved_timing(method: str, sparsity: float, data, steps: int, batch: int) -> dict:
    """Dense and sparse steps alternated on the same batches: robust to a busy machine."""
    x, y, _, _ = data
    torch.manual_seed(0)
    dense, sparse = mlp(), mlp()
    od, os_ = make_optimizer(dense, OptimSettings()), make_optimizer(sparse, OptimSettings())
    every = 50
    cfg = dict(METHOD_CONFIG[method])
    if method in ("set", "rigl"):
        cfg["update"] = {"every": every, "stop": 1.0}
    elif method == "gmp":
        cfg["every"] = every
    attach(sparse, os_, method=method, total_steps=steps * 2, sparsity=sparsity, **cfg)
    td, ts, tu = [], [], []
    for i in range(steps):
        idx = torch.randint(0, len(x), (batch,))
        for model, opt, out in ((dense, od, td), (sparse, os_, ts)):
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            dt_ = time.perf_counter() - t0
            if out is ts and (i + 1) % every == 0:
                tu.append(dt_)
            elif i >= 10:
                out.append(dt_)
    med = statistics.median
    return {
        "plain_ratio": med(ts) / med(td),
        "update_step_ratio": (med(tu) / med(td)) if tu else None,
        "run_ratio_deltaT100": (med(ts) * 99 + (med(tu) if tu else med(ts))) / 100 / med(td),
    }


def fmt(vals: list[float]) -> str:
    if not vals:
        return ""
    m = 100 * statistics.mean(vals)
    sd = 100 * statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{m:.2f} +- {sd:.2f} (n={len(vals)})"


def goal_lines(runs: list[dict], raw: dict) -> list[str]:
    """Check the issue's goals on the numbers above (means over the seeds finished)."""

    def mean(meth: str, s: float) -> float | None:
        v = [r["test_accuracy"] for r in runs if r["method"] == meth and r["sparsity"] == s]
        return statistics.mean(v) if v else None

    out = []
    for s in (0.95, 0.98):
        r, se, st = mean("rigl", s), mean("set", s), mean("static", s)
        if None in (r, se, st):
            out.append(f"- rigl >= set >= static at {100 * s:g}%: not measured (runs missing)")
            continue
        ok = r >= se >= st
        out.append(f"- rigl >= set >= static at {100 * s:g}%: {'met' if ok else 'MISSED'} "
                   f"(rigl {100 * r:.2f}, set {100 * se:.2f}, static {100 * st:.2f})")  # fmt: skip
    plain = [v["plain_ratio"] for v in raw.get("timing", {}).values()]
    if plain:
        verdict = "met" if max(plain) <= 1.10 else "MISSED"
        out.append(f"- step-time overhead <= 1.10x on steps without a mask update (interleaved): "
                   f"{verdict} (worst {max(plain):.2f}x, best {min(plain):.2f}x)")  # fmt: skip
    return out


def write_markdown(path: Path, raw: dict, cmd: str) -> None:
    runs = raw["runs"]
    sps = sorted({r["sparsity"] for r in runs if r["method"] != "dense"})
    lines = [
        "# Sparse training on Fashion-MNIST (MLP 784-300-100-10)",
        "",
        f"Produced by `{cmd}` on {raw['date']} (CPU, {raw['threads']} threads, shared machine).",
        f"Protocol: {raw['epochs']} epochs, SGD momentum 0.9, lr 0.1 cosine, wd 5e-4, batch 128; "
        "static = random ERK mask; gmp = cubic schedule 0 -> 75% of training, uniform, every 100 steps; "
        "set/rigl = random ERK init, DeltaT = 100, alpha = 0.3 cosine, stop at 75%. "
        "Test accuracy (%) mean +- std over seeds (n = number of seeds finished).",
        "",
        *([raw["note"], ""] if raw.get("note") else []),
        "| method | " + " | ".join(f"{100 * s:g}%" for s in sps) + " |",
        "|---|" + "---|" * len(sps),
    ]
    dense = [r["test_accuracy"] for r in runs if r["method"] == "dense"]
    lines.append("| dense | " + " | ".join(fmt(dense) for _ in sps) + " |")
    for meth in ("static", "gmp", "set", "rigl"):
        cells = [fmt([r["test_accuracy"] for r in runs if r["method"] == meth and r["sparsity"] == s]) for s in sps]
        lines.append(f"| {meth} | " + " | ".join(cells) + " |")
    lines += ["", "## Step time relative to dense", "",
              "Whole-run ratios: mean (or median over steps without an update) step time of the run / the "
              "same of the dense run with the same seed (same process, sequential, so load from other "
              "processes on the shared machine adds noise; the mean is sensitive to stalls). "
              "Interleaved ratios: dense and sparse steps alternated on the same batches "
              "(median of steps without a mask update; update steps separately; a run with "
              "one update every 100 steps).", "",
              "| method | sparsity | whole run, mean step | whole run, median step without update | "
              "interleaved, steps without update | interleaved, update step | interleaved, run with DeltaT=100 |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    dense_by_seed = {r["seed"]: r["timing"]["mean_s"] for r in runs if r["method"] == "dense" and r["timing"]["mean_s"]}
    dense_runs = [r for r in runs if r["method"] == "dense" and r["timing"]["mean_s"]]
    dense_med = {r["seed"]: r["timing"]["median_plain_s"] for r in dense_runs}
    for meth in ("static", "gmp", "set", "rigl"):
        for s in sps:
            ratios = [r["timing"]["mean_s"] / dense_by_seed[r["seed"]] for r in runs
                      if r["method"] == meth and r["sparsity"] == s and r["seed"] in dense_by_seed]  # fmt: skip
            it = raw.get("timing", {}).get(f"{meth}@{s}")
            med = [r["timing"]["median_plain_s"] / dense_med[r["seed"]] for r in runs
                   if r["method"] == meth and r["sparsity"] == s and r["seed"] in dense_med]  # fmt: skip
            cells = [f"{statistics.mean(ratios):.2f}x" if ratios else "", f"{statistics.mean(med):.2f}x" if med else ""]
            if it:
                u = it["update_step_ratio"]
                cells += [f"{it['plain_ratio']:.2f}x", f"{u:.2f}x" if u else "", f"{it['run_ratio_deltaT100']:.2f}x"]
            else:
                cells += ["", "", ""]
            lines.append(f"| {meth} | {100 * s:g}% | " + " | ".join(cells) + " |")
    lines += ["", "## Goals", "", *goal_lines(runs, raw)]
    lines += ["", "Raw per-run results: `docs/results/training.json`.", ""]
    write_text(path, "\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--sparsity", "--sparsities", dest="sparsities", default="0.9,0.95,0.98")
    ap.add_argument("--methods", default="dense,static,gmp,set,rigl")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timing-steps", type=int, default=400)
    ap.add_argument("--limit", type=int, default=None, help="first n examples of each split (smoke tests)")
    ap.add_argument("--data", default=None, help="Fashion-MNIST folder")
    ap.add_argument("--out", default="docs/results/training.md")
    ap.add_argument("--raw", default="docs/results/training.json")
    ap.add_argument("--report-only", action="store_true", help="rewrite --out from --raw without training")
    ap.add_argument("--note", default="", help="a line added under the title (e.g. why the grid is reduced)")
    args = ap.parse_args()
    if args.report_only:
        raw = json.loads(Path(args.raw).read_text())
        raw["note"] = args.note or raw.get("note", "")
        argv = [a for a in sys.argv[1:] if a != "--report-only"]
        cut = argv.index("--note") if "--note" in argv else len(argv)
        write_markdown(Path(args.out), raw, "python benchmarks/bench_training.py " + " ".join(argv[:cut]))
        return
    torch.set_num_threads(args.threads)
    cmd = "python benchmarks/bench_training.py " + " ".join(sys.argv[1:])
    x, y, xt, yt = load_fashion_mnist(args.data, flatten=True, limit=args.limit)
    data = (x, y, xt, yt)
    raw_path, out = Path(args.raw), Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    raw = json.loads(raw_path.read_text()) if raw_path.is_file() else {}
    if raw.get("epochs") != args.epochs or raw.get("limit") != args.limit:
        raw = {"runs": [], "timing": {}}
    raw.update(epochs=args.epochs, limit=args.limit, threads=args.threads, date=dt.date.today().isoformat())
    seeds = [int(s) for s in args.seeds.split(",")]
    sps = [float(s) for s in args.sparsities.split(",")]
    methods = args.methods.split(",")

    def save() -> None:
        write_text(raw_path, json.dumps(raw, indent=1))
        write_markdown(out, raw, cmd)

    for meth in [m for m in methods if m != "dense"]:
        for s in sps:
            key = f"{meth}@{s}"
            if key not in raw["timing"]:
                raw["timing"][key] = interleaved_timing(meth, s, data, args.timing_steps, args.batch_size)
                print(key, raw["timing"][key], flush=True)
                save()
    done = {(r["method"], r["sparsity"], r["seed"]) for r in raw["runs"]}
    plan = []  # seed-major, so a stopped run leaves complete seeds
    for seed in seeds:
        plan += [("dense", 0.0, seed)] if "dense" in methods else []
        plan += [(m, s, seed) for s in sps for m in methods if m != "dense"]
    for meth, s, seed in plan:
        if (meth, s, seed) in done:
            continue
        r = run_one(meth, s, seed, data, args.epochs, args.batch_size)
        raw["runs"].append(r)
        print(f"{meth} s={s} seed={seed}: acc {100 * r['test_accuracy']:.2f} sparsity {r['achieved_sparsity']:.4f} "
              f"{r['wall_s']:.0f}s", flush=True)  # fmt: skip
        save()


if __name__ == "__main__":
    main()
