"""CPU sparse x dense matmul on a 4096x4096 fp32 weight: sparsecraft kernels vs. the peers.

    flock /tmp/sparsecraft-heavy.lock python benchmarks/bench_kernels.py

Cells: sparsity 50/70/90/95% (unstructured, random) and 2:4 (magnitude), batch 1/8/64.
Peers, all in one process, timed side by side in interleaved rounds (median of ``--repeats``
after a warm-up; a second table gives the minimum): the dense calls (F.linear, torch.mm
with W^T contiguous, torch.addmm, oneDNN linear, numpy), torch CSR with int32 indices, scipy CSR; sparsecraft's csr16,
bitmap, nm24 (2:4 only) and ``auto`` = the backend :func:`sparsecraft.kernels.choose`
picks for that cell after its own quick measurement (the decision is printed).

Goals checked per cell: auto <= 1.05x best dense; at 90% batch 1 auto >= 3x faster than best
dense; at 70-95% batch 1 auto >= 1.3x faster than torch CSR int32; at batch 1 auto within
1.6x of the memory-bandwidth bound (dense time x packed bytes / dense bytes).
Prints the tables and writes docs/results/kernels.md (command, date, load).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import statistics
import sys
from pathlib import Path

import numpy as np
import scipy.sparse
import torch
import torch.nn.functional as F

from sparsecraft.kernels import choose, extension_status, get_backend
from sparsecraft.kernels.calibrate import time_samples

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results" / "kernels.md"
DENSE_PEERS = ("F.linear", "mm(W^T)", "addmm", "oneDNN", "numpy")


def make_weight(n: int, cell: str, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, n, generator=g)
    if cell == "2:4":
        grp = w.reshape(n, -1, 4)
        keep = torch.zeros_like(grp, dtype=torch.bool).scatter_(-1, grp.abs().topk(2, -1).indices, True)
        return (grp * keep).reshape(n, n)
    return w * (torch.rand(n, n, generator=g) >= float(cell))


def run_cell(w: torch.Tensor, cell: str, batch: int, repeats: int) -> dict:
    n_out = w.shape[0]
    x = torch.randn(batch, w.shape[1])
    wt = w.t().contiguous()
    bias0 = torch.zeros(n_out)
    xn, wn = x.numpy(), w.numpy()
    sp = scipy.sparse.csr_matrix(wn)
    calls = {
        "F.linear": lambda: F.linear(x, w),
        "mm(W^T)": lambda: torch.mm(x, wt),
        "addmm": lambda: torch.addmm(bias0, x, wt),
        "numpy": lambda: xn @ wn.T,
        "scipy CSR": lambda: (sp @ xn.T).T,
    }
    if torch.backends.mkldnn.is_available():
        wm = w.to_mkldnn()
        calls["oneDNN"] = lambda: torch._C._nn.mkldnn_linear(x.to_mkldnn(), wm, None).to_dense()
    packs = {}
    names = ["torch-csr", "csr16", "bitmap"] + (["nm24"] if cell == "2:4" else [])
    for name in names:
        b = get_backend(name)
        avail, why = b.available()
        if not avail or b.supports(w):
            continue
        packs[name] = (b, b.pack(w))
        calls[name] = lambda b=b, p=packs[name][1]: b.matmul(p, x, n_out)
    decision = choose(w, batch=batch)
    ab = get_backend(decision.backend)
    ap = packs[decision.backend][1] if decision.backend in packs else ab.pack(w)
    calls["auto"] = lambda: ab.matmul(ap, x, n_out)
    ref = x @ w.t()
    for name, fn in calls.items():  # every peer computes the same product
        got = torch.as_tensor(np.asarray(fn()))
        torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-3, msg=f"{name} is wrong")
    samples = time_samples(calls, repeats=repeats, warmup=3)
    times = {k: statistics.median(v) for k, v in samples.items()}
    mins = {k: min(v) for k, v in samples.items()}
    best_dense_name = min((k for k in calls if k in DENSE_PEERS), key=times.get)
    best_dense_min = min((k for k in calls if k in DENSE_PEERS), key=mins.get)
    nbytes = {k: get_backend(k).nbytes(p) for k, (_, p) in packs.items()}
    nbytes["auto"] = ab.nbytes(ap) if not ab.dense else w.numel() * 4
    return {"times": times, "mins": mins, "best_dense_min": best_dense_min, "best_dense": best_dense_name,
            "auto": decision.backend, "reason": decision.reason, "nbytes": nbytes, "dense_bytes": w.numel() * 4}


def goals(cell: str, batch: int, r: dict) -> list[str]:
    t, d = r["times"], r["times"][r["best_dense"]]
    out = [f"auto<=1.05x dense: {'PASS' if t['auto'] <= 1.05 * d else 'MISS'} ({t['auto'] / d:.2f})"]
    if batch == 1 and cell == "0.9":
        s = d / t["auto"]
        out.append(f">=3x faster than dense: {'PASS' if s >= 3 else 'MISS'} ({s:.2f}x)")
    if batch == 1 and cell in ("0.7", "0.9", "0.95"):
        s = t["torch-csr"] / t["auto"]
        out.append(f">=1.3x faster than torch CSR: {'PASS' if s >= 1.3 else 'MISS'} ({s:.2f}x)")
    if batch == 1:
        bound = d * r["nbytes"]["auto"] / r["dense_bytes"]
        q = t["auto"] / bound
        out.append(f"within 1.6x of bandwidth bound: {'PASS' if q <= 1.6 else 'MISS'} ({q:.2f}x bound)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--cells", default="0.5,0.7,0.9,0.95,2:4")
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--note", default="", help="a sentence about the run conditions, written to the doc")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ok, why = extension_status()
    load0 = os.getloadavg()
    cols = None
    rows, rows_min, notes = [], [], []
    for cell in args.cells.split(","):
        w = make_weight(args.size, cell)
        for batch in [int(b) for b in args.batches.split(",")]:
            r = run_cell(w, cell, batch, args.repeats)
            t, d = r["times"], r["times"][r["best_dense"]]
            if cols is None:  # fixed order; a backend that cannot run a cell shows "-"
                cols = [*DENSE_PEERS, "scipy CSR", "torch-csr", "csr16", "bitmap", "nm24"]
            label = "2:4" if cell == "2:4" else f"{float(cell):.0%}"
            cells = [f"{t[k] / d:.2f}" if k in t else "-" for k in cols]
            row = (f"| {label} | {batch} | {d * 1e3:.2f} ({r['best_dense']}) | " + " | ".join(cells)
                   + f" | **{t['auto'] / d:.2f}** ({r['auto']}) |")
            rows.append(row)
            m, dm = r["mins"], r["mins"][r["best_dense_min"]]
            rows_min.append(f"| {label} | {batch} | {dm * 1e3:.2f} ({r['best_dense_min']}) | "
                            + " | ".join(f"{m[k] / dm:.2f}" if k in m else "-" for k in cols)
                            + f" | **{m['auto'] / dm:.2f}** ({r['auto']}) |")
            notes.append(f"- {label} batch {batch}: " + "; ".join(goals(cell, batch, r))
                         + f". auto: {r['reason']}")
            print(row, flush=True)
            print(notes[-1], flush=True)
    load1 = os.getloadavg()
    header = ("| sparsity | batch | best dense ms (call) | " + " | ".join(cols) + " | auto (choice) |\n"
              + "|---" * (len(cols) + 4) + "|")
    # the command exactly as run (the docstring gives the recommended flock wrapper)
    cmd = shlex.join(["python", "benchmarks/bench_kernels.py", *sys.argv[1:]])
    text = "\n".join([
        "# CPU sparse kernels: 4096x4096 fp32 weight",
        "",
        f"Command: `{cmd}`  ",
        f"Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; torch {torch.__version__}; "
        f"{platform.processor() or platform.machine()}, {args.threads} threads; C++ kernels: {why}.  ",
        f"Load average (1 min) at start / end: {load0[0]:.2f} / {load1[0]:.2f} -- the 2-core machine "
        "is shared with other jobs, so absolute times are noisy; ratios come from interleaved "
        "rounds in one process." + (f" {args.note}" if args.note else ""),
        "",
        "Times relative to the best dense call of the same cell (< 1 = faster than dense). "
        "`auto` is the backend `sparsecraft.kernels.choose` picked after its own quick measurement.",
        "",
        header,
        *rows,
        "",
        "## Same run, minimum instead of median",
        "",
        "The fastest of the repeats of each call (robust to a call being preempted on the shared "
        "machine; the goals below use the medians above).",
        "",
        header.replace("best dense ms", "best dense min ms"),
        *rows_min,
        "",
        "## Goals per cell (medians)",
        "",
        *notes,
        "",
    ])
    print()
    print(header)
    print("\n".join(rows))
    if not args.no_write:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        tmp = OUT.with_suffix(".md.tmp")
        tmp.write_text(text)
        os.replace(tmp, OUT)
        print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
