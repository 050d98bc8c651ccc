"""CUDA 2:4 (semi-structured) vs dense: correctness + speed, 4096x4096, batch 1..4096.

    python benchmarks/cuda_semi_structured.py            # needs a CUDA GPU (Ampere or newer)

For fp16 and bf16: a magnitude 2:4 weight; ``F.linear`` on the dense weight vs.
sparsecraft's ``cuda-2:4`` backend (:class:`sparsecraft.kernels.SparseLinear`, which packs with
``torch.sparse.to_sparse_semi_structured``: torch's default kernel library) and, side by side,
the two libraries torch can use explicitly: CUTLASS (``SparseSemiStructuredTensorCUTLASS``)
and cuSPARSELt (``SparseSemiStructuredTensorCUSPARSELT``), for batch 1, 2, 4, ..., 4096.
Checks every result against the dense product (relative error of the output norm). Timing:
CUDA events around a loop of ``--inner`` calls (so the event and launch overheads of a single
call are amortised the way a model's stream of calls amortises them), median of ``--repeats``
such loops, all variants of a cell interleaved, after ``--warmup`` calls of each. Prints the
table and writes docs/results/kernels_cuda.md with the command, date, GPU and library facts.
Exits with status 2 and a clear message where CUDA (or semi-structured support) is absent.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from _env import write_atomic

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results" / "kernels_cuda.md"


def loop_time_us(fn: Callable[[], object], inner: int) -> float:
    """Microseconds per call of ``fn`` over a loop of ``inner`` calls (CUDA events)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(inner):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / inner


def host_us(fn: Callable[[], object], inner: int) -> float:
    """Microseconds of host (CPU) time per call to enqueue ``inner`` calls (no sync inside)."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) * 1e6 / inner


def graph_call(layer: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> tuple[Callable | None, str]:
    """``layer(x)`` captured in a CUDA graph (replay = no per-call host work), or the reason not."""
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(3):
                layer(x)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.no_grad():
            y = layer(x)
        return (lambda: (graph.replay(), y)[1]), ""
    except Exception as e:  # noqa: BLE001
        return None, f"CUDA graph capture of the cuda-2:4 layer failed: {type(e).__name__}: {str(e)[:120]}"


def variants(w: torch.Tensor) -> tuple[dict[str, Callable[[torch.Tensor], torch.Tensor]], list[str]]:
    """name -> x -> y for every 2:4 path this torch offers; notes on the ones that failed."""
    from sparsecraft.kernels import SparseLinear

    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, device="cuda", dtype=w.dtype)
    with torch.no_grad():
        lin.weight.copy_(w)
    layer = SparseLinear.from_linear(lin, "cuda-2:4")
    out: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"sparsecraft cuda-2:4": layer}
    default = type(torch.sparse.to_sparse_semi_structured(w)).__name__
    notes = [f"`to_sparse_semi_structured` (what the cuda-2:4 backend packs with) gives `{default}`"]
    libraries = (
        ("CUTLASS", "SparseSemiStructuredTensorCUTLASS"),
        ("cuSPARSELt", "SparseSemiStructuredTensorCUSPARSELT"),
    )
    for label, cls_name in libraries:
        cls = getattr(torch.sparse, cls_name, None)
        try:
            sst = cls.from_dense(w)  # type: ignore[union-attr]
            F.linear(torch.ones(8, w.shape[1], device=w.device, dtype=w.dtype), sst)  # can it run here?
            out[label] = lambda x, sst=sst: F.linear(x, sst)
        except Exception as e:  # noqa: BLE001  (report what this torch build cannot do)
            notes.append(f"{label}: unavailable ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
    return out, notes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--batches", default="1,2,4,8,16,32,64,128,256,1024,4096")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--inner", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    from sparsecraft.kernels.cuda_semi import semi_structured_available

    ok, why = semi_structured_available()
    if not ok:
        print(f"cuda_semi_structured.py: cannot run: {why}", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    n = args.size
    rows, notes, names = [], [], []
    cslt = getattr(torch.backends, "cusparselt", None)
    notes.append(f"cuSPARSELt in this torch: available={cslt.is_available() if cslt else 'n/a'}, "
                 f"version={cslt.version() if cslt and cslt.is_available() else 'n/a'}")
    for dtype in (torch.float16, torch.bfloat16):
        w = torch.randn(n, n, device="cuda", dtype=dtype).reshape(n, -1, 4)
        keep = torch.zeros_like(w, dtype=torch.bool).scatter_(-1, w.abs().topk(2, -1).indices, True)
        w = (w * keep).reshape(n, n)
        calls, vnotes = variants(w)
        notes += [f"{dtype}: {v}" for v in vnotes]
        for batch in [int(b) for b in args.batches.split(",")]:
            x = torch.randn(batch, n, device="cuda", dtype=dtype)
            fns = {"dense": lambda x=x, w=w: F.linear(x, w)}
            fns.update({k: (lambda x=x, f=f: f(x)) for k, f in calls.items()})
            graphed, why = graph_call(calls["sparsecraft cuda-2:4"], x)
            if graphed is not None:
                fns["cuda-2:4 in a CUDA graph"] = graphed
            elif why and why not in notes:
                notes.append(why)
            with torch.no_grad():
                ref = F.linear(x, w).float()
                errs = {k: float((f().float() - ref).norm() / ref.norm()) for k, f in fns.items() if k != "dense"}
                for _ in range(args.warmup):
                    for f in fns.values():
                        f()
                times: dict[str, list[float]] = {k: [] for k in fns}
                for _ in range(args.repeats):
                    for k, f in fns.items():
                        times[k].append(loop_time_us(f, args.inner))
            med = {k: statistics.median(v) for k, v in times.items()}
            names = [k for k in fns if k != "dense"]
            cells = [f"{med[k]:.1f} ({med['dense'] / med[k]:.2f}x)" for k in names]
            cells.append(f"{host_us(fns['sparsecraft cuda-2:4'], args.inner):.1f}")
            worst = max(errs.values())
            status = "ok" if worst < 1e-2 else "WRONG"
            name = str(dtype).split(".")[-1]
            row = f"| {name} | {batch} | {med['dense']:.1f} | " + " | ".join(cells) + f" | {worst:.1e} {status} |"
            rows.append(row)
            print(row, flush=True)
    header = ("| dtype | batch | dense us | " + " | ".join(f"{k} us (speedup)" for k in names)
              + " | cuda-2:4 host us/call | max rel. error |\n|" + "---|" * (len(names) + 5))
    text = "\n".join([
        f"# CUDA 2:4 semi-structured vs dense, {n}x{n}",
        "",
        f"Command: `python {' '.join(['benchmarks/cuda_semi_structured.py', *sys.argv[1:]])}`  ",
        f"Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; torch {torch.__version__}; "
        f"GPU: {torch.cuda.get_device_name()}. Microseconds per call: CUDA events around {args.inner} calls, "
        f"median of {args.repeats} loops, variants interleaved, {args.warmup} warm-up calls each. "
        "Speedup = dense time / variant time (> 1: 2:4 faster).",
        "",
        *[f"- {x}" for x in notes],
        "",
        header,
        *rows,
        "",
    ])
    print("\n".join(notes))
    if not args.no_write:
        write_atomic(OUT, text)
    return 0 if all("WRONG" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
