"""Lossless sparse weight deltas (SparseRL-Sync): payload size vs. bound, encode + apply speed,
and the speed of the tensor digest that makes apply safe.

    flock /tmp/sparsecraft-heavy.lock python benchmarks/bench_delta.py
    python benchmarks/bench_delta.py --numel 10000000 --model none --out /tmp/formats.md   # quick check

* Synthetic: a ~100M-element state (``--numel``, split into 2**22-element tensors) in fp32
  and bf16 with 0.1% / 1% / 10% of the elements changed at random positions. Reports the
  payload against the goal ``changed x (value bytes + 2) + bucket headers`` and against the
  SparseRL-Sync reference (int32 index + value: ``changed x (value bytes + 4)``), and
  encode + apply throughput in GB/s of model size on one core (numpy, 1 thread). The times
  include what makes apply safe: the digest of every base tensor on both sides, the result
  digests (predicted from the changes on apply, before anything is written) and the staging.
* Digest: GB/s on one ``--numel``-element fp32 tensor of the chosen digest
  (:mod:`sparsecraft.formats.digest`) and of the candidates it was chosen against
  (``zlib.crc32`` / ``adler32``, ``hashlib.blake2b`` / ``sha256``), best of ``--reps``.
* Real: SmolLM2-135M (``--model``) vs. the same model after ``--steps`` AdamW steps on
  random tokens: fp32 (lr 1e-5), bf16 (lr 1e-6, the RL-fine-tuning regime where most
  updates fall below bf16 resolution) and bf16 with 50% unstructured masks kept during the
  steps (sparse fine-tune). Reports changed fraction, payload / dense ratio.

Every payload is applied to a copy of the old state and checked bit-identical to the new, then
applied a second time and checked refused with the state unchanged.
Prints the tables and writes its section of docs/results/formats.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import sys
import time
import zlib
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sections import write_section  # noqa: E402

from sparsecraft.formats.delta import DeltaError, apply_delta, encode_delta  # noqa: E402
from sparsecraft.formats.digest import tensor_digest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def bit_equal(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k].view(torch.uint8), b[k].view(torch.uint8)) for k in a)


def measure(old: dict, new: dict, reps: int = 1) -> dict:
    """Best-of-``reps`` encode and apply times; also encode when the sender already knows the
    base digests (``DeltaSync`` keeps the previous round's result digests)."""
    best_enc = best_app = best_known = best_pass = float("inf")
    known = {k: tensor_digest(v) for k, v in old.items()}
    for _ in range(reps):
        t0 = time.perf_counter()
        for v in old.values():
            tensor_digest(v)
        best_pass = min(best_pass, time.perf_counter() - t0)
        recv = {k: v.clone() for k, v in old.items()}
        t0 = time.perf_counter()
        payload = encode_delta(old, new)
        t1 = time.perf_counter()
        apply_delta(recv, payload)
        t2 = time.perf_counter()
        same = encode_delta(old, new, base_digests=known)
        t3 = time.perf_counter()
        best_enc, best_app, best_known = min(best_enc, t1 - t0), min(best_app, t2 - t1), min(best_known, t3 - t2)
        assert bit_equal(recv, new), "receiver is not bit-identical"
        assert same.buckets == payload.buckets, "known base digests changed the payload"
        del recv, same
    try:  # the same delta a second time: refused by the base check, nothing written
        apply_delta(new, payload)
        raise AssertionError("a delta applied twice was accepted")
    except DeltaError:
        pass
    return {"payload": payload, "encode_s": best_enc, "apply_s": best_app, "encode_known_s": best_known,
            "digest_s": best_pass}


def synthetic(numel: int, reps: int) -> list[list[str]]:
    rows = []
    chunk = 1 << 22
    for dname, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        g = torch.Generator().manual_seed(0)
        old = {f"t{i}": torch.randn(min(chunk, numel - i * chunk), generator=g).to(dtype)
               for i in range((numel + chunk - 1) // chunk)}
        for frac in (0.001, 0.01, 0.1):
            new = {}
            for k, t in old.items():
                hit = torch.rand(t.shape, generator=g) < frac
                bumped = t.float() * 1.5 + 0.25
                new[k] = torch.where(hit, bumped.to(dtype), t)
            r = measure(old, new, reps)
            p, st = r["payload"], r["payload"].stats
            vb = torch.empty((), dtype=dtype).element_size()
            goal = st["changed"] * (vb + 2) + st["header_bytes"]
            gbs = st["model_bytes"] / 1e9 / (r["encode_s"] + r["apply_s"])
            gbs_known = st["model_bytes"] / 1e9 / (r["encode_known_s"] + r["apply_s"])
            rows.append([
                dname, f"{st['numel'] / 1e6:.0f}M", f"{frac:.1%}", f"{st['changed']}", f"{p.nbytes}",
                f"{p.nbytes / max(1, st['changed']):.3f}", f"{goal}", "yes" if p.nbytes <= goal else "NO",
                f"{st['changed'] * (vb + 4)}", f"{p.nbytes / st['model_bytes']:.4f}",
                f"{st['header_bytes']}", f"{r['encode_s']:.3f}", f"{r['apply_s']:.3f}", f"{gbs:.2f}",
                "yes" if gbs >= 1.0 else "NO", f"{r['encode_known_s']:.3f}", f"{gbs_known:.2f}",
                f"{r['digest_s']:.3f}",
            ])
            print(" | ".join(rows[-1]), flush=True)
            del new
    return rows


def real_case(model_name: str, steps: int, seq: int, reps: int) -> list[list[str]]:
    import sparsecraft
    from sparsecraft.models.loader import load_model

    rows = []
    for label, dtype, lr, sparsity in (("fp32", torch.float32, 1e-5, 0.0), ("bf16", torch.bfloat16, 1e-6, 0.0),
                                       ("bf16, 50% sparse fine-tune", torch.bfloat16, 1e-6, 0.5)):
        torch.manual_seed(0)
        model = load_model(model_name).model.to(dtype)
        if sparsity:
            sparsecraft.prune(model, sparsity, targets=["model.layers"], progress=False)
        # weights only (mask buffers are not weights); tied tensors stay tied (sent once)
        live = {k: v for k, v in model.state_dict().items() if not k.endswith("_mask")}
        old = {k: v.detach().clone() for k, v in live.items()}
        for k, v in live.items():  # keep the ties of the live state in the snapshot
            for j in live:
                if j < k and live[j].data_ptr() == v.data_ptr() and live[j].shape == v.shape:
                    old[k] = old[j]
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
        vocab = model.config.vocab_size
        model.train()
        for _ in range(steps):
            ids = torch.randint(0, vocab, (2, seq))
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if sparsity:
                sparsecraft.apply_masks(model)
        new = {k: v.detach() for k, v in model.state_dict().items() if not k.endswith("_mask")}
        r = measure(old, new, reps)
        p, st = r["payload"], r["payload"].stats
        gbs = st["model_bytes"] / 1e9 / (r["encode_s"] + r["apply_s"])
        gbs_known = st["model_bytes"] / 1e9 / (r["encode_known_s"] + r["apply_s"])
        rows.append([
            label, f"{steps} x AdamW lr {lr:g}", f"{st['numel'] / 1e6:.1f}M", f"{st['changed'] / st['numel']:.2%}",
            f"{st['model_bytes'] / 2**20:.1f}", f"{p.nbytes / 2**20:.2f}", f"{p.nbytes / st['model_bytes']:.4f}",
            f"{p.nbytes / max(1, st['changed']):.3f}", f"{len(st['dense_tensors'])}/{st['tensors'] - st['tied']}",
            f"{r['encode_s']:.3f}", f"{r['apply_s']:.3f}", f"{gbs:.2f}", f"{gbs_known:.2f}",
        ])
        print(" | ".join(rows[-1]), flush=True)
        del model, opt, old, new
    return rows


def digest_speeds(numel: int, reps: int) -> list[list[str]]:
    """GB/s of the chosen digest and of the candidates, on one fp32 tensor of ``numel``."""
    t = torch.randn(numel, generator=torch.Generator().manual_seed(0))
    raw = memoryview(t.numpy()).cast("B")
    cands = [
        ("sparsecraft additive (chosen)", lambda: tensor_digest(t), "yes", "yes (one weight per change)"),
        ("zlib.crc32", lambda: zlib.crc32(raw), "yes", "no (a pass over the result)"),
        ("zlib.adler32", lambda: zlib.adler32(raw), "yes", "no"),
        ("hashlib.blake2b", lambda: hashlib.blake2b(raw).digest(), "yes", "no"),
        ("hashlib.sha256", lambda: hashlib.sha256(raw).digest(), "yes", "no"),
    ]
    rows = []
    for name, fn, bitwise, incremental in cands:
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        rows.append([name, f"{t.numel() * 4 / 1e9 / best:.2f}", bitwise, incremental])
        print(" | ".join(rows[-1]), flush=True)
    return rows


def md(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--numel", type=int, default=100_000_000)
    ap.add_argument("--reps", type=int, default=3, help="timing repetitions (best of)")
    ap.add_argument("--model", default="smollm2-135m", help="built-in name or HF dir; 'none' to skip")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--out", default=str(ROOT / "docs/results/formats.md"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    cmd = "python benchmarks/bench_delta.py " + " ".join(sys.argv[1:])
    hdr = ["dtype", "elements", "changed", "changed elements", "payload B", "B / change", "goal B",
           "meets goal", "int32-index ref. B", "payload / model", "headers B", "encode s", "apply s",
           "encode+apply GB/s", ">= 1 GB/s", "encode s, base digests known", "GB/s, base digests known",
           "one digest pass s"]
    print(" | ".join(hdr))
    load = os.getloadavg()[0]
    syn = synthetic(args.numel, args.reps)
    dhdr = ["digest", "GB/s (1 thread)", "bitwise", "result digest checked before writing"]
    print(" | ".join(dhdr))
    dig = digest_speeds(args.numel, args.reps)
    body = [
        "## Lossless sparse weight deltas (SparseRL-Sync)", "",
        f"Produced by `{cmd.strip()}` on {dt.date.today().isoformat()} (1 thread; shared 2-core CPU, "
        f"1-min load average {load:.2f} at the start, {os.getloadavg()[0]:.2f} after the synthetic rows). "
        "Goal: payload <= changed x (value bytes + 2) + bucket headers; "
        "reference: int32 index + value per change. GB/s = model bytes / (encode + apply time), "
        f"best of {args.reps}; the times include the base digests (a pass over the old state on each side), "
        "the result digests and the staging that make apply refuse a wrong base. \"Base digests known\": the "
        "sender passes `base_digests` (as `DeltaSync` does with the previous round's result digests), so only "
        "the receiver pays a pass; the payload is byte-identical. \"One digest pass\": hashing the whole old "
        "state once (encode pays one, apply one). Every payload was applied and "
        "checked bit-identical, then applied again and checked refused. Headers include the manifest "
        "(name, dtype, shape, base and result digest of every tensor).", "",
        md(hdr, syn), "",
        f"### Digest speed ({args.numel / 1e6:.0f}M-element fp32 tensor, {args.numel * 4 / 1e6:.0f} MB, best of "
        f"{args.reps}, same run)", "",
        "A tensor digest must be bitwise (so `-0.0`/`+0.0` and NaN payloads differ) and fast: encode + apply "
        "pay two passes of it. The chosen one is also additive over positions, so apply predicts the result's "
        "digest from the changed elements alone and checks it before writing anything.", "",
        md(dhdr, dig), "",
    ]
    if args.model != "none":
        rhdr = ["model weights", "update", "elements (tied once)", "changed", "model MiB", "payload MiB",
                "payload / model", "B / change", "dense-fallback tensors", "encode s", "apply s",
                "encode+apply GB/s", "GB/s, base digests known"]
        print(" | ".join(rhdr))
        real = real_case(args.model, args.steps, args.seq, args.reps)
        body += [f"### Real case: {args.model} before vs. after {args.steps} optimizer steps on random tokens "
                 f"(batch 2 x {args.seq})", "", md(rhdr, real), ""]
    write_section(Path(args.out), "bench_delta", "\n".join(body), "Formats, checkpoints and deltas")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
