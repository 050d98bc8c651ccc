"""Depth utilisation of dense vs 50%-sparse (Wanda) SmolLM2-135M: variance growth and layer effectiveness.

    python benchmarks/bench_depth.py                                  # 1 window of 512 tokens
    python benchmarks/bench_depth.py --n-eval 4 --n-calib 32          # fuller protocol

For the dense model and a copy pruned with ``sparsecraft.prune(model, --sparsity, criterion="wanda")``
(``--n-calib`` Shakespeare calibration windows of ``--seq-len``): the variance of the residual
stream after every block and its growth over the block's input, and the perplexity on ``--n-eval``
evaluation windows with each block skipped (``sparsecraft.analysis.depth``). Writes the "depth"
section of docs/results/attention.md and docs/results/depth.png.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

import torch
from _env import environment, load, load_line
from _sections import write_section

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results" / "attention.md"
PNG = ROOT / "docs" / "results" / "depth.png"


def plot(reports: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sparsecraft.atomic import save_figure

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, rep in reports.items():
        ax[0].plot(range(len(rep.variance)), rep.variance, marker=".", label=name)
        ax[1].plot(range(len(rep.effectiveness)), [100 * e for e in rep.effectiveness], marker=".", label=name)
    ax[0].set(yscale="log", xlabel="block", ylabel="Var(residual after block)", title="output variance")
    ax[1].set(yscale="symlog", xlabel="block skipped", ylabel="perplexity change (%)", title="layer effectiveness")
    for a in ax:
        a.legend()
        a.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def thirds(xs: list[float]) -> tuple[float, float, float]:
    n = len(xs)
    return tuple(statistics.mean(xs[i * n // 3 : (i + 1) * n // 3]) for i in range(3))  # type: ignore[return-value]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--n-calib", type=int, default=8)
    ap.add_argument("--n-eval", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from sparsecraft import prune
    from sparsecraft.analysis.depth import depth_report
    from sparsecraft.data.text import build_protocol
    from sparsecraft.models.loader import load_model

    load0 = load()
    lm = load_model(args.model)
    proto = build_protocol(lm.tokenizer, "shakespeare", n_calib=args.n_calib, n_eval=args.n_eval, seq_len=args.seq_len)
    sparse = copy.deepcopy(lm.model)
    prune(sparse, args.sparsity, criterion="wanda", calib=proto.calib, progress=False)
    reports = {}
    for name, model in (("dense", lm.model), (f"Wanda {args.sparsity:.0%}", sparse)):
        reports[name] = depth_report(model, proto.eval, progress=True)
        print(name, reports[name].ppl, flush=True)
    (dn, d), (sn, s) = reports.items()
    rows = [f"| {i} | {d.variance[i]:.3g} | {d.growth[i]:.2f} | {d.effectiveness[i]:+.2%} | {s.variance[i]:.3g} | "
            f"{s.growth[i]:.2f} | {s.effectiveness[i]:+.2%} |" for i in range(len(d.variance))]
    summary = []
    for name, rep in reports.items():
        e1, e2, e3 = thirds(rep.effectiveness)
        useless = sum(e < 0.01 for e in rep.effectiveness)
        summary.append(f"| {name} | {rep.ppl:.2f} | {rep.input_variance:.3g} -> {rep.variance[-1]:.3g} | "
                       f"{statistics.mean(rep.growth):.2f} | {e1:+.1%} / {e2:+.1%} / {e3:+.1%} | {useless} |")
    body = "\n".join([
        "## Depth utilisation: dense vs sparse SmolLM2-135M", "",
        f"Command: `python benchmarks/bench_depth.py {' '.join(sys.argv[1:])}`  ", environment(args.threads) + "  ", "",
        f"Sparse model: `sparsecraft.prune(model, {args.sparsity}, criterion=\"wanda\")` with {args.n_calib} "
        f"calibration windows of {args.seq_len} Shakespeare tokens. Measured on {proto.eval.shape[0]} evaluation "
        f"window(s) of {args.seq_len} tokens: variance of the residual stream after every block (all tokens and "
        "features) and its growth over the block's input; layer effectiveness = perplexity with the block "
        "skipped (output := input) / perplexity - 1. Plot: depth.png.", "",
        "| model | perplexity | variance: input -> last block | mean growth per block | "
        "effectiveness, mean of first / middle / last third | blocks whose removal costs < 1% |",
        "|---|---|---|---|---|---|", *summary, "",
        f"| block | {dn}: variance | growth | effectiveness | {sn}: variance | growth | effectiveness |",
        "|---|---|---|---|---|---|---|", *rows, "",
        load_line(load0, load()),
    ])
    print(body)
    if not args.no_write:
        write_section(OUT, "depth", body, "Attention sparsity")
        plot(reports, PNG)


if __name__ == "__main__":
    main()
