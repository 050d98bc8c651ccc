"""Packed formats, sparse checkpoints and lossless sparse weight deltas.

* :func:`pack` / :func:`unpack`: bitmap, CSR, N:M, BSR and dense, bitwise lossless for
  every float dtype; ``format="auto"`` picks the smallest.
* :func:`encode_delta` / :func:`apply_delta`: SparseRL-Sync style weight deltas.
"""

from sparsecraft.formats import bitmap, bsr, csr, dense, nm  # noqa: F401  (register formats)
from sparsecraft.formats.base import FORMATS, Format, Packed
from sparsecraft.formats.select import FORMAT_CHOICES, choose, pack, unpack

__all__ = ["FORMATS", "FORMAT_CHOICES", "Format", "Packed", "choose", "pack", "unpack"]
