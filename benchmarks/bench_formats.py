"""Packed formats: bytes per element vs. the bound, pack/unpack speed, checkpoint sizes.

    flock /tmp/sparsecraft-heavy.lock python benchmarks/bench_formats.py

* Unstructured magnitude-pruned random weights (``--rows x --cols``) at s = 0.5/0.7/0.9/0.95
  and the N:M patterns 2:4 and 4:8, in fp32/fp16/bf16: exact bytes per element of bitmap,
  CSR, BSR 4x4, N:M and ``auto``, against the bound (unstructured: the bitmap bound
  ``(1-s) * b + 1/8``; N:M: ``N/M * (b + ceil(log2 M)/8)``).
* ``auto`` pack and unpack throughput (GB/s of dense tensor bytes, one thread).
* Checkpoint size of SmolLM2-135M (``--model``) pruned with sparsecraft (magnitude,
  unstructured 50/70/90% and 2:4 on the decoder linears): ``format="dense"`` vs ``"auto"``,
  fp32 and bf16, with a bit-identical reload check.

Prints the tables and writes its section of docs/results/formats.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sections import write_section  # noqa: E402

import sparsecraft  # noqa: E402
from sparsecraft.formats import pack, unpack  # noqa: E402
from sparsecraft.formats.checkpoint import read_checkpoint, save  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def pruned(rows: int, cols: int, pattern: str, s: float, dtype: torch.dtype) -> torch.Tensor:
    torch.manual_seed(0)
    w = torch.randn(rows, cols)
    if pattern == "unstructured":
        thr = w.abs().flatten().kthvalue(int(s * w.numel())).values
        w = w.masked_fill(w.abs() <= thr, 0)
    else:
        n, m = map(int, pattern.split(":"))
        g = w.abs().reshape(rows, -1, m)
        keep = torch.zeros_like(g, dtype=torch.bool).scatter_(2, g.topk(n, dim=2).indices, True)
        w = w.masked_fill(~keep.reshape(rows, cols), 0)
    return w.to(dtype)


def bound(pattern: str, s: float, vb: int) -> float:
    if pattern == "unstructured":
        return (1 - s) * vb + 1 / 8
    n, m = map(int, pattern.split(":"))
    return n / m * (vb + math.ceil(math.log2(m)) / 8)


def timed_round_trip(w: torch.Tensor, fmt: str, **kw) -> tuple:
    """(packed, pack s, unpack s) -- best of 2 -- and a bit-identity check."""
    best_p = best_u = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        p = pack(w, fmt, **kw)
        t1 = time.perf_counter()
        back = unpack(p)
        t2 = time.perf_counter()
        best_p, best_u = min(best_p, t1 - t0), min(best_u, t2 - t1)
    assert torch.equal(back.view(torch.uint8), w.view(torch.uint8)), f"{fmt} is not lossless"
    return p, best_p, best_u


def format_table(rows: int, cols: int) -> tuple[list[list[str]], list[list[str]]]:
    table, speed = [], []
    cases = [("unstructured", s) for s in (0.5, 0.7, 0.9, 0.95)] + [("2:4", 0.5), ("4:8", 0.5)]
    for dname, dtype in DTYPES.items():
        for pattern, s in cases:
            w = pruned(rows, cols, pattern, s, dtype)
            n = w.numel()
            vb = w.element_size()
            gb = n * vb / 1e9
            b = bound(pattern, s, vb)
            cells, rates = {}, {}
            fmts = [("bitmap", {}), ("csr", {}), ("bsr", {"br": 4, "bc": 4})]
            if pattern != "unstructured":
                nn_, mm = map(int, pattern.split(":"))
                fmts.append(("nm", {"n": nn_, "m": mm}))
            for fmt, kw in fmts:
                p, tp, tu = timed_round_trip(w, fmt, **kw)
                cells[fmt] = p.nbytes / n
                rates[fmt] = f"{gb / tp:.2f} / {gb / tu:.2f}"
            speed.append([dname, pattern if pattern != "unstructured" else f"unstructured {s:.2f}",
                          *(rates.get(k, "-") for k in ("bitmap", "csr", "bsr", "nm"))])
            t0 = time.perf_counter()
            p = pack(w, "auto")
            t1 = time.perf_counter()
            back = unpack(p)
            t2 = time.perf_counter()
            assert torch.equal(back.view(torch.uint8), w.view(torch.uint8))
            auto = p.nbytes / n
            table.append([
                dname, pattern if pattern != "unstructured" else f"unstructured {s:.2f}", f"{vb}",
                f"{b:.4f}", *(f"{cells[k]:.4f}" for k in ("bitmap", "csr", "bsr")),
                f"{cells['nm']:.4f}" if "nm" in cells else "-", f"{auto:.4f} ({p.format})",
                f"{round(100 * (auto / b - 1), 2) + 0.0:+.2f}%", f"{gb / (t1 - t0):.2f}", f"{gb / (t2 - t1):.2f}",
            ])
            print(" | ".join(table[-1]), "||", " | ".join(speed[-1][2:]), flush=True)
    return table, speed


def checkpoint_table(model_name: str) -> list[list[str]]:
    from sparsecraft.models.loader import load_model

    table = []
    cases = [("unstructured", 0.5), ("unstructured", 0.7), ("unstructured", 0.9), ("2:4", 0.5)]
    for pattern, s in cases:
        for dname in ("fp32", "bf16"):
            model = load_model(model_name).model
            sparsecraft.prune(model, s, pattern=pattern, targets=["model.layers"], progress=False)
            sparsecraft.remove_masks(model)
            model = model.to(DTYPES[dname])
            with tempfile.TemporaryDirectory() as tmp:
                dense = save(model, Path(tmp) / "dense.safetensors")
                t0 = time.perf_counter()
                auto = save(model, Path(tmp) / "auto.safetensors", format="auto")
                t1 = time.perf_counter()
                state, doc = read_checkpoint(auto)
                t2 = time.perf_counter()
                own = model.state_dict()
                ok = all(torch.equal(own[k].view(torch.uint8), state[k].view(torch.uint8)) for k in own)
                formats: dict[str, int] = {}
                for h in doc["packed"].values():
                    formats[h["format"]] = formats.get(h["format"], 0) + 1
                d, a = os.path.getsize(dense), os.path.getsize(auto)
                unique = {(v.data_ptr(), v.dtype, tuple(v.shape)): v.numel() * v.element_size() for v in own.values()}
                w = sum(unique.values())
                table.append([
                    f"{pattern} {s:.0%}" if pattern == "unstructured" else pattern, dname, f"{w / 2**20:.1f}",
                    f"{d / 2**20:.1f}", f"{a / 2**20:.1f}", f"{a / d:.3f}", f"{a / w:.3f}",
                    ", ".join(f"{k} {v}" for k, v in sorted(formats.items())),
                    f"{t1 - t0:.1f}", f"{t2 - t1:.1f}", "yes" if ok else "NO",
                ])
            print(" | ".join(table[-1]), flush=True)
    return table


def md(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--model", default="smollm2-135m", help="built-in name or HF dir; 'none' to skip")
    ap.add_argument("--out", default=str(ROOT / "docs/results/formats.md"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    cmd = "python benchmarks/bench_formats.py " + " ".join(sys.argv[1:])
    hdr = ["dtype", "pattern", "value bytes", "bound B/el", "bitmap", "CSR", "BSR 4x4", "N:M",
           "auto", "auto vs bound", "pack GB/s", "unpack GB/s"]
    print(" | ".join(hdr))
    load = os.getloadavg()[0]
    ft, speed = format_table(args.rows, args.cols)
    shdr = ["dtype", "pattern", "bitmap", "CSR", "BSR 4x4", "N:M"]
    body = [
        "## Packed formats: bytes per element", "",
        f"Produced by `{cmd.strip()}` on {dt.date.today().isoformat()} "
        f"({args.rows}x{args.cols} magnitude-pruned random weight; 1 thread; shared 2-core CPU, "
        f"1-min load average {load:.2f} at the start).",
        "Bound: unstructured `(1-s)*b + 1/8` (bitmap bound), N:M `N/M*(b + ceil(log2 M)/8)`. "
        "Every packed tensor was unpacked and checked bit-identical. `auto` pack time includes sizing "
        "every candidate format.", "", md(hdr, ft), "",
        "### Pack / unpack throughput per format (GB/s of dense tensor bytes, best of 2, same run)", "",
        md(shdr, speed), "",
    ]
    if args.model != "none":
        chdr = ["pruning (decoder linears)", "dtype", "weights MiB (tied once)", "dense file MiB", "auto file MiB",
                "auto/dense", "auto/weights",
                "packed tensors", "save s", "load s", "bit-identical"]
        print(" | ".join(chdr))
        ct = checkpoint_table(args.model)
        body += [f"## Checkpoint size: {args.model}, `sparsecraft.save(format=...)`", "",
                 "Magnitude pruning with `sparsecraft.prune(..., targets=['model.layers'])`; embeddings "
                 "and norms stay dense. `format=\"dense\"` (the default, unchanged) writes every state_dict "
                 "key, so the embedding tied to the LM head is in the file twice; `auto` stores it once, "
                 "hence the extra `auto/weights` column (file size over the model's unique weight bytes).", "",
                 md(chdr, ct), ""]
    write_section(Path(args.out), "bench_formats", "\n".join(body), "Formats, checkpoints and deltas")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
