"""PPL-p% sparsity (Sparsing Law, Luo et al. 2024): the global CETT budget ``c`` at which the
perplexity has risen by ``p`` (0.01 = 1%), found by bisection.

1. Per-layer CETT tables from the dense model on the calibration windows
   (:func:`sparsecraft.activations.calibrate.cett_tables`), held apart from the evaluation windows.
2. For a ``c``, every layer ``l`` gets its threshold ``t_l(c)`` (the largest ``t`` with
   ``CETT_l(t) <= c``) and the model runs with :class:`~sparsecraft.activations.threshold.Threshold`
   (exact zeros); its perplexity on the evaluation windows and the fraction of MLP hidden
   activations that are zero there (the sparsity) are measured together.
3. Bisection on ``[0, 1]``: ``c = 0`` zeroes nothing that contributes (the dense perplexity),
   ``c = 1`` zeroes everything; the midpoint moves ``lo`` up when its perplexity is within
   ``ppl_dense * (1 + p)``, else ``hi`` down, for ``steps`` evaluations. Perplexity is not smooth
   (nor always monotone) in ``c`` near the target, so the result is the bracket the search ended
   in: ``lo`` (the largest ``c`` seen that meets the target; the reported ``cett``, ``ppl`` and
   ``sparsity``) and ``hi`` (the smallest seen that does not).

The same search runs on any score where lower is better (:func:`search_cett`); for an encoder
without perplexity the bench uses ``1 - cos(embedding, dense embedding)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sparsecraft.activations.base import unwrap
from sparsecraft.activations.calibrate import cett_tables
from sparsecraft.activations.cett import DEFAULT_BITS, CettTable
from sparsecraft.activations.meter import ActivationMeter, ActivationReport
from sparsecraft.activations.threshold import Threshold
from sparsecraft.errors import SparsecraftError

ScoreFn = Callable[[nn.Module], float]


@dataclass
class Probe:
    """One evaluation of the search: budget ``c``, its score and the measured sparsity."""

    c: float
    score: float
    sparsity: float
    layer_sparsity: list[float]
    thresholds: list[float]

    def to_dict(self) -> dict[str, Any]:
        return {"c": self.c, "score": self.score, "sparsity": self.sparsity}


@dataclass
class CettSearch:
    """The bracket the bisection ended in and every probe it made."""

    limit: float
    dense_score: float
    lo: Probe
    hi: Probe | None  #: None when no probed c failed the limit (then hi = 1, never evaluated)
    probes: list[Probe] = field(default_factory=list)

    @property
    def bracket(self) -> dict[str, Any]:
        return {"c_lo": self.lo.c, "c_hi": self.hi.c if self.hi else 1.0, "score_lo": self.lo.score,
                "score_hi": self.hi.score if self.hi else None}


def apply_cett(model: nn.Module, tables: list[CettTable], c: float) -> list[float]:
    """Install the thresholds ``t_l(c)`` of every layer; returns them."""
    ts = [t.threshold(c) for t in tables]
    Threshold(ts, expected=[t.sparsity(c) for t in tables]).apply(model)
    return ts


def probe(model: nn.Module, tables: list[CettTable], c: float, score: ScoreFn,
          cache: dict[float, Probe] | None = None) -> Probe:
    """Install the thresholds of budget ``c`` and measure ``score`` and the sparsity (exact zeros
    of the hidden activation) in one pass; ``cache`` (c -> probe) skips a ``c`` measured before."""
    if cache is not None and c in cache:
        apply_cett(model, tables, c)
        return cache[c]
    ts = apply_cett(model, tables, c)
    with ActivationMeter(model, eps=0.0) as meter:
        value = float(score(model))
    rep: ActivationReport = meter.report()
    out = Probe(c, value, rep.zero_fraction, [s.zero_fraction for s in rep.layers], ts)
    if cache is not None:
        cache[c] = out
    return out


def search_cett(
    model: nn.Module,
    tables: list[CettTable],
    score: ScoreFn,
    limit: float,
    dense_score: float,
    steps: int = 10,
    on_probe: Callable[[Probe], None] | None = None,
    cache: dict[float, Probe] | None = None,
) -> CettSearch:
    """Bisection for the largest ``c`` with ``score(model thresholded at c) <= limit``.

    The model keeps the thresholds of the returned ``lo`` probe installed. ``cache`` (c -> probe,
    filled as it goes) lets several searches on the same model, tables and score share probes."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise SparsecraftError(f"bisection steps must be an integer >= 1, got {steps!r}")
    bits = min(t.bits for t in tables)
    if steps > bits:
        raise SparsecraftError(f"{steps} bisection steps need CETT tables of at least {steps} bits, have {bits}")
    lo_c, hi_c = 0.0, 1.0
    lo: Probe | None = None
    hi: Probe | None = None
    probes = []
    for _ in range(steps):
        mid = (lo_c + hi_c) / 2
        p = probe(model, tables, mid, score, cache)
        probes.append(p)
        if on_probe is not None:
            on_probe(p)
        if p.score <= limit:
            lo_c, lo = mid, p
        else:
            hi_c, hi = mid, p
    if lo is None:  # every probe failed: the bracket is [0, smallest c probed]
        lo = probe(model, tables, 0.0, score, cache)
        probes.append(lo)
    else:
        apply_cett(model, tables, lo.c)
    return CettSearch(limit, dense_score, lo, hi, probes)


