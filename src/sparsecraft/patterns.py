"""Patterns: shape constraints that turn a score matrix and a sparsity into a mask.

Every pattern works on the row view of a weight (see :mod:`sparsecraft.layout`): a 2-D score
matrix (outputs, inputs) where higher score = keep. The returned boolean mask has the same
shape, ``True`` = kept.

Counting rule (documented decision): a pattern asked for sparsity ``s`` over ``n`` units
prunes exactly ``floor(s * n + 1e-6)`` units (the epsilon absorbs float error, so 0.29 * 100
prunes 29). Ties are broken by position (stable sort), never by pruning extra elements.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from sparsecraft.errors import ShapeError, SparsecraftError
from sparsecraft.registry import Registry

PATTERNS: Registry[type[Pattern]] = Registry("pattern")


def count_to_prune(sparsity: float, n: int) -> int:
    """Number of units to prune for ``sparsity`` over ``n`` units (floor, float-safe).

    The one place a fraction becomes a count: patterns, the distributions' model totals and the
    global ranking, and MaskSparsity's channel ratio all call it, so the 1e-6 tolerance of the
    counting rule lives here only (``exact_counts`` then meets the total it is given exactly).
    """
    if not 0.0 <= sparsity <= 1.0:
        raise SparsecraftError(f"sparsity must be in [0, 1], got {sparsity}")
    return min(n, int(math.floor(sparsity * n + 1e-6)))


def lowest_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask of ``scores`` (any shape) with exactly the ``k`` lowest entries pruned."""
    flat = scores.reshape(-1)
    keep = torch.ones(flat.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        idx = torch.argsort(flat.float(), stable=True)[:k]
        keep[idx] = False
    return keep.reshape(scores.shape)


def fast_lowest_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask with exactly the ``k`` lowest scores pruned, ties broken by position: the same
    result as :func:`lowest_k_mask` (a stable argsort) in O(n) with
    ``kthvalue`` instead of a full sort."""
    flat = scores.reshape(-1).float()
    n = flat.numel()
    if k <= 0:
        return torch.ones_like(scores, dtype=torch.bool)
    if k >= n:
        return torch.zeros_like(scores, dtype=torch.bool)
    v = torch.kthvalue(flat, k).values
    pruned = flat < v
    need = k - int(pruned.sum())
    if need > 0:
        pruned[torch.nonzero(flat == v).reshape(-1)[:need]] = True
    return (~pruned).reshape(scores.shape)


class Pattern:
    """Base class: ``mask(scores, sparsity)`` on the (out, in) row view."""

    #: True when the pattern fixes the sparsity itself (N:M) and ignores the number given.
    fixed_sparsity: bool = False

    def mask(self, scores: torch.Tensor, sparsity: float) -> torch.Tensor:
        raise NotImplementedError

    def check(self, rows: int, cols: int, name: str = "tensor") -> None:
        """Raise :class:`ShapeError` naming the layer if (rows, cols) cannot take this pattern."""

    def fits(self, rows: int, cols: int) -> bool:
        try:
            self.check(rows, cols)
        except ShapeError:
            return False
        return True

    def achieved_sparsity(self, rows: int, cols: int, sparsity: float) -> float:
        """The exact sparsity this pattern produces on a (rows, cols) matrix."""
        n = rows * cols
        return count_to_prune(sparsity, n) / n

    def spec(self) -> str:
        """The string that parses back to this pattern (used in reports and checkpoints)."""
        return self.registry_name  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"Pattern({self.spec()})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pattern) and other.spec() == self.spec()

    def __hash__(self) -> int:
        return hash(self.spec())


@PATTERNS.register("unstructured")
class Unstructured(Pattern):
    """Any element may go: prune the exactly-k lowest scores of the whole tensor."""

    def mask(self, scores: torch.Tensor, sparsity: float) -> torch.Tensor:
        return fast_lowest_k_mask(scores, count_to_prune(sparsity, scores.numel()))


@PATTERNS.register("row")
class PerRow(Pattern):
    """Unstructured within each output row: every row loses the same floor(s * in) weights
    (Wanda's comparison group)."""

    def mask(self, scores: torch.Tensor, sparsity: float) -> torch.Tensor:
        k = count_to_prune(sparsity, scores.shape[1])
        keep = torch.ones_like(scores, dtype=torch.bool)
        if k:
            idx = torch.argsort(scores.float(), dim=1, stable=True)[:, :k]
            keep.scatter_(1, idx, False)
        return keep

    def achieved_sparsity(self, rows: int, cols: int, sparsity: float) -> float:
        return count_to_prune(sparsity, cols) / cols


@PATTERNS.register("n:m")
class NM(Pattern):
    """N:M: keep the N highest scores in every group of M consecutive inputs (exact N/M
    density; the sparsity argument is ignored)."""

    fixed_sparsity = True

    def __init__(self, n: int = 2, m: int = 4) -> None:
        if not (isinstance(n, int) and isinstance(m, int) and 0 < n < m):
            raise SparsecraftError(f"N:M needs integers 0 < N < M, got {n}:{m}")
        self.n, self.m = n, m

    def check(self, rows: int, cols: int, name: str = "tensor") -> None:
        if cols % self.m:
            raise ShapeError(
                f"layer {name!r} with {cols} inputs per output (row view {rows}x{cols}) cannot "
                f"take {self.n}:{self.m}: the input dimension must be divisible by {self.m}"
            )

    def mask(self, scores: torch.Tensor, sparsity: float | None = None) -> torch.Tensor:
        rows, cols = scores.shape
        self.check(rows, cols)
        groups = scores.reshape(rows, cols // self.m, self.m).float()
        # stable argsort: among ties the earlier position is pruned first
        idx = torch.argsort(groups, dim=-1, stable=True)[..., : self.m - self.n]
        keep = torch.ones_like(groups, dtype=torch.bool)
        keep.scatter_(-1, idx, False)
        return keep.reshape(rows, cols)

    def achieved_sparsity(self, rows: int, cols: int, sparsity: float) -> float:
        return 1.0 - self.n / self.m

    def spec(self) -> str:
        return f"{self.n}:{self.m}"


@PATTERNS.register("block")
class Block(Pattern):
    """Whole (h, w) tiles of the row view go together; a tile's score is the sum of its
    element scores."""

    def __init__(self, h: int = 4, w: int = 4) -> None:
        if h < 1 or w < 1:
            raise SparsecraftError(f"block size must be positive, got {h}x{w}")
        self.h, self.w = h, w

    def check(self, rows: int, cols: int, name: str = "tensor") -> None:
        if rows % self.h or cols % self.w:
            raise ShapeError(
                f"layer {name!r} with row view {rows}x{cols} cannot take {self.h}x{self.w} "
                f"blocks: rows must be divisible by {self.h} and inputs by {self.w}"
            )

    def mask(self, scores: torch.Tensor, sparsity: float) -> torch.Tensor:
        rows, cols = scores.shape
        self.check(rows, cols)
        tiles = scores.float().reshape(rows // self.h, self.h, cols // self.w, self.w)
        tile_scores = tiles.sum(dim=(1, 3))
        keep_tiles = lowest_k_mask(tile_scores, count_to_prune(sparsity, tile_scores.numel()))
        return keep_tiles.repeat_interleave(self.h, 0).repeat_interleave(self.w, 1)

    def achieved_sparsity(self, rows: int, cols: int, sparsity: float) -> float:
        n = (rows // self.h) * (cols // self.w)
        return count_to_prune(sparsity, n) / n

    def spec(self) -> str:
        return f"block:{self.h}x{self.w}"


@PATTERNS.register("channel")
class Channel(Pattern):
    """Whole output rows (neurons / conv filters) go together; a row's score is the sum of
    its element scores."""

    def mask(self, scores: torch.Tensor, sparsity: float) -> torch.Tensor:
        row_scores = scores.float().sum(dim=1)
        keep_rows = lowest_k_mask(row_scores, count_to_prune(sparsity, row_scores.numel()))
        return keep_rows[:, None].expand_as(scores).clone()

    def achieved_sparsity(self, rows: int, cols: int, sparsity: float) -> float:
        return count_to_prune(sparsity, rows) / rows


_NM_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")
_BLOCK_RE = re.compile(r"^\s*block\s*[:(]?\s*(\d+)\s*[x,]\s*(\d+)\s*\)?\s*$", re.I)


def parse_pattern(spec: Any) -> Pattern:
    """A pattern from a spec: a :class:`Pattern`, ``"unstructured"``, ``"2:4"``,
    ``"block:4x4"``, ``"channel"``, or a dict ``{"type": "block", "h": 4, "w": 4}``."""
    if isinstance(spec, Pattern):
        return spec
    if isinstance(spec, dict):
        return PATTERNS.build(spec)
    if isinstance(spec, str):
        m = _NM_RE.match(spec)
        if m:
            return NM(int(m.group(1)), int(m.group(2)))
        m = _BLOCK_RE.match(spec)
        if m:
            return Block(int(m.group(1)), int(m.group(2)))
        cls = PATTERNS.get(spec.strip())
        if cls is NM:
            return NM()
        return cls()
    raise SparsecraftError(
        f"cannot read pattern {spec!r}; allowed: 'unstructured', 'row', 'N:M' (e.g. '2:4'), "
        "'block:HxW', 'channel', or a dict with 'type'"
    )
