"""PNG plots of a training run (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sparsecraft import atomic


def _atomic_savefig(fig: Any, path: Path) -> None:
    atomic.save_figure(fig, path, dpi=110, bbox_inches="tight")


def plot_curves(curves: list[dict[str, Any]], path: Path) -> Path:
    """Loss (train/test) and accuracy (train/test) per epoch, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [c["epoch"] for c in curves]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(ep, [c["train_loss"] for c in curves], "o-", label="train")
    a.plot(ep, [c["test_loss"] for c in curves], "s-", label="test")
    a.set_xlabel("epoch"), a.set_ylabel("cross-entropy"), a.set_title("loss"), a.legend()
    b.plot(ep, [100 * c["train_accuracy"] for c in curves], "o-", label="train")
    b.plot(ep, [100 * c["test_accuracy"] for c in curves], "s-", label="test")
    b.set_xlabel("epoch"), b.set_ylabel("accuracy (%)"), b.set_title("accuracy"), b.legend()
    _atomic_savefig(fig, path)
    return path


def plot_sparsity(curves: list[dict[str, Any]], target: list[tuple[int, float]], updates: list[dict[str, Any]],
                  steps_per_epoch: int, path: Path) -> Path:  # fmt: skip
    """Measured sparsity per epoch, the method's target schedule, and mask flips per update."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot([c["epoch"] for c in curves], [100 * c["sparsity"] for c in curves], "o-", label="measured (end of epoch)")
    if target:
        a.plot([t / steps_per_epoch for t, _ in target], [100 * s for _, s in target], "-", label="target schedule")
    a.set_xlabel("epoch"), a.set_ylabel("sparsity (%)"), a.set_title("sparsity over training"), a.legend()
    if updates:
        b.plot([u["step"] / steps_per_epoch for u in updates], [u["dropped"] for u in updates], ".-", label="dropped")
        b.plot([u["step"] / steps_per_epoch for u in updates], [u["grown"] for u in updates], ".-", label="grown")
        b.legend()
    b.set_xlabel("epoch"), b.set_ylabel("weights"), b.set_title("mask changes per update")
    _atomic_savefig(fig, path)
    return path
