"""N:M sparse training on Fashion-MNIST: dense vs STE, SR-STE and PGF on the small CNN.

Protocol (issue 3): SmallCNN of ``sparsecraft.models.vision`` (first conv kept dense: 9
inputs per filter cannot take N:M), SGD momentum 0.9, lr 0.05 with a per-step cosine decay,
weight decay 5e-4, batch 128, 2:4 and 1:4, test accuracy after ``finalize()`` (the plain
weights are then exactly N:M; the table shows the true sparsity ``sparsecraft.report`` counts
over the N:M layers). ``--epochs``, ``--seeds`` and ``--limit`` shrink the grid for slow
machines; every finished run is appended to a JSON-lines file and the markdown table is
rewritten after each run, so a killed benchmark keeps what it finished.

    python benchmarks/bench_nm_training.py --epochs 20 --seeds 0 1 2
    python benchmarks/bench_nm_training.py --device cuda --timing-steps 0 --jsonl part0.jsonl ...

``--device cuda`` runs the same protocol on a GPU (the table then names the device; the
accuracies are comparable with CPU runs up to run-to-run nondeterminism of cuDNN).
Several processes with disjoint ``--seeds`` / ``--methods`` and their own ``--jsonl`` can
share one GPU; ``--render`` with the concatenated JSON lines rebuilds the table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
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
from sparsecraft.models.vision import DEFAULT_IGNORE, SmallCNN

ROOT = Path(__file__).resolve().parents[1]


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), 1000):
            correct += int((model(x[i : i + 1000]).argmax(1) == y[i : i + 1000]).sum())
    model.train()
    return 100.0 * correct / len(x)


def run_one(method: str, pattern: str, seed: int, data, args) -> dict:  # noqa: ANN001
    xtr, ytr, xte, yte = data
    torch.manual_seed(seed)
    model = SmallCNN().to(args.device)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    steps_per_epoch = math.ceil(len(xtr) / args.batch)
    total = steps_per_epoch * args.epochs
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total)
    sp = None
    if method != "dense":
        cfg: dict = {"pattern": pattern, "total_steps": total, "ignore": DEFAULT_IGNORE["cnn"]}
        if method == "pgf":
            cfg.update(mode="mdgf", decay="linear", rate=args.pgf_rate, dense_steps=0.1,
                       finetune_steps=0.1)
        sp = attach(model, opt, method=method, **cfg)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(args.epochs):
        perm = torch.randperm(len(xtr), generator=gen).to(args.device)
        for i in range(0, len(xtr), args.batch):
            idx = perm[i : i + args.batch]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
            sched.step()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    flips = sad_init = None
    if sp is not None:
        summary = sp.dynamics.summary()
        n_w = sum(t.numel for t in sp.targets)
        flips, sad_init = summary["dropped_total"] / n_w, summary["sad_vs_initial"]
        sp.finalize()
    rep = sparsecraft.report(model)
    nm_layers = [layer for layer in rep.layers if layer.pattern != "dense"]
    nnz = sum(layer.nonzeros for layer in nm_layers)
    numel = sum(layer.numel for layer in nm_layers)
    return {
        "method": method, "pattern": "dense" if method == "dense" else pattern, "seed": seed,
        "epochs": args.epochs, "limit": args.limit, "acc": evaluate(model, xte, yte),
        "nm_sparsity": 1 - nnz / numel if numel else 0.0, "seconds": seconds,
        "flips_per_weight": flips, "sad_vs_initial": sad_init,
        "cmd": command(), "date": dt.date.today().isoformat(), "device": device_name(args.device),
    }


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))}, torch {torch.__version__})"
    return f"cpu ({torch.get_num_threads()} threads, torch {torch.__version__})"


def step_times(pattern: str, data, args) -> dict[str, float]:  # noqa: ANN001
    """Median wall time of one training step per method, measured interleaved in this process
    (rounds of ``timing_steps`` steps per method, same batches). PGF is timed in its decay
    phase (no dense phase), where its forward does the most work."""
    xtr, ytr = data[0], data[1]
    runs = {}
    for method in args.methods:
        torch.manual_seed(0)
        model = SmallCNN().to(args.device)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        if method != "dense":
            cfg: dict = {"pattern": pattern, "total_steps": 10**6, "ignore": DEFAULT_IGNORE["cnn"]}
            if method == "pgf":
                cfg.update(dense_steps=0, rate=1e-7)
            attach(model, opt, method=method, **cfg)
        runs[method] = (model, opt)
    times: dict[str, list[float]] = {m: [] for m in runs}
    gen = torch.Generator().manual_seed(0)
    for _ in range(args.timing_rounds):
        batches = [torch.randint(len(xtr), (args.batch,), generator=gen) for _ in range(args.timing_steps)]
        for method, (model, opt) in runs.items():
            for idx in batches:
                idx = idx.to(args.device)
                sync(args.device)
                t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
                opt.step()
                sync(args.device)
                times[method].append(time.perf_counter() - t0)
    return {m: statistics.median(v) for m, v in times.items()}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timing_table(timing: dict) -> str:
    lines = [f"Step time, produced by `{timing['cmd']}` on {timing['date']} ({timing['rounds']} rounds x "
             f"{timing['steps']} steps per method, interleaved in one process, median):", "",
             "| pattern | method | median step (ms) | vs dense |", "|---|---|---|---|"]
    for pattern, res in timing["results"].items():
        dense = res.get("dense")
        for method, sec in res.items():
            ratio = f"{sec / dense:.2f}x" if dense else "-"
            lines.append(f"| {pattern} | {method} | {1000 * sec:.1f} | {ratio} |")
    return "\n".join(lines)


def _mean(rows: list[dict], key: str) -> str:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return f"{statistics.mean(vals):.3f} (n={len(vals)})" if vals else "-"


def table(rows: list[dict]) -> str:
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["pattern"], r["method"]), []).append(r)
    lines = [
        "| pattern | method | test acc % (mean +- std) | seeds | true sparsity of N:M layers "
        "| mask flips / weight | SAD vs initial | s/run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    order = {"dense": 0, "2:4": 1, "4:8": 2, "1:4": 3, "ste": 0, "sr-ste": 1, "pgf": 2}
    for (pattern, method), rs in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 9), kv[0][0],
                                                                       order.get(kv[0][1], 9), kv[0][1])):
        accs = [r["acc"] for r in rs]
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        lines.append(
            f"| {pattern} | {method} | {statistics.mean(accs):.2f} +- {std:.2f} | "
            f"{','.join(str(r['seed']) for r in rs)} | {rs[0]['nm_sparsity']:.4f} | "
            f"{_mean(rs, 'flips_per_weight')} | {_mean(rs, 'sad_vs_initial')} | "
            f"{statistics.mean(r['seconds'] for r in rs):.0f} |"
        )
    return "\n".join(lines)


def read_rows(jsonl: Path) -> list[dict]:
    """Finished runs; a line still being appended by a concurrent process is skipped."""
    rows = []
    for line in jsonl.read_text().splitlines() if jsonl.exists() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def command() -> str:
    return "python benchmarks/bench_nm_training.py " + " ".join(sys.argv[1:])


def write_markdown(rows: list[dict], args, path: Path) -> None:  # noqa: ANN001
    cmds = sorted({r.get("cmd", "?") for r in rows})
    dates = sorted({r.get("date", "?") for r in rows})
    devices = sorted({r.get("device", "cpu (2 threads, torch 2.13.0+cpu)") for r in rows})
    text = (
        "# N:M sparse training on Fashion-MNIST (small CNN)\n\n"
        + ("Produced by " + ", then ".join(f"`{c}`" for c in cmds) if len(cmds) <= 2
           else f"Produced by the {len(cmds)} commands listed at the end")
        + f" on {', '.join(dates)} "
        f"(device: {'; '.join(devices)}; the rows are "
        f"appended to `{Path(args.jsonl).name}` and the table is rebuilt from it).\n\n"
        f"Protocol: SmallCNN (conv 1-32-64, fc 1600-128-10; first conv dense), SGD momentum 0.9, "
        f"lr {args.lr} per-step cosine, wd 5e-4, batch {args.batch}, {args.epochs} epochs, "
        f"training set {'first ' + str(args.limit) if args.limit else 'full (60k)'}, test set "
        f"{'first ' + str(args.limit) if args.limit and args.limit < 10000 else 'full (10k)'}. "
        "PGF = MDGF, linear "
        f"decay, rate {args.pgf_rate}, 10% dense, 10% hard fine-tune. SR-STE lambda_w = 2e-4. "
        "Accuracy measured after `finalize()` (weights exactly N:M).\n\n"
        + table(rows) + "\n\n"
        "Mask flips / weight: weights dropped from the N:M mask (= grown), summed over the "
        "mask-dynamics logs every 100 steps, per N:M weight; SAD vs initial: fraction of mask "
        "positions that differ between the mask at attach time and the last logged one (Zhou et al. 2021). "
        "Runs made before these columns existed show `-` / a smaller n.\n\n"
        + (timing_table(json.loads(Path(args.timing_json).read_text())) + "\n\n"
           if Path(args.timing_json).exists() else "")
        + "Notes: s/run is the wall time of one run (on a CPU shared with other jobs, or on a GPU "
        "shared by several concurrent benchmark processes), so it is not an overhead measurement; "
        "the std is over seeds."
        + (" This is a reduced grid (fewer epochs / images than the issue's 20 epochs on 60k)."
           if args.epochs != 20 or args.limit else "") + "\n"
        + (f"\n{args.note}\n" if args.note else "")
        + ("\nCommands:\n\n" + "\n".join(f"- `{c}`" for c in cmds) + "\n" if len(cmds) > 2 else "")
    )
    write_text(path, text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--patterns", nargs="+", default=["2:4", "1:4"])
    ap.add_argument("--methods", nargs="+", default=["dense", "ste", "sr-ste", "pgf"])
    ap.add_argument("--limit", type=int, default=None, help="use only the first N images")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--batch-size", "--batch", dest="batch", type=int, default=128)
    ap.add_argument("--pgf-rate", default="auto", help="'auto' or a number such as 2e-4")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda[:k]")
    ap.add_argument("--out", default=str(ROOT / "docs/results/training_nm.md"))
    ap.add_argument("--jsonl", default=str(ROOT / "docs/results/training_nm.jsonl"))
    ap.add_argument("--timing-json", default=str(ROOT / "docs/results/training_nm_timing.json"))
    ap.add_argument("--timing-steps", type=int, default=20, help="0 = skip the step-time table")
    ap.add_argument("--timing-rounds", type=int, default=5)
    ap.add_argument("--render", action="store_true", help="only rebuild the markdown from the JSON files")
    ap.add_argument("--note", default="", help="a paragraph added to the markdown (e.g. how to read the table)")
    args = ap.parse_args()
    if args.pgf_rate != "auto":
        args.pgf_rate = float(args.pgf_rate)
    torch.set_num_threads(args.threads)
    jsonl = Path(args.jsonl)
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    rows = read_rows(jsonl)
    if args.render:
        write_markdown([x for x in rows if x["epochs"] == args.epochs and x["limit"] == args.limit], args,
                       Path(args.out))
        return
    data = tuple(t.to(args.device) for t in load_fashion_mnist(limit=args.limit))
    if args.timing_steps > 0:
        timing = {"cmd": command(), "date": dt.date.today().isoformat(), "steps": args.timing_steps,
                  "rounds": args.timing_rounds,
                  "results": {p: step_times(p, data, args) for p in args.patterns}}
        write_text(args.timing_json, json.dumps(timing, indent=1))
        print(timing_table(timing), flush=True)
    done = {(r["method"], r["pattern"], r["seed"], r["epochs"], r["limit"]) for r in rows}
    for seed in args.seeds:
        for pattern in args.patterns:
            for method in args.methods:
                pat = "dense" if method == "dense" else pattern
                if (method, pat, seed, args.epochs, args.limit) in done:
                    continue
                r = run_one(method, pattern, seed, data, args)
                done.add((method, pat, seed, args.epochs, args.limit))
                rows.append(r)
                with jsonl.open("a") as f:
                    f.write(json.dumps(r) + "\n")
                mine = [x for x in rows if x["epochs"] == args.epochs and x["limit"] == args.limit]
                write_markdown(mine, args, Path(args.out))
                print(json.dumps(r), flush=True)
    print(table([x for x in rows if x["epochs"] == args.epochs and x["limit"] == args.limit]))


if __name__ == "__main__":
    main()
