"""Essential-sparsity sweeps: prune one-shot at a list of sparsities, evaluate each, plot the
curve and mark the dense-tolerance point and the knee (definitions in
:mod:`sparsecraft.analysis.knee`).

The model is restored to its dense weights before every point, so each point is an
independent one-shot prune of the dense model (Jaiswal et al. 2023 use global magnitude over
all encoder Linear weights; any :func:`sparsecraft.prune` criterion or method works too).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from sparsecraft import atomic
from sparsecraft.analysis.knee import knee_point, tolerance_point
from sparsecraft.masks import remove_masks


@dataclass
class SweepPoint:
    sparsity: float  #: requested
    true_sparsity: float  #: zeros over the pruned layers
    metric: float
    prune_time_s: float


@dataclass
class SweepResult:
    metric: str
    higher_is_better: bool
    dense: float
    tolerance: float
    points: list[SweepPoint] = field(default_factory=list)

    @property
    def tolerance_point(self) -> float | None:
        return tolerance_point([p.sparsity for p in self.points], [p.metric for p in self.points],
                               self.dense, self.tolerance, self.higher_is_better)

    @property
    def knee(self) -> float | None:
        return knee_point([p.sparsity for p in self.points], [p.metric for p in self.points], self.dense)

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "higher_is_better": self.higher_is_better, "dense": self.dense,
                "tolerance": self.tolerance, "tolerance_point": self.tolerance_point, "knee": self.knee,
                "points": [asdict(p) for p in self.points]}

    def to_markdown(self) -> str:
        lines = [f"| sparsity | true sparsity | {self.metric} | vs dense | prune time (s) |", "|---|---|---|---|---|"]
        for p in self.points:
            rel = (p.metric / self.dense - 1.0) * 100 if self.dense else float("nan")
            lines.append(f"| {p.sparsity:.2f} | {p.true_sparsity:.4f} | {p.metric:.4f} | {rel:+.2f}% | "
                         f"{p.prune_time_s:.2f} |")
        tp, kn = self.tolerance_point, self.knee
        lines.append("")
        lines.append(f"dense {self.metric}: {self.dense:.4f}; dense-tolerance point ({self.tolerance:.0%}): "
                     f"{'none' if tp is None else f'{tp:.2f}'}; knee: {'none' if kn is None else f'{kn:.2f}'}")
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike, title: str = "") -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = Path(path)
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [p.sparsity for p in self.points]
        ax.plot(xs, [p.metric for p in self.points], "o-", label=self.metric)
        ax.axhline(self.dense, color="k", ls="--", lw=1, label="dense")
        if self.tolerance_point is not None:
            ax.axvline(self.tolerance_point, color="g", ls=":", label=f"within {self.tolerance:.0%} of dense")
        if self.knee is not None:
            ax.axvline(self.knee, color="r", ls="-.", label="knee")
        if not self.higher_is_better and max(p.metric for p in self.points) > 10 * self.dense > 0:
            ax.set_yscale("log")
        ax.set_xlabel("sparsity")
        ax.set_ylabel(self.metric)
        ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        return atomic.save_figure(fig, path, dpi=110)


def run_sweep(
    model: nn.Module,
    sparsities: Sequence[float],
    prune_fn: Callable[[nn.Module, float], float],
    evaluate: Callable[[nn.Module], float],
    metric: str,
    higher_is_better: bool,
    tolerance: float = 0.01,
    progress: bool = True,
    on_point: Callable[[SweepResult], None] | None = None,
) -> SweepResult:
    """Sweep: ``prune_fn(model, s) -> true sparsity`` then ``evaluate(model)`` for every s.

    The dense metric is measured first; the model ends dense again (weights restored).
    """
    dense_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    result = SweepResult(metric, higher_is_better, evaluate(model), tolerance)
    try:
        for s in tqdm(list(sparsities), desc="sparsity sweep", file=sys.stderr, disable=not progress):
            remove_masks(model)
            model.load_state_dict(dense_state)
            if float(s) == 0.0:
                result.points.append(SweepPoint(0.0, 0.0, result.dense, 0.0))
            else:
                t0 = time.perf_counter()
                true_s = prune_fn(model, float(s))
                elapsed = time.perf_counter() - t0
                result.points.append(SweepPoint(float(s), float(true_s), float(evaluate(model)), elapsed))
            if on_point is not None:
                on_point(result)
    finally:
        remove_masks(model)
        with torch.no_grad():
            model.load_state_dict(dense_state)
    return result
