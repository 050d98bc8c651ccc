"""OWL sweep on SmolLM2-135M: Wanda at 70% with OWL block budgets for M x lambda, beside
uniform Wanda, on the Shakespeare protocol of ``bench_oneshot.py``.

OWL (Yin et al., ICML 2024) gives block l the sparsity ``target - (a_l - mean a)`` with
``a_l = 2 lambda (D_l - min D) / (max D - min D)`` and ``D_l`` the fraction of the block's Wanda
scores above ``M`` times their mean, measured on the dense model. Work is shared where the
maths allows: the dense input norms are collected once and give the outlier ratios for every
M; only the pruning pass (its block inputs depend on the earlier pruned blocks) and the
evaluation run once per configuration.

Checks written into the table:

* the block sparsities of :func:`sparsecraft.oneshot.owl.owl_sparsities` against an
  independent port of the reference formula (luuyin/OWL ``lib/prune_all.py``: outlier ratio in
  percent, min-max scaled by ``Lamda * 2``, minus its mean plus ``1 - sparsity`` = density,
  sparsity = 1 - density), on the same statistics;
* the masks of the shared-work path (the block sparsities passed to ``sparsecraft.prune`` as an
  explicit per-layer map) against ``sparsecraft.prune(..., distribution="owl")`` at M = 5,
  lambda = 0.08 (same masks = the sweep measures the library's own OWL);
* ``reversed`` control rows: the same budgets mirrored around the target (outlier-rich blocks
  pruned *more*), to show which direction helps this model.

Rows are kept in a JSON file beside the results (``--state``) so a stopped sweep resumes.
Run (a quality benchmark; minutes per configuration on 2 cores)::

    python benchmarks/bench_owl.py --n-calib 8                      # reduced grid
    python benchmarks/bench_owl.py --points 5:0.08,3:0.02 --controls 5:0.08   # full protocol
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _env import command, environment  # noqa: E402
from _sections import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "results" / "oneshot.md"


def reference_owl_sparsities(per_block, norms, m: float, lam: float, target: float) -> list[float]:
    """The reference procedure, written out from luuyin/OWL ``prune_wanda_outlier``: per block
    the Wanda metric |W| * sqrt(activation energy) of all Linear layers concatenated, the
    percentage above M * mean, then the density formula and sparsity = 1 - density."""
    ratios = []
    for ts, nb in zip(per_block, norms):
        flat = []
        for t in ts:
            w = t.param.detach().float()
            if w.shape[1] != nb[t.name].numel():  # Conv1D stores (in, out)
                w = w.t()
            flat.append((w.abs() * nb[t.name].reshape(1, -1)).flatten())
        scores = torch.cat(flat)
        ratios.append(float((scores > scores.mean() * m).sum()) / scores.numel() * 100)
    r = np.array(ratios)
    r = (r - r.min()) * (1 / (r.max() - r.min()) * lam * 2)
    r = r - np.mean(r) + (1 - target)
    return [1 - float(x) for x in r]


def mask_digest(per_block) -> str:
    """sha256 of every target's keep-mask, in block order (equal digests = equal masks)."""
    from sparsecraft.masks import MASK_SUFFIX

    h = hashlib.sha256()
    for ts in per_block:
        for t in ts:
            h.update(np.packbits(getattr(t.module, t.param_name + MASK_SUFFIX).numpy().ravel()).tobytes())
    return h.hexdigest()[:16]


def parse_points(text: str) -> list[tuple[float, float]]:
    return [(float(p.split(":")[0]), float(p.split(":")[1])) for p in text.split(",") if p.strip()]


