"""PNG plots of a language-model training run (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sparsecraft import atomic


def plot_lm_curves(curves: list[dict[str, Any]], path: Path) -> Path:
    """Training and validation loss per evaluation step (left), learning rate (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [c["step"] for c in curves]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(steps, [c["train_loss"] for c in curves], "o-", label="train (mean since last eval)")
    a.plot(steps, [c["val_loss"] for c in curves], "s-", label="validation")
    a.set_xlabel("step"), a.set_ylabel("cross-entropy (nats/token)"), a.set_title("loss"), a.legend()
    b.plot(steps, [c["lr"] for c in curves], "-")
    b.set_xlabel("step"), b.set_ylabel("learning rate"), b.set_title("learning rate")
    atomic.save_figure(fig, path, dpi=110, bbox_inches="tight")
    return path


def plot_expert_load(curves: list[dict[str, Any]], path: Path) -> Path:
    """Coefficient of variation of the expert load per MoE layer over training (validation tokens)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    layers = sorted({name for c in curves for name in c.get("load_cv", {})})
    for name in layers:
        pts = [(c["step"], c["load_cv"][name]) for c in curves if name in c.get("load_cv", {})]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], ".-", label=name)
    ax.set_xlabel("step"), ax.set_ylabel("load CV (std / mean)"), ax.set_title("expert load balance")
    if layers:
        ax.legend(fontsize=7)
    atomic.save_figure(fig, path, dpi=110, bbox_inches="tight")
    return path
