"""Distributions: split one total sparsity over the target layers.

The total is measured over the prunable targets only (kept-dense layers and 1-D parameters
are not targets), so asking for 90% gives exactly 90% zeros over the prunable weights.

* ``uniform``: every layer gets the same sparsity.
* ``er`` / ``erk``: density_l = eps * raw_l with raw_l = (sum of dims)/(product of dims)
  (ERK; ER uses only out and in), eps solved so that the total density is met; layers with
  eps * raw_l > 1 become dense one at a time, largest first (Evci et al. 2020, RigL;
  Mocanu et al. 2018, SET).
* ``global``: one ranking of the criterion scores across all layers (needs scores).
* ``explicit``: a map {layer name or regex: sparsity}; unmatched layers get the total.
* ``owl``: outlier-weighted layerwise sparsity (Yin et al. 2024): blocks with more activation
  outliers get lower sparsity. It needs calibration activations, so only
  :func:`sparsecraft.prune` with ``calib=`` can use it (the ratios are measured there).

For unstructured layers the per-layer prune counts are rounded by largest remainder so the
model total is exact to one weight (documented decision; the papers leave rounding open).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from sparsecraft.errors import SparsecraftError
from sparsecraft.patterns import count_to_prune
from sparsecraft.registry import Registry
from sparsecraft.targets import Target

DISTRIBUTIONS: Registry[type[Distribution]] = Registry("distribution")


class Distribution:
    """Base class: ``allocate(targets, sparsity, scores) -> {target name: sparsity}``."""

    needs_scores = False
    needs_activations = False

    def allocate(
        self,
        targets: Sequence[Target],
        sparsity: float,
        scores: Mapping[str, torch.Tensor] | None = None,
    ) -> dict[str, float]:
        raise NotImplementedError


def exact_counts(densities: Sequence[float], sizes: Sequence[int], total_keep: int) -> list[int]:
    """Integer keep-counts close to ``density * size`` that sum exactly to ``total_keep``.

    Largest-remainder rounding: the ideal counts ``density * size`` are clipped to
    ``[0, size]`` and floored; the shortfall goes one unit at a time to the layers with the
    largest fractional remainder that still have room, an excess comes off the layers with the
    smallest remainder (ties: the earlier layer). Densities need not add up to the total: any
    ``total_keep`` in ``[0, sum(sizes)]`` is met exactly, every count stays in ``[0, size]``.
    No float tolerance here: it belongs where the total is counted (:func:`count_to_prune`).

    Raises:
        SparsecraftError: mismatched lengths, a non-finite density, a negative size, or a
            total outside ``[0, sum(sizes)]`` (the only totals no counts can meet).
    """
    if len(densities) != len(sizes):
        raise SparsecraftError(f"exact_counts needs one density per size, got {len(densities)} and {len(sizes)}")
    if any(not math.isfinite(d) for d in densities):
        raise SparsecraftError(f"densities must be finite numbers, got {list(densities)}")
    if any(n < 0 for n in sizes):
        raise SparsecraftError(f"sizes must be >= 0, got {list(sizes)}")
    if not 0 <= total_keep <= sum(sizes):
        raise SparsecraftError(f"total_keep {total_keep} must be in [0, {sum(sizes)}] (the sum of the sizes)")
    ideal = [min(float(n), max(0.0, d * n)) for d, n in zip(densities, sizes)]
    counts = [math.floor(x) for x in ideal]
    short = total_keep - sum(counts)
    # stable sorts: among equal remainders the earlier layer comes first in both directions
    if short > 0:
        order = sorted(range(len(sizes)), key=lambda i: counts[i] - ideal[i])
        _spread(counts, order, short, lambda i: sizes[i] - counts[i], +1)
    elif short < 0:
        order = sorted(range(len(sizes)), key=lambda i: ideal[i] - counts[i])
        _spread(counts, order, -short, lambda i: counts[i], -1)
    return counts


def _spread(counts: list[int], order: list[int], amount: int, room: Callable[[int], int], sign: int) -> None:
    """Move ``amount`` units (``sign`` +1 adds, -1 removes) over ``order``: one per layer per
    pass while fewer remain than layers with room (largest remainder), an equal share each
    otherwise, never past a layer's ``room(i)``. Terminates: the caller checked the total."""
    while amount > 0:
        open_ = [i for i in order if room(i) > 0]
        share = max(1, amount // len(open_))
        for i in open_:
            step = min(share, room(i), amount)
            counts[i] += sign * step
            amount -= step
            if amount == 0:
                break


def _sparsities_from_densities(
    targets: Sequence[Target], densities: Sequence[float], sparsity: float
) -> dict[str, float]:
    sizes = [t.numel for t in targets]
    total_keep = sum(sizes) - count_to_prune(sparsity, sum(sizes))
    counts = exact_counts(densities, sizes, total_keep)
    return {t.name: 1.0 - c / n for t, c, n in zip(targets, counts, sizes)}


@DISTRIBUTIONS.register("uniform")
class Uniform(Distribution):
    """The same sparsity in every layer."""

    def allocate(self, targets, sparsity, scores=None):
        return {t.name: sparsity for t in targets}


def erk_densities(shapes: Sequence[Sequence[int]], density: float, kernel: bool = True) -> list[float]:
    """Per-layer densities of the Erdos-Renyi(-Kernel) rule for a total ``density``.

    raw_l = sum(dims)/prod(dims) (ERK) or (out+in)/(out*in) (ER); solve eps so that
    sum_{free} eps*raw_l*P_l + sum_{dense} P_l = density * sum P_l; while some eps*raw_l > 1,
    make the layer with the largest raw_l dense and solve again.
    """
    if not 0.0 <= density <= 1.0:
        raise SparsecraftError(f"density must be in [0, 1], got {density}")
    sizes = [math.prod(s) for s in shapes]
    raws = []
    for s in shapes:
        dims = list(s) if kernel else list(s[:2])
        raws.append(sum(dims) / math.prod(dims))
    dense: set[int] = set()
    total = density * sum(sizes)
    while True:
        free = [i for i in range(len(shapes)) if i not in dense]
        budget = total - sum(sizes[i] for i in dense)
        denom = sum(raws[i] * sizes[i] for i in free)
        if not free or denom == 0:
            break
        eps = budget / denom
        over = [i for i in free if eps * raws[i] > 1.0]
        if not over:
            break
        dense.add(max(over, key=lambda i: raws[i]))
    out = []
    for i in range(len(shapes)):
        out.append(1.0 if i in dense else max(0.0, eps * raws[i]))
    return out


@DISTRIBUTIONS.register("erk")
class ERK(Distribution):
    """Erdos-Renyi-Kernel: density proportional to sum(dims)/prod(dims) (RigL)."""

    kernel = True

    def allocate(self, targets, sparsity, scores=None):
        dens = erk_densities([t.shape for t in targets], 1.0 - sparsity, kernel=self.kernel)
        return _sparsities_from_densities(targets, dens, sparsity)


@DISTRIBUTIONS.register("er")
class ER(ERK):
    """Erdos-Renyi: density proportional to (out+in)/(out*in) (SET)."""

    kernel = False


@DISTRIBUTIONS.register("global")
class Global(Distribution):
    """One ranking of the scores across all layers; per-layer sparsity follows from it."""

    needs_scores = True

    def allocate(self, targets, sparsity, scores=None):
        if scores is None:
            raise SparsecraftError("the global distribution needs criterion scores")
        flat = torch.cat([scores[t.name].reshape(-1).float() for t in targets])
        k = count_to_prune(sparsity, flat.numel())
        pruned = torch.zeros(flat.numel(), dtype=torch.bool)
        if k:
            pruned[torch.argsort(flat, stable=True)[:k]] = True
        out, start = {}, 0
        for t in targets:
            n = t.numel
            out[t.name] = pruned[start : start + n].sum().item() / n
            start += n
        return out


@DISTRIBUTIONS.register("explicit")
class Explicit(Distribution):
    """A user map {layer name or regex: sparsity}; first match wins, others get the total."""

    def __init__(self, sparsities: Mapping[str, float] | None = None) -> None:
        self.sparsities = dict(sparsities or {})
        for k in self.sparsities:
            try:
                re.compile(k)
            except re.error as e:
                raise SparsecraftError(f"bad regex {k!r} in the explicit map: {e}") from None

    def allocate(self, targets, sparsity, scores=None):
        out = {}
        for t in targets:
            out[t.name] = sparsity
            for key, s in self.sparsities.items():
                if key in (t.name, t.module_name) or re.search(key, t.name):
                    out[t.name] = float(s)
                    break
        return out


@DISTRIBUTIONS.register("owl")
class OWL(Distribution):
    """Outlier-weighted layerwise sparsity: more activation outliers, lower sparsity (OWL).

    Args:
        m: outlier threshold, a score counts as an outlier above ``m`` x its layer's mean score.
        lam: the largest deviation of a block's sparsity from the target (OWL's lambda).
    """

    needs_activations = True

    def __init__(self, m: float = 5.0, lam: float = 0.08) -> None:
        if not m > 0:
            raise SparsecraftError(f"owl: m must be > 0, got {m}")
        if not 0 <= lam < 1:
            raise SparsecraftError(f"owl: lam must be in [0, 1), got {lam}")
        self.m = float(m)
        self.lam = float(lam)

    def allocate(self, targets, sparsity, scores=None):
        raise SparsecraftError(
            "distribution 'owl' measures activation outliers: prune with calib=... "
            "(sparsecraft.prune runs it block by block)"
        )


def make_distribution(spec: Any) -> Distribution:
    """A distribution from a name, a dict ``{"type": ..., **kwargs}`` or an instance."""
    return spec if isinstance(spec, Distribution) else DISTRIBUTIONS.build(spec)