def render(state: dict, target: float) -> str:
    rows = state["rows"]
    lams = sorted({r["lambda"] for r in rows if r["kind"] in ("owl", "reversed")})
    cell = {(r["kind"], r["m"], r["lambda"]): r for r in rows if r["kind"] != "uniform"}
    uni = next((r for r in rows if r["kind"] == "uniform"), None)
    n, seed = state["n_calib"], state.get("seed", 0)
    drawn = (f"the protocol's first {n} calibration windows" if seed == 0
             else f"{n} calibration windows drawn with seed {seed} (the protocol's is 0)")
    lines = [f"## OWL sweep: Wanda {round(target * 100)}% with OWL block budgets ({n} x 512 calibration windows"
             + (f", seed {seed})" if seed else ")"), "",
             f"Command: `{state['command']}`  ", state["environment"] + "  ",
             f"Calibration: {drawn}; evaluation: {state['n_eval']} x 512 "
             "evaluation windows (dense 56.48 on 16). Perplexity per (M, lambda)."]
    if uni:
        lines.append(f"Uniform Wanda (every block at the target): **{uni['perplexity']:.2f}**.")
    lines.append("")
    head = "| M \\ lambda | " + " | ".join(f"{x:g}" for x in lams) + " |"
    lines += [head, "|" + "---|" * (len(lams) + 1)]
    for kind in ("owl", "reversed"):
        for m in sorted({r["m"] for r in rows if r["kind"] == kind}):
            cells = []
            for lam in lams:
                r = cell.get((kind, m, lam))
                cells.append("-" if r is None else f"{r['perplexity']:.2f} ({min(r['block_sparsities']):.3f}.."
                             f"{max(r['block_sparsities']):.3f})")
            label = f"{m:g}" if kind == "owl" else f"{m:g} reversed"
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Cells: perplexity (lowest..highest block sparsity). `reversed`: the same budgets mirrored "
              "around the target, so blocks with *more* outliers are pruned *more*.", ""]
    owl_rows = [r for r in rows if r["kind"] == "owl"]
    if owl_rows:
        best = min(owl_rows, key=lambda r: r["perplexity"])
        diff = max(r["max_abs_diff_vs_reference"] for r in owl_rows)
        lines += [f"Best OWL point: M = {best['m']:g}, lambda = {best['lambda']:g}: {best['perplexity']:.2f}"
                  + (f" (uniform {uni['perplexity']:.2f})." if uni else "."),
                  f"Block sparsities vs the independent port of the reference formula on the same statistics: "
                  f"largest |difference| {diff:.1e} over all {len(owl_rows)} OWL points."]
    if state.get("public_check"):
        c = state["public_check"]
        lines.append(f"`sparsecraft.prune(criterion='wanda', distribution={{'type': 'owl', 'm': {c['m']:g}, "
                     f"'lam': {c['lambda']:g}}})` gives "
                     f"{'the same masks as' if c['same'] else 'DIFFERENT masks from'} this sweep's shared-work path.")
    r5 = next((r for r in owl_rows if r["m"] == 5 and r["lambda"] == 0.08), None)
    d5 = state["ratios"].get("5.0")
    if r5 is not None and d5 is not None:
        blocks = range(len(d5))
        lines += ["", "Per block at M = 5: outlier ratio D (%), and the block sparsity at lambda = 0.08 from the "
                  "library and from the reference formula:", "",
                  "| block | " + " | ".join(str(i) for i in blocks) + " |", "|" + "---|" * (len(d5) + 1),
                  "| D (%) | " + " | ".join(f"{100 * x:.2f}" for x in d5) + " |",
                  "| sparsity | " + " | ".join(f"{x:.3f}" for x in r5["block_sparsities"]) + " |",
                  "| reference | " + " | ".join(f"{x:.3f}" for x in r5["reference_sparsities"]) + " |"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-calib", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0, help="calibration draw (0 = the protocol's)")
    ap.add_argument("--n-eval", type=int, default=16, help="evaluation windows (16 = the protocol)")
    ap.add_argument("--sparsity", type=float, default=0.7)
    ap.add_argument("--ms", default="3,5,7,10")
    ap.add_argument("--lambdas", default="0.02,0.04,0.08,0.12,0.2")
    ap.add_argument("--points", default=None, help="M:lambda,... instead of the M x lambda grid")
    ap.add_argument("--controls", default="5:0.08", help="M:lambda points also run reversed ('' = none)")
    ap.add_argument("--no-public-check", action="store_true", help="skip the distribution='owl' mask check")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--state", type=Path, default=None,
                    help="rows JSON (default docs/results/oneshot_owl_<n>[_seed<s>].json)")
    ap.add_argument("--render-only", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    tag = f"{args.n_calib}" + (f"_seed{args.seed}" if args.seed else "")
    state_path = args.state or args.out.with_name(f"oneshot_owl_{tag}.json")
    section = f"bench_owl_{tag}"
    title = "One-shot pruning of SmolLM2-135M (Shakespeare protocol)"
    state = json.loads(state_path.read_text()) if state_path.is_file() else None
    if args.render_only:
        write_section(args.out, section, render(state, args.sparsity), title)
        return 0
    points = parse_points(args.points) if args.points else [
        (float(m), float(lam)) for m in args.ms.split(",") for lam in args.lambdas.split(",")]
    controls = parse_points(args.controls) if args.controls else []

    import sparsecraft
    from sparsecraft.atomic import write_json
    from sparsecraft.data.text import build_protocol
    from sparsecraft.evaluation.perplexity import perplexity
    from sparsecraft.masks import remove_masks
    from sparsecraft.models import load_model
    from sparsecraft.oneshot.api import block_outlier_ratios, dense_input_norms
    from sparsecraft.oneshot.blockwise import batched, block_targets, find_blocks
    from sparsecraft.oneshot.owl import owl_sparsities

    lm = load_model("smollm2-135m")
    model = lm.model
    proto = build_protocol(lm.tokenizer, "shakespeare", n_calib=args.n_calib, n_eval=args.n_eval,
                           seed=args.seed)
    batches = batched(proto.calib, 8)
    per_block = block_targets(model, find_blocks(model))
    dense = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if state is None:
        state = {"n_calib": args.n_calib, "n_eval": args.n_eval, "seed": args.seed, "rows": [], "ratios": {}}
    state["command"] = command("bench_owl.py")
    state["environment"] = environment(args.threads)
    t0 = time.perf_counter()
    norms = dense_input_norms(model, batches, per_block, progress=False)
    print(f"dense input norms: {time.perf_counter() - t0:.0f} s", flush=True)
    ms = sorted({m for m, _ in points + controls})
    ratios = {m: block_outlier_ratios(per_block, norms, m) for m in ms}
    state["ratios"] = {str(m): r for m, r in ratios.items()}
    # the reference port reads the weights too: compute it now, while they are dense
    reference = {(m, lam): reference_owl_sparsities(per_block, norms, m, lam, args.sparsity) for m, lam in points}

    def save() -> None:
        write_json(state_path, state)
        write_section(args.out, section, render(state, args.sparsity), title)

    def done(kind, m, lam):
        return any(r["kind"] == kind and r["m"] == m and r["lambda"] == lam for r in state["rows"])

    def run(kind: str, m: float, lam: float, block_s: list[float], extra: dict) -> None:
        remove_masks(model)
        model.load_state_dict(dense)
        t = time.perf_counter()
        # the block sparsities as an explicit per-layer map: exact names, so no key matches another layer
        explicit = {f"^{re.escape(t.name)}$": block_s[i] for i, ts in enumerate(per_block) for t in ts}
        rep = sparsecraft.prune(model, args.sparsity, criterion="wanda", calib=proto.calib, progress=False,
                                distribution={"type": "explicit", "sparsities": explicit})
        wall = time.perf_counter() - t
        row = {"kind": kind, "m": m, "lambda": lam, "block_sparsities": block_s, "prune_s": round(wall, 1),
               "perplexity": perplexity(model, proto.eval, 2, False),
               "true_sparsity": rep.sparsity, "masks": mask_digest(per_block), **extra}
        state["rows"].append(row)
        print(f"{kind:>8} M={m:<4g} lambda={lam:<5g} ppl {row['perplexity']:8.2f}  prune {wall:5.0f} s", flush=True)
        save()

    if not done("uniform", 0.0, 0.0):
        run("uniform", 0.0, 0.0, [args.sparsity] * len(per_block), {})
    for m, lam in points:
        if done("owl", m, lam):
            continue
        s = owl_sparsities(ratios[m], args.sparsity, lam)
        ref = reference[(m, lam)]
        run("owl", m, lam, s, {"reference_sparsities": ref,
                               "max_abs_diff_vs_reference": max(abs(a - b) for a, b in zip(s, ref))})
    for m, lam in controls:
        if not done("reversed", m, lam):
            s = owl_sparsities(ratios[m], args.sparsity, lam)
            run("reversed", m, lam, [2 * args.sparsity - x for x in s], {})
    if not args.no_public_check and done("owl", 5.0, 0.08) and "public_check" not in state:
        remove_masks(model)
        model.load_state_dict(dense)
        sparsecraft.prune(model, args.sparsity, criterion="wanda", calib=proto.calib, progress=False,
                          distribution={"type": "owl", "m": 5.0, "lam": 0.08})
        mine = next(r for r in state["rows"] if r["kind"] == "owl" and r["m"] == 5.0 and r["lambda"] == 0.08)
        state["public_check"] = {"m": 5.0, "lambda": 0.08, "same": mask_digest(per_block) == mine["masks"]}
        save()
    print(render(state, args.sparsity))
    return 0


if __name__ == "__main__":
    sys.exit(main())
