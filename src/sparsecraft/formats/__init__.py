"""Packed formats, sparse checkpoints and lossless sparse weight deltas.

* :func:`pack` / :func:`unpack`: bitmap, CSR, N:M, BSR and dense, bitwise lossless for
  every float dtype; ``format="auto"`` picks the smallest (:mod:`.select`).
* :func:`encode_delta` / :func:`apply_delta`: SparseRL-Sync style weight deltas with versions
  and base/result digests (:mod:`.delta`; :func:`encode_full` for a full resend), shipped over
  ``torch.distributed`` by :class:`DeltaSync` (:mod:`.transport`).
* Hugging Face directories: :mod:`.hf` (``save_pretrained_sparse``, ``load_pretrained_sparse``).
"""

from sparsecraft.formats.base import FORMATS, Format, Packed
from sparsecraft.formats.delta import DeltaError, DeltaPayload, DeltaWarning, apply_delta, encode_delta, encode_full
from sparsecraft.formats.select import FORMAT_CHOICES, choose_format, pack, unpack

__all__ = [
    "FORMATS",
    "FORMAT_CHOICES",
    "DeltaError",
    "DeltaPayload",
    "DeltaWarning",
    "Format",
    "Packed",
    "apply_delta",
    "choose_format",
    "encode_delta",
    "encode_full",
    "pack",
    "unpack",
]
