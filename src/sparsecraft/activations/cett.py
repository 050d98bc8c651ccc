"""CETT (cumulative errors of tail truncation, Sparsing Law, Luo et al. 2024), computed exactly.

For one MLP layer with hidden activation ``a`` (per token) and down projection ``W_down``, the
neuron norm is ``n_i = |a_i| * ||W_down[:, i]||`` and, for a threshold ``t``,

    CETT(t) = mean over tokens of || sum_{i: n_i <= t} a_i W_down[:, i] || / || sum_i a_i W_down[:, i] ||.

The threshold of the layer for a CETT budget ``c`` is the *largest* ``t`` with ``CETT(t) <= c``.
CETT is not monotone in ``t`` (partial sums can cancel), so the rule is followed literally, not
by a first crossing: :class:`CettCurve` holds the whole step function. Per token, the neurons
sorted by ``n_i`` give the norms of the partial sums after removing the 1, 2, ..., H smallest
(the C++ kernel ``cett_prefix_norms``, float64 accumulation; a chunked torch path without it);
each removal is an event ``(n_i, change of that token's ratio)``; all events of all tokens sorted
by ``n`` and summed give CETT at every breakpoint (events with equal ``n`` are applied together:
``n_i <= t`` removes all of them). Below every breakpoint nothing is removed, so CETT = 0 at
``t = 0`` (an exact zero contributes nothing). Tokens whose full sum is the zero vector have no
ratio and are left out of the mean (with no token left, CETT is 0 everywhere).

The full curve has ``tokens * hidden`` breakpoints (tens of millions per layer of a real model);
:meth:`CettCurve.table` keeps only what the PPL-p% bisection can ask for: the exact thresholds
(and calibration sparsities) at every ``c = j / 2**bits`` -- the bisection from [0, 1] only ever
visits such dyadic ``c`` (:class:`CettTable`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparsecraft.activations.threshold import column_norms, neuron_norms
from sparsecraft.errors import SparsecraftError

DEFAULT_BITS = 16  #: c resolution of a table: 2**-16


def _prefix_norms_torch(a_sorted: torch.Tensor, order: torch.Tensor, wt: torch.Tensor, chunk: int = 4) -> torch.Tensor:
    """Reference path of ``cett_prefix_norms``: float64 cumulative sums, ``chunk`` tokens at a time."""
    out = torch.empty(a_sorted.shape, dtype=torch.float64)
    w64 = wt.double()
    for s in range(0, a_sorted.shape[0], chunk):
        contrib = a_sorted[s : s + chunk, :, None].double() * w64[order[s : s + chunk]]
        out[s : s + chunk] = contrib.cumsum(1).norm(dim=2)
    return out


def prefix_norms(
    a_sorted: torch.Tensor, order: torch.Tensor, wt: torch.Tensor, native: bool | None = None
) -> torch.Tensor:
    """``norms[j, k] = ||sum_{m <= k} a_sorted[j, m] * wt[order[j, m]]||`` (float64).

    ``native``: True = the C++ kernel (error if unavailable), False = torch, None = the kernel
    when it builds here."""
    if native is not False:
        from sparsecraft.kernels.extension import extension_status, ops

        ok, reason = extension_status()
        if ok:
            return ops().cett_prefix_norms(a_sorted.float().contiguous(), order.contiguous(), wt.float().contiguous())
        if native:
            raise SparsecraftError(f"the CETT kernel is unavailable: {reason}")
    return _prefix_norms_torch(a_sorted, order, wt)


@dataclass
class CettTable:
    """Exact thresholds of one layer at ``c = j / 2**bits`` (j = 0 .. 2**bits)."""

    bits: int
    thresholds: torch.Tensor  #: float64, (2**bits + 1,)
    calib_sparsity: torch.Tensor  #: fraction of calibration entries with n <= threshold
    tokens: int

    def index(self, c: float) -> int:
        if not 0 <= c <= 1:
            raise SparsecraftError(f"CETT c must be in [0, 1], got {c}")
        j = c * 2**self.bits
        if j != int(j):
            raise SparsecraftError(f"c={c!r} is not a multiple of 2**-{self.bits} (the table's resolution)")
        return int(j)

    def threshold(self, c: float) -> float:
        return float(self.thresholds[self.index(c)])

    def sparsity(self, c: float) -> float:
        return float(self.calib_sparsity[self.index(c)])


@dataclass
class CettCurve:
    """CETT(t) of one layer as an exact step function: ``cett[k]`` holds for ``t`` in
    ``[t[k], t[k+1])``; ``t[0] = 0`` with CETT 0 (nothing but exact zeros removed)."""

    t: torch.Tensor  #: float64 breakpoints, strictly increasing, t[0] = 0
    cett: torch.Tensor  #: float64 CETT after removing every n <= t[k]
    removed: torch.Tensor  #: int64 entries with n <= t[k]
    tokens: int  #: tokens with a nonzero full sum (the mean's denominator)
    entries: int  #: tokens * hidden (all tokens)

    def value(self, t: float) -> float:
        """CETT at threshold ``t``."""
        k = int(torch.searchsorted(self.t, torch.tensor([float(t)], dtype=torch.float64), right=True)) - 1
        return float(self.cett[max(k, 0)])

    def _suffix_min(self) -> torch.Tensor:
        return self.cett.flip(0).cummin(0).values.flip(0)

    def threshold(self, c: float) -> float:
        """The largest breakpoint ``t`` with ``CETT(t) <= c`` (0 when only t = 0 qualifies)."""
        if not c >= 0:
            raise SparsecraftError(f"CETT c must be >= 0, got {c}")
        k = int(torch.searchsorted(self._suffix_min(), torch.tensor([float(c)], dtype=torch.float64), right=True)) - 1
        return float(self.t[max(k, 0)])

    def table(self, bits: int = DEFAULT_BITS) -> CettTable:
        """Thresholds and calibration sparsities at every ``c = j / 2**bits``."""
        cs = torch.arange(2**bits + 1, dtype=torch.float64) / 2**bits
        k = (torch.searchsorted(self._suffix_min(), cs, right=True) - 1).clamp_min(0)
        return CettTable(bits, self.t[k].clone(), self.removed[k].double() / max(self.entries, 1), self.tokens)


@torch.no_grad()
def cett_curve(a: torch.Tensor, w_down: torch.Tensor, native: bool | None = None, chunk: int = 2048) -> CettCurve:
    """The exact CETT step function of activations ``a`` (tokens, hidden) through ``w_down``
    (out, hidden). ``chunk`` tokens go through the partial-sum kernel at a time."""
    a = a.detach().reshape(-1, a.shape[-1]).float()
    if w_down.dim() != 2 or w_down.shape[1] != a.shape[1]:
        raise SparsecraftError(f"W_down {tuple(w_down.shape)} does not take a hidden activation of width {a.shape[1]}")
    n_tok, hidden = a.shape
    colnorm = column_norms(w_down)
    wt = w_down.detach().float().t().contiguous()
    keys, deltas = [], []
    valid = 0
    for s in range(0, n_tok, chunk):
        ab = a[s : s + chunk]
        n_sorted, order = neuron_norms(ab, colnorm).sort(dim=1, stable=True)
        norms = prefix_norms(ab.gather(1, order), order, wt, native)
        full = norms[:, -1:]
        ok = full[:, 0] > 0
        ratio = torch.where(ok[:, None], norms / torch.where(ok[:, None], full, 1.0), 0.0)
        delta = torch.diff(ratio, dim=1, prepend=torch.zeros(len(ratio), 1, dtype=torch.float64))
        valid += int(ok.sum())
        keys.append(n_sorted.reshape(-1))
        deltas.append(delta.reshape(-1))
    key = torch.cat(keys)
    key_sorted, perm = key.sort()
    cum = torch.cat(deltas)[perm].cumsum(0) / max(valid, 1)
    del perm
    last = torch.ones(len(key_sorted), dtype=torch.bool)
    last[:-1] = key_sorted[1:] != key_sorted[:-1]
    t = key_sorted[last].double()
    cett = cum[last]
    removed = torch.nonzero(last).reshape(-1) + 1
    if len(t) == 0 or t[0] > 0:  # below every breakpoint: nothing removed
        t = torch.cat([torch.zeros(1, dtype=torch.float64), t])
        cett = torch.cat([torch.zeros(1, dtype=torch.float64), cett])
        removed = torch.cat([torch.zeros(1, dtype=torch.long), removed])
    return CettCurve(t, cett, removed, valid, n_tok * hidden)
