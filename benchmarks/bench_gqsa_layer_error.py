"""Why GQSA W4S50 loses more than 2:4 on SmolLM2-135M: the layer-wise reconstruction error.

    python benchmarks/bench_gqsa_layer_error.py --blocks 2,15 --n-calib 8

For a few Linear layers of SmolLM2-135M, the inputs X are gathered on the *dense* model
(``--n-calib`` Shakespeare calibration windows of 512 tokens), and every one-shot rule prunes /
quantizes the same weight W from the same Hessian. The table gives the relative output error
``||(W - W') X||_F^2 / ||W X||_F^2`` (computed as ``tr(D X X^T D^T)`` with ``D = W - W'``):
SparseGPT unstructured 50%, 2:4 and groups of g = 16 / 8 / 4 consecutive inputs (the same OBS
sweep, float), then with int4 g64 quantization (GPTQ alone, SparseGPT's joint mode, GQSA). It
separates what the group pattern costs from what quantization costs, layer by layer, without
the compounding of a full-model run. A second table keeps the g16 float sweep and swaps only
the group score that picks the dropped groups: the library's sum of SparseGPT's saliencies
``w_j^2 / [U]_jj^2`` over the group (U = the Cholesky factor of H^-1 the sweep uses), the joint
OBS error of the group ``w_G^T ([H_rem^-1]_GG)^-1 w_G`` (H_rem = the Hessian of the columns not yet
swept), plain magnitude ``sum w_j^2``, and Wanda's ``sum w_j^2 H_jj``. A third table says where
the extra zeros of quantized rows come from: the share of *kept* weights that round to code 0,
and the share of 64-input grids whose final codes use less than +-7 steps (a grid chosen before
later OBS updates shrank its weights). No timing (no lock needed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from _env import header, load, load_line, write_atomic

from sparsecraft.data.text import build_protocol
from sparsecraft.models import load_model
from sparsecraft.oneshot.base import fast_lowest_k_mask, make_pruner
from sparsecraft.oneshot.sparsegpt import inverse_hessian_factor, sparsegpt_prune
from sparsecraft.oneshot.stats import InputStats
from sparsecraft.patterns import Unstructured, count_to_prune, parse_pattern

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results" / "gqsa_layer_error.md"
LAYERS = ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj")
W4 = {"bits": 4, "group": 64, "sym": True}
CASES = (  # label, method, options, pattern, sparsity
    ("50% unstr.", "sparsegpt", {}, "unstructured", 0.5),
    ("2:4", "sparsegpt", {}, "2:4", 0.0),
    ("g16 50%", "sparsegpt", {}, "block:1x16", 0.5),
    ("g8 50%", "sparsegpt", {}, "block:1x8", 0.5),
    ("g4 50%", "sparsegpt", {}, "block:1x4", 0.5),
    ("W4 (GPTQ)", "gptq", {"quantize": W4}, "unstructured", 0.0),
    ("W4S50 unstr.", "sparsegpt", {"quantize": W4}, "unstructured", 0.5),
    ("W4+2:4", "sparsegpt", {"quantize": W4}, "2:4", 0.0),
    ("W4S50 GQSA g16", "gqsa", {"quantize": W4, "group": 16}, "block:1x16", 0.5),
    ("W4S50 GQSA g8", "gqsa", {"quantize": W4, "group": 8}, "block:1x8", 0.5),
    ("W4S50 GQSA g4", "gqsa", {"quantize": W4, "group": 4}, "block:1x4", 0.5),
)


ZERO_CASES = tuple(c for c in CASES if c[0] in ("W4 (GPTQ)", "W4S50 unstr.", "W4S50 GQSA g16"))
SCORES = ("summed OBS (library)", "joint OBS of the group", "magnitude", "Wanda")


def group_mask_rule(kind: str, U: torch.Tensor, H: torch.Tensor, g: int = 16, sparsity: float = 0.5):
    """A ``block_mask`` for :func:`sparsegpt_prune`: drop the lowest-scoring groups of each block."""
    start = [0]

    def rule(block: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        rows, count = block.shape
        i1 = start[0]
        start[0] += count
        if kind == SCORES[0]:
            score = (block.pow(2) / d.pow(2)).reshape(rows, -1, g).sum(-1)
        elif kind == SCORES[1]:
            Ub = U[i1:i1 + count, i1:i1 + count]  # rows i1.. of U: H_rem^-1 = Ub^T Ub on this block
            score = torch.empty(rows, count // g)
            for j in range(count // g):
                cols = slice(j * g, (j + 1) * g)
                inv = torch.linalg.inv((Ub[:, cols].t() @ Ub[:, cols]).double()).float()
                score[:, j] = ((block[:, cols] @ inv) * block[:, cols]).sum(-1)
        elif kind == SCORES[2]:
            score = block.pow(2).reshape(rows, -1, g).sum(-1)
        else:
            score = (block.pow(2) * torch.diagonal(H)[i1:i1 + count]).reshape(rows, -1, g).sum(-1)
        keep = fast_lowest_k_mask(score, count_to_prune(sparsity, score.numel()))
        return (~keep).repeat_interleave(g, dim=1)

    return rule


def relative_error(w: torch.Tensor, new: torch.Tensor, xxt: torch.Tensor) -> float:
    d, w, h = (w - new).double(), w.double(), xxt.double()
    return float(((d @ h) * d).sum() / ((w @ h) * w).sum())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", default="2,15", help="comma-separated decoder block indices")
    ap.add_argument("--n-calib", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load0 = load()
    lm = load_model("smollm2-135m")
    proto = build_protocol(lm.tokenizer, "shakespeare", None, args.n_calib, 1, 512, 0)
    blocks = [int(b) for b in args.blocks.split(",")]
    mods = {(b, n): lm.model.model.layers[b].get_submodule(n) for b in blocks for n in LAYERS}
    stats = {k: InputStats(m.in_features, hessian=True) for k, m in mods.items()}
    hooks = [m.register_forward_hook(lambda mod, inp, out, k=k: stats[k].add(inp[0].detach()))
             for k, m in mods.items()]
    with torch.no_grad():
        for i in range(0, args.n_calib, 4):
            lm.model(proto.calib[i:i + 4])
    for h in hooks:
        h.remove()
    lines = ["| layer | " + " | ".join(c[0] for c in CASES) + " |", "|---" * (len(CASES) + 1) + "|"]
    for (b, name), mod in mods.items():
        st, w = stats[(b, name)], mod.weight.detach().float()
        errs = []
        for _, method, options, pattern, sparsity in CASES:
            st.cache.clear()
            pruner = make_pruner(method, **options)
            new, _ = pruner.prune(w.clone(), st, pruner.check_pattern(parse_pattern(pattern)), sparsity)
            errs.append(relative_error(w, new, st.H))
        lines.append(f"| {b}.{name} | " + " | ".join(f"{e:.4f}" for e in errs) + " |")
        print(lines[-1], flush=True)
    score_lines = ["| layer (g16 50%, float) | " + " | ".join(SCORES) + " |", "|---" * (len(SCORES) + 1) + "|"]
    for (b, name), mod in mods.items():
        st, w = stats[(b, name)], mod.weight.detach().float()
        H = st.hessian()
        U, dead = inverse_hessian_factor(H, 0.01)
        errs = [relative_error(w, sparsegpt_prune(w.clone(), U, dead, Unstructured(), 0.5, 128,
                                                  block_mask=group_mask_rule(kind, U, H))[0], st.H)
                for kind in SCORES]
        score_lines.append(f"| {b}.{name} | " + " | ".join(f"{e:.4f}" for e in errs) + " |")
        print(score_lines[-1], flush=True)
    zero_lines = ["| layer | " + " | ".join(f"{m}: kept -> 0 | {m}: grids under 7 steps" for m, *_ in ZERO_CASES)
                  + " |", "|---" * (2 * len(ZERO_CASES) + 1) + "|"]
    for (b, name), mod in mods.items():
        st, w = stats[(b, name)], mod.weight.detach().float()
        cells = []
        for _, method, options, pattern, sparsity in ZERO_CASES:
            st.cache.clear()
            pruner = make_pruner(method, **options)
            new, keep = pruner.prune(w.clone(), st, pruner.check_pattern(parse_pattern(pattern)), sparsity)
            qs = pruner.pop_quant()
            steps = (qs.codes(new) - qs.zero.repeat_interleave(W4["group"], 1)).abs()
            widest = steps.reshape(steps.shape[0], -1, W4["group"]).amax(-1).float()
            kept_zero = float(((new == 0) & keep).sum() / keep.sum())
            cells += [f"{kept_zero:.3f}", f"{float((widest < 7).float().mean()):.3f}"]
        zero_lines.append(f"| {b}.{name} | " + " | ".join(cells) + " |")
        print(zero_lines[-1], flush=True)
    text = "\n".join([
        *header("GQSA vs SparseGPT on single SmolLM2-135M layers: relative output error", "bench_gqsa_layer_error.py",
                args.threads),
        f"Inputs of the dense model on {args.n_calib} Shakespeare calibration windows of 512 tokens. "
        + load_line(load0, load()),
        "",
        "Relative output error ||(W - W') X||^2 / ||W X||^2 of one layer, every rule on the same W and the same "
        "Hessian (lower is better). Float columns: SparseGPT's OBS sweep with the pattern named (gN = groups of N "
        "consecutive inputs kept or dropped together, 50% of them dropped); W4 columns add int4 codes, groups of 64 "
        "inputs, symmetric.",
        "",
        *lines,
        "",
        "The group score alone (g16, 50%, float, the same sweep; only the rule that picks the dropped groups "
        "of each 128-column block changes):",
        "",
        *score_lines,
        "",
        "Zeros of the quantized rows: share of the kept weights that round to 0, and share of the 64-input grids "
        "whose widest final code is under 7 steps from the zero point (int4 symmetric uses up to 7 or 8):",
        "",
        *zero_lines,
        "",
    ])
    print(text)
    if not args.no_write:
        write_atomic(OUT, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
