"""The quantizer that the OBS column sweep (SparseGPT / GPTQ / GQSA) calls for every column.

GPTQ (Frantar et al. 2023) walks the columns of W in order; at column j it replaces the column by
its quantized value q_j and spreads the error (w_j - q_j) / [H^-1]_jj over the columns not yet
done (the same update SparseGPT uses for pruned weights; SparseGPT's joint mode quantizes the
kept weights in the same sweep, its Sec. 3.5). With groups of ``g`` inputs the grid of a group is
chosen when the sweep reaches its first column, from the group's *current* (already updated)
weights, as ``find_params`` in the reference code.

Departure from the reference code (documented): the reference takes a group's grid from the
full matrix ``W``, whose columns inside the current 128-column block have not yet received the
in-block updates, so a group starting in the middle of a block sees stale weights; here the
sweep's block size is a multiple of ``g`` and the grid comes from the up-to-date block copy.
Both agree when a group starts at a block start (e.g. g = block size = 128).

Second departure: the grid of a group is computed with the weights already known to be pruned
set to 0 (the reference includes them). 0 is inside every grid anyway (``xmin <= 0 <= xmax``),
so this is the grid of the kept weights only -- the pruned ones never use it. For unstructured
and group sparsity the whole block's mask is known at the block start; for N:M only the groups
decided so far. Pruned weights are set to 0 before quantization and 0 lies on every grid, so
they stay 0.
"""

from __future__ import annotations

import torch

from sparsecraft.quant.grid import QuantSpec, dequantize, find_params, quantize
from sparsecraft.quant.state import QuantState


class ColumnQuantizer:
    """``quantizer(j, block, k, q, pruned) -> dequantized column``: ``j`` the global column,
    ``block`` the sweep's working copy of the current column block, ``k`` the column inside it,
    ``q`` the column after pruning, ``pruned`` the block's pruned mask as far as it is known.
    Records the (rows, cols / g) scales and zero points it chose."""

    def __init__(self, spec: QuantSpec, rows: int, cols: int, device: torch.device | str = "cpu") -> None:
        self.spec = spec
        self.scale = torch.zeros(rows, cols // spec.group, dtype=torch.float32, device=device)
        self.zero = torch.zeros(rows, cols // spec.group, dtype=torch.float32, device=device)
        self._s: torch.Tensor | None = None
        self._z: torch.Tensor | None = None

    def __call__(self, j: int, block: torch.Tensor, k: int, q: torch.Tensor,
                 pruned: torch.Tensor | None = None) -> torch.Tensor:
        g = self.spec.group
        if j % g == 0:
            grp = block[:, k : k + g]
            if pruned is not None:  # weights known to be pruned never use the grid
                grp = grp.masked_fill(pruned[:, k : k + g], 0.0)
            s, z = find_params(grp, self.spec.bits, self.spec.sym)
            self.scale[:, j // g] = s
            self.zero[:, j // g] = z
            self._s, self._z = s, z
        assert self._s is not None and self._z is not None, "the sweep must start at a group start"
        return dequantize(quantize(q, self._s, self._z, self.spec.maxq), self._s, self._z)

    def state(self) -> QuantState:
        return QuantState(self.spec, self.scale, self.zero)


def aligned_blocksize(blocksize: int, group: int) -> int:
    """The largest multiple of ``group`` not above ``blocksize`` (at least ``group``), so that
    quantization groups never straddle two column blocks of the sweep."""
    return max(group, blocksize - blocksize % group)
