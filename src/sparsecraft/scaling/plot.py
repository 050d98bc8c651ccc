"""PNG of a fit: data (fit / held-out points), fitted curve, extrapolation and confidence band.

One-input laws are drawn as y against x on log-log axes, the curve extended past the data and
the bootstrap band shaded. Laws with several inputs are drawn as observed vs. predicted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sparsecraft import atomic
from sparsecraft.scaling.result import FitResult


def plot_fit(result: FitResult, path: str | Path, extend: float = 2.0) -> Path:
    """Write the plot of ``result`` to ``path`` (PNG); ``extend`` widens the x range (factor)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    m = result.fit_mask
    title = f"{result.law.name} fit of {result.y_name}"
    if len(result.law.inputs) == 1:
        x = result.x
        lo, hi = float(x.min()), float(x.max())
        grid = np.geomspace(lo / extend, hi * extend, 300)
        xf_max = float(x[m].max())
        xf_min = float(x[m].min())
        pred = result.predict(grid)
        inside = (grid >= xf_min) & (grid <= xf_max)
        band = result.band(grid)
        if band is not None:
            ax.fill_between(
                grid,
                band[0],
                band[1],
                color="tab:red",
                alpha=0.18,
                label=f"{int(result.level * 100)}% band (bootstrap)",
            )
        ax.plot(grid[inside], pred[inside], color="tab:red", lw=2, label="fit")
        left, right = grid < xf_min, grid > xf_max
        ax.plot(grid[right], pred[right], color="tab:red", lw=1.5, ls="--", label="extrapolation")
        ax.plot(grid[left], pred[left], color="tab:red", lw=1.5, ls="--")
        ax.plot(x[m], result.y[m], "o", color="black", label="fit points")
        if (~m).any():
            ax.plot(x[~m], result.y[~m], "o", color="tab:green", label="held out")
        ax.set_xscale("log")
        ax.set_xlabel(result.x_names[0] if result.x_names else "x")
        ax.set_ylabel(result.y_name)
        positive = np.all(result.y > 0) and np.all(pred[np.isfinite(pred)] > 0)
        if positive and result.y.max() > 10 * result.y.min():
            ax.set_yscale("log")
    else:
        pred = result.predict(result.x)
        ax.plot(result.y[m], pred[m], "o", color="black", label="fit points")
        if (~m).any():
            ax.plot(result.y[~m], pred[~m], "o", color="tab:green", label="held out")
        lim = [float(min(result.y.min(), pred.min())), float(max(result.y.max(), pred.max()))]
        ax.plot(lim, lim, color="tab:red", lw=1, label="y = prediction")
        ax.set_xlabel(f"observed {result.y_name}")
        ax.set_ylabel("predicted")
        title += f" vs ({', '.join(result.x_names)})"
    err = result.rmsle_holdout
    sub = f"RMSLE fit {result.rmsle_fit:.3g}" + (f", held out {err:.3g}" if err is not None else "")
    ax.set_title(f"{title}\n{sub}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return atomic.save_figure(fig, path, dpi=120)