@dataclass
class PplPResult:
    """PPL-p% of a causal LM: the bracket, the thresholds and the sparsity at ``cett``."""

    p: float
    ppl_dense: float
    search: CettSearch
    layer_names: list[str]
    calib_tokens: int
    eval_tokens: int

    @property
    def cett(self) -> float:
        return self.search.lo.c

    @property
    def ppl(self) -> float:
        return self.search.lo.score

    @property
    def sparsity(self) -> float:
        return self.search.lo.sparsity

    def to_dict(self) -> dict[str, Any]:
        lo = self.search.lo
        b = self.search.bracket
        return {
            "sparsity": lo.sparsity, "ppl_dense": self.ppl_dense, "ppl": lo.score, "cett": lo.c,
            "ppl_increase": self.p, "ppl_target": self.search.limit,
            "bracket": {"cett_lo": b["c_lo"], "cett_hi": b["c_hi"], "ppl_lo": b["score_lo"], "ppl_hi": b["score_hi"]},
            "layers": [{"name": n, "threshold": t, "sparsity": s}
                       for n, t, s in zip(self.layer_names, lo.thresholds, lo.layer_sparsity)],
            "probes": [{"cett": p.c, "ppl": p.score, "sparsity": p.sparsity} for p in self.search.probes],
            "calib_tokens": self.calib_tokens, "eval_tokens": self.eval_tokens,
        }


def check_increase(p: object) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or p <= 0:
        raise SparsecraftError(f"perplexity increase p must be a finite number > 0 (0.01 = 1%), got {p!r}")
    return float(p)


def ppl_p(
    model: nn.Module,
    calib: torch.Tensor,
    eval_windows: torch.Tensor,
    p: float = 0.01,
    steps: int = 10,
    batch_size: int = 8,
    bits: int = DEFAULT_BITS,
    ppl_dense: float | None = None,
    tables: list[CettTable] | None = None,
    progress: bool = False,
    on_probe: Callable[[Probe], None] | None = None,
) -> PplPResult:
    """PPL-p% sparsity of a causal LM (the module docstring); the model is left thresholded at
    the result's ``cett`` (:func:`sparsecraft.activations.unwrap` undoes it)."""
    from sparsecraft.activations.sites import find_sites
    from sparsecraft.evaluation.perplexity import perplexity

    p = check_increase(p)
    if eval_windows.dim() != 2 or len(eval_windows) == 0:
        raise SparsecraftError(f"evaluation windows must be a non-empty (n, L) tensor, got {tuple(eval_windows.shape)}")
    sites = find_sites(model)
    if tables is None:
        tables = cett_tables(model, calib, batch_size=batch_size, bits=bits, progress=progress)
    if ppl_dense is None:
        unwrap(model)
        ppl_dense = perplexity(model, eval_windows, batch_size=batch_size, progress=progress, desc="ppl dense")

    def score(m: nn.Module) -> float:
        return perplexity(m, eval_windows, batch_size=batch_size, progress=progress, desc="ppl")

    search = search_cett(model, tables, score, ppl_dense * (1 + p), ppl_dense, steps, on_probe)
    return PplPResult(p, ppl_dense, search, [s.name for s in sites], tables[0].tokens, int(eval_windows.numel()))
