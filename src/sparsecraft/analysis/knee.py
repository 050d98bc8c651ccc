"""Where a sparsity curve stops being free: the dense-tolerance point and the knee.

"The Essential Sparsity of Large Pre-trained Models" (Jaiswal, Liu, Chen & Wang, 2023)
observes a "sharp dropping point" of one-shot magnitude pruning but gives no algorithm for it.
sparsecraft defines two points (documented decision):

* **dense-tolerance point**: the largest swept sparsity s such that *every* swept sparsity
  <= s keeps the metric within ``tolerance`` (default 1%) of the dense value: for a
  lower-is-better metric (perplexity) metric <= dense * (1 + tol); for higher-is-better
  (similarity, accuracy) metric >= dense * (1 - tol). The requirement on all smaller
  sparsities makes it the end of the flat region, not a lucky point after a dip.
* **knee**: Kneedle-style (Satopaa et al. 2011). The degradation d(s) = |metric(s) - dense| is
  normalised with the sparsity to [0, 1] (x = (s - s_min)/(s_max - s_min), y = d / max d);
  the knee is the swept sparsity where x - y is largest, i.e. the point farthest below the
  chord from the first to the last point: where slow degradation turns into fast. If no point
  lies below the chord (x - y <= 0 everywhere: no flat start), there is no knee (None).
"""

from __future__ import annotations

from collections.abc import Sequence


def _sorted(sparsities: Sequence[float], metrics: Sequence[float]) -> list[tuple[float, float]]:
    if len(sparsities) != len(metrics):
        raise ValueError("sparsities and metrics differ in length")
    return sorted(zip(map(float, sparsities), map(float, metrics)))


def within_tolerance(metric: float, dense: float, tolerance: float, higher_is_better: bool) -> bool:
    if higher_is_better:
        return metric >= dense * (1.0 - tolerance) if dense >= 0 else metric >= dense * (1.0 + tolerance)
    return metric <= dense * (1.0 + tolerance) if dense >= 0 else metric <= dense * (1.0 - tolerance)


def tolerance_point(
    sparsities: Sequence[float],
    metrics: Sequence[float],
    dense: float,
    tolerance: float = 0.01,
    higher_is_better: bool = False,
) -> float | None:
    """Largest sparsity whose metric, and that of every smaller swept sparsity, stays within
    ``tolerance`` of ``dense`` (None if even the smallest fails)."""
    best = None
    for s, m in _sorted(sparsities, metrics):
        if not within_tolerance(m, dense, tolerance, higher_is_better):
            break
        best = s
    return best


def knee_point(
    sparsities: Sequence[float],
    metrics: Sequence[float],
    dense: float,
) -> float | None:
    """Kneedle knee of the degradation curve |metric - dense| against sparsity (see module)."""
    pts = _sorted(sparsities, metrics)
    if len(pts) < 3:
        return None
    xs = [s for s, _ in pts]
    ds = [abs(m - dense) for _, m in pts]
    span, top = xs[-1] - xs[0], max(ds)
    if span <= 0 or top <= 0:
        return None
    diff = [(x - xs[0]) / span - d / top for x, d in zip(xs, ds)]
    i = max(range(len(diff)), key=lambda k: diff[k])
    return xs[i] if diff[i] > 1e-12 else None
