"""CUDA 2:4 (semi-structured) vs dense: correctness + speed, 4096x4096, batch 1..256.

    python benchmarks/cuda_semi_structured.py            # needs a CUDA GPU (Ampere or newer)

For fp16 and bf16: a magnitude 2:4 weight, ``F.linear`` on the dense weight vs. on
``torch.sparse.to_sparse_semi_structured(weight)`` through sparsecraft's ``cuda-2:4``
backend (:class:`sparsecraft.kernels.SparseLinear`), for batch 1, 2, 4, ..., 256. Checks
the results agree (relative error of the output norm), times both with CUDA events (median of
``--repeats`` after a warm-up, interleaved), prints the table and writes
docs/results/kernels_cuda.md with the command, date and GPU. Exits with status 2 and a clear
message where CUDA (or semi-structured support) is absent.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results" / "kernels_cuda.md"


def cuda_time(fn) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--batches", default="1,2,4,8,16,32,64,128,256")
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    from sparsecraft.kernels import SparseLinear
    from sparsecraft.kernels.cuda_semi import semi_structured_available

    ok, why = semi_structured_available()
    if not ok:
        print(f"cuda_semi_structured.py: cannot run: {why}", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    n = args.size
    rows = []
    for dtype in (torch.float16, torch.bfloat16):
        w = torch.randn(n, n, device="cuda", dtype=dtype).reshape(n, -1, 4)
        keep = torch.zeros_like(w, dtype=torch.bool).scatter_(-1, w.abs().topk(2, -1).indices, True)
        w = (w * keep).reshape(n, n)
        lin = torch.nn.Linear(n, n, bias=False, device="cuda", dtype=dtype)
        with torch.no_grad():
            lin.weight.copy_(w)
        sl = SparseLinear.from_linear(lin, "cuda-2:4")
        for batch in [int(b) for b in args.batches.split(",")]:
            x = torch.randn(batch, n, device="cuda", dtype=dtype)
            with torch.no_grad():
                ref, got = F.linear(x, w), sl(x)
                err = float((got.float() - ref.float()).norm() / ref.float().norm())
                for _ in range(10):
                    F.linear(x, w)
                    sl(x)
                td, ts = [], []
                dense_call = lambda x=x, w=w: F.linear(x, w)  # noqa: E731
                sparse_call = lambda x=x, sl=sl: sl(x)  # noqa: E731
                for _ in range(args.repeats):
                    td.append(cuda_time(dense_call))
                    ts.append(cuda_time(sparse_call))
            d, s = statistics.median(td), statistics.median(ts)
            status = "ok" if err < 1e-2 else "WRONG"
            name = str(dtype).split(".")[-1]
            row = f"| {name} | {batch} | {d * 1e3:.1f} | {s * 1e3:.1f} | {d / s:.2f}x | {err:.1e} {status} |"
            rows.append(row)
            print(row, flush=True)
    header = "| dtype | batch | dense us | 2:4 us | speedup | rel. error |\n|---|---|---|---|---|---|"
    text = "\n".join([
        f"# CUDA 2:4 semi-structured vs dense, {n}x{n}",
        "",
        f"Command: `python {' '.join(['benchmarks/cuda_semi_structured.py', *sys.argv[1:]])}`  ",
        f"Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; torch {torch.__version__}; "
        f"GPU: {torch.cuda.get_device_name()}. Median of {args.repeats} CUDA-event timings, interleaved.",
        "",
        header,
        *rows,
        "",
    ])
    print(header)
    print("\n".join(rows))
    if not args.no_write:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        tmp = OUT.with_suffix(".md.tmp")
        tmp.write_text(text)
        os.replace(tmp, OUT)
        print(f"wrote {OUT}")
    return 0 if all("WRONG" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
