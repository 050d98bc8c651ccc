"""One-shot pruning beyond RAM: peak RSS vs model size and time per block, sequential onloading
(``offload="disk"``) against the whole model in memory, and the proof on a ~1.5B-parameter Llama
pruned under a hard address-space limit well below its size.

    flock /tmp/sparsecraft-heavy.lock python benchmarks/bench_scale.py --sizes small,1.5b,1.5b-4 --as-limit 2.5G

Steps (each prune runs in its own subprocess so its peak RSS is its own):
1. ``make``: write random-init Llama checkpoints in bf16 (normal(0, 0.02) weights, unit norms,
   one shard per block, written tensor by tensor so writing never holds the model) for each size;
2. ``run``: prune one of them with Wanda / SparseGPT (50%, ``--n-calib`` windows of
   ``--seq-len`` tokens), ``offload`` disk or none, and print a JSON line (peak RSS, VmPeak,
   wall time, per-block times, mask digest);
3. the driver follows :data:`PLAN`: the small model both ways (masks compared: Wanda bit for bit,
   SparseGPT weights to float tolerance), the 1.5B model onloaded under ``prlimit --as`` (an
   address-space limit; see the results file for why its value is larger than the RSS), and
   writes docs/results/scale.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _env  # noqa: E402

SIZES = {  # name: hidden, intermediate, layers, heads, kv heads, vocab
    "small": (512, 1408, 8, 8, 8, 32000),
    "medium": (1024, 2816, 16, 16, 4, 32000),
    "1.5b": (2048, 5632, 32, 32, 4, 32000),
    "1.5b-4": (2048, 5632, 4, 32, 4, 32000),  # the 1.5b model's blocks, 4 of them
}
#: what runs on each size: both engines on small (masks compared); the 1.5b model onloaded under
#: the address-space limit with Wanda and SparseGPT (``--methods`` picks some of them); both on 4
#: blocks of the same shape under the same limit (how the peak depends on depth)
PLAN = {"small": (("wanda", "sparsegpt"), ("none", "disk"), False),
        "1.5b": (("wanda", "sparsegpt"), ("auto",), True), "1.5b-4": (("wanda", "sparsegpt"), ("disk",), True)}


def n_params(size: str) -> int:
    h, i, n, heads, kv, v = SIZES[size]
    hd = h // heads
    block = h * h * 2 + h * kv * hd * 2 + 3 * h * i + 2 * h
    return n * block + 2 * v * h + h


def make(size: str, folder: Path, seed: int = 0) -> None:
    """Random-init Llama checkpoint in bf16, one shard per block (HF layout + index)."""
    from transformers import LlamaConfig

    from sparsecraft.distributed.shards import ShardWriter

    h, i, n, heads, kv, v = SIZES[size]
    cfg = LlamaConfig(vocab_size=v, hidden_size=h, intermediate_size=i, num_hidden_layers=n,
                      num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=2048,
                      tie_word_embeddings=False, torch_dtype="bfloat16")
    g = torch.Generator().manual_seed(seed)
    hd = h // heads

    def w(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * 0.02).to(torch.bfloat16)

    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    cfg.save_pretrained(str(tmp))
    writer = ShardWriter(tmp, n + 1)
    writer.write({"model.embed_tokens.weight": w(v, h), "model.norm.weight": torch.ones(h, dtype=torch.bfloat16),
                  "lm_head.weight": w(v, h)})
    for layer in range(n):
        p = f"model.layers.{layer}."
        writer.write({p + "self_attn.q_proj.weight": w(h, h), p + "self_attn.k_proj.weight": w(kv * hd, h),
                      p + "self_attn.v_proj.weight": w(kv * hd, h), p + "self_attn.o_proj.weight": w(h, h),
                      p + "mlp.gate_proj.weight": w(i, h), p + "mlp.up_proj.weight": w(i, h),
                      p + "mlp.down_proj.weight": w(h, i),
                      p + "input_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
                      p + "post_attention_layernorm.weight": torch.ones(h, dtype=torch.bfloat16)})
    writer.finish()
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def vm_peak() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmPeak:"):
            return int(line.split()[1]) * 1024
    return 0


def run(args: argparse.Namespace) -> None:
    """One prune in this process; prints one JSON line."""
    import sparsecraft
    from sparsecraft.oneshot.memory import PeakRSS
    from sparsecraft.oneshot.onloaded import read_masks

    torch.set_num_threads(args.threads)
    from sparsecraft.oneshot.memory import current_rss

    base = (current_rss() or 0) / 2**20
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, SIZES[args.size][5], (args.n_calib, args.seq_len), generator=g)
    how = {"criterion": "wanda"} if args.method == "wanda" else {"method": "sparsegpt"}
    t0 = time.perf_counter()
    with PeakRSS(0.02) as mem:
        rep = sparsecraft.prune(args.model, 0.5, calib=ids, batch_size=args.batch_size, out=args.out,
                                offload=args.offload, progress=False, **how)
    wall = time.perf_counter() - t0
    masks = read_masks(args.out)
    digest = sum(int(m.sum()) * (k + 1) for k, m in enumerate(masks[n] for n in sorted(masks)))
    print(json.dumps({"size": args.size, "method": args.method, "offload": rep.info["offload"],
                      "peak_rss_mb": round(mem.peak_mb, 1), "baseline_rss_mb": round(base, 1),
                      "vm_peak_mb": round(vm_peak() / 2**20, 1),
                      "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                      "wall_s": round(wall, 1), "block_times_s": rep.info.get("block_times_s"),
                      "sparsity": rep.sparsity, "mask_digest": digest}))


def compare(a: Path, b: Path, method: str) -> str:
    """Masks equal bit for bit? and the largest weight difference (in-memory vs onloaded)."""
    from safetensors import safe_open

    from sparsecraft.oneshot.onloaded import read_masks

    ma, mb_ = read_masks(a), read_masks(b)
    same = ma.keys() == mb_.keys() and all(torch.equal(ma[k], mb_[k]) for k in ma)
    worst = 0.0
    for k in ma:
        ta, tb = _tensor(a, k, safe_open), _tensor(b, k, safe_open)
        worst = max(worst, float((ta.float() - tb.float()).abs().max()))
    return f"masks {'bit-identical' if same else 'DIFFER'}, max |weight diff| {worst:.3g}"


def _tensor(folder: Path, key: str, safe_open) -> torch.Tensor:  # noqa: ANN001
    index = folder / "model.safetensors.index.json"
    fname = json.loads(index.read_text())["weight_map"][key] if index.exists() else "model.safetensors"
    with safe_open(str(folder / fname), framework="pt") as f:
        return f.get_tensor(key)


def sub(args: argparse.Namespace, size: str, method: str, offload: str, model: Path, out: Path,
        as_limit: str | None = None) -> dict:
    cmd = [sys.executable, __file__, "run", "--size", size, "--method", method, "--offload", offload,
           "--model", str(model), "--out", str(out), "--n-calib", str(args.n_calib), "--seq-len", str(args.seq_len),
           "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    if as_limit:
        cmd = ["prlimit", f"--as={_bytes(as_limit)}", *cmd]
    print("+", " ".join(cmd), flush=True)
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "MALLOC_ARENA_MAX": "2"})
    if res.returncode != 0:
        return {"size": size, "method": method, "offload": offload, "error": res.stderr.strip().splitlines()[-1:]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def _bytes(text: str) -> int:
    from sparsecraft.distributed.memory_budget import parse_size

    return parse_size(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sp = p.add_subparsers(dest="cmd")
    r = sp.add_parser("run")
    for q in (p, r):
        q.add_argument("--n-calib", type=int, default=8)
        q.add_argument("--seq-len", type=int, default=128)
        q.add_argument("--batch-size", type=int, default=4)
        q.add_argument("--threads", type=int, default=1, help="1: OpenMP threads spin badly on a loaded machine")
    r.add_argument("--size", required=True)
    r.add_argument("--method", required=True)
    r.add_argument("--offload", default="disk")
    r.add_argument("--model", required=True)
    r.add_argument("--out", required=True)
    p.add_argument("--sizes", default="small,1.5b-4,1.5b")
    p.add_argument("--methods", default="", help="only these of each size's methods (default: all)")
    p.add_argument("--as-limit", default="2.4G", help="address-space limit of the 1.5b runs (prlimit --as)")
    p.add_argument("--work", default="/tmp/sparsecraft-scale")
    p.add_argument("--keep", action="store_true", help="keep the model folders")
    p.add_argument("--results", default=str(Path(__file__).resolve().parents[1] / "docs/results/scale.md"))
    args = p.parse_args()
    if args.cmd == "run":
        return run(args)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    load0, rows, checks = _env.load(), [], []
    cache_file = work / "sizes.jsonl"  # (size, method) pairs finished by an earlier invocation are reused
    cache: dict[tuple[str, str], dict] = {}
    if cache_file.exists():
        for line in cache_file.read_text().splitlines():
            entry = json.loads(line)
            for method in {r["method"] for r in entry["rows"]}:
                cache[(entry["size"], method)] = {
                    "rows": [r for r in entry["rows"] if r["method"] == method],
                    "checks": [c for c in entry["checks"] if c[1] == method]}
    wanted = args.methods.split(",") if args.methods else None
    for size in args.sizes.split(","):
        methods, offloads, big = PLAN[size]
        todo = [m for m in methods if (wanted is None or m in wanted)]
        for method in [m for m in todo if (size, m) in cache]:
            rows += cache[(size, method)]["rows"]
            checks += [tuple(c) for c in cache[(size, method)]["checks"]]
        todo = [m for m in todo if (size, m) not in cache]
        if not todo:
            continue
        model = work / f"llama-{size}"
        free = shutil.disk_usage(work).free
        need = n_params(size) * 2 * 3  # input + two outputs
        if free < need * 1.2:
            raise SystemExit(f"not enough disk in {work}: {free / 2**30:.1f} GiB free, {need / 2**30:.1f} GiB needed")
        t0 = time.perf_counter()
        if not (model / "model.safetensors.index.json").exists():
            make(size, model)
        print(f"made {model} in {time.perf_counter() - t0:.0f} s", flush=True)
        failed = False
        for method in todo:
            outs, m_rows, m_checks = {}, [], []
            for offload in offloads:
                out = work / f"out-{size}-{method}-{offload}"
                res = sub(args, size, method, offload, model, out, args.as_limit if big else None)
                res["as_limit"] = args.as_limit if big else None
                m_rows.append(res)
                outs[offload] = out
                print(json.dumps(res), flush=True)
            if len(outs) == 2 and all((o / "masks").exists() for o in outs.values()):
                m_checks.append((size, method, compare(outs["none"], outs["disk"], method)))
            for o in outs.values():
                shutil.rmtree(o, ignore_errors=True)
            rows += m_rows
            checks += m_checks
            if any("error" in r for r in m_rows):
                failed = True
            else:
                with open(cache_file, "a") as f:
                    f.write(json.dumps({"size": size, "rows": m_rows, "checks": m_checks}) + "\n")
        if not args.keep and not failed:
            shutil.rmtree(model, ignore_errors=True)
    write_results(args, rows, checks, load0, _env.load())


def write_results(args: argparse.Namespace, rows: list[dict], checks: list, load0: float, load1: float) -> None:
    lines = _env.header("One-shot pruning beyond RAM: sequential onloading", "bench_scale.py", args.threads)
    lines += [_env.load_line(load0, load1), "",
              f"Random-init Llama checkpoints in bf16 (one shard per block), 50% unstructured, {args.n_calib} "
              f"calibration windows x {args.seq_len} tokens, batch {args.batch_size}. `offload=none` loads the "
              "whole model (stored dtype) and prunes in memory; `offload=disk` reads one block at a time "
              "(sequential onloading). Peak RSS is sampled every 20 ms inside the prune call; VmPeak is the "
              "process's peak address space.", "",
              "| model | params | bf16 size | method | offload | limit (prlimit --as) | peak RSS (MB) "
              "| RSS before prune (MB) | VmPeak (MB) | wall (s) | median s / block | result |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        size = r["size"]
        params = n_params(size)
        times = sorted(r.get("block_times_s") or [0])
        med = times[len(times) // 2]
        mode = str(r.get("offload", ""))
        result = "error: " + " ".join(r["error"]) if "error" in r else f"sparsity {r['sparsity']:.4f}"
        lines.append(f"| {size} | {params / 1e9:.2f}B | {params * 2 / 2**30:.2f} GiB | {r['method']} | {mode} | "
                     f"{r.get('as_limit') or '-'} | {r.get('peak_rss_mb', '-')} | {r.get('baseline_rss_mb', '-')} | "
                     f"{r.get('vm_peak_mb', '-')} | "
                     f"{r.get('wall_s', '-')} | {med} | {result} |")
    lines += ["", "In-memory vs onloaded on the same checkpoint:", ""]
    lines += [f"- {size} {method}: {text}" for size, method, text in checks]
    _env.write_atomic(Path(args.results), "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
