"""Apply a delta payload in two phases: verify everything, then write.

Phase 1 (nothing is written): parse and CRC-check every bucket and every declared size
(:mod:`.delta_wire`); check the payload is complete and from one encode; resolve every
manifest tensor in the receiving state (name, dtype, shape); decode every record into
*staging* -- int64 positions for sparse records, views of the payload's bytes for values --
checking that positions lie inside the tensor and that records move forward; compare the
digest of every base tensor with the manifest (:mod:`.digest`); and predict the digest of
every result from the base digest and the staged changes alone (the digest is a sum over
positions, so this costs one weight per changed element, or one pass over the new bytes of a
tensor sent dense) and compare it with the manifest. Phase 2: scatter the staged values.

Any failure in phase 1 raises a one-line :class:`DeltaError` naming the tensor (or bucket and
record) and the reason, and leaves the receiving state bit-identical to before. Extra memory
is the payload plus 8 bytes per sparse change, never a copy of the model.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from sparsecraft.formats.base import bits_view, dtype_name
from sparsecraft.formats.delta_wire import DeltaError, Parsed, parse_payload
from sparsecraft.formats.digest import MASK, bytes_digest, changes_digest, tensor_digest
from sparsecraft.formats.varint import decode_gaps


class DeltaWarning(UserWarning):
    """A delta was applied with fewer checks than this version makes (an old payload)."""


def storage_key(t: torch.Tensor) -> tuple:
    """Tensors with equal keys are the same memory (tied weights)."""
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)


@dataclass
class Staged:
    """One receiving tensor and its verified, not yet written, changes."""

    name: str
    tensor: torch.Tensor
    dense: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (first element, values)
    sparse: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (positions, values)
    alias: str | None = None
    end: int = 0  # records must start at or after this position
    _flat: np.ndarray | None = None

    @property
    def flat(self) -> np.ndarray:
        if self._flat is None:
            t = self.tensor
            if t.device.type != "cpu" or not t.is_contiguous():
                raise DeltaError(f"tensor {self.name!r}: apply_delta writes into contiguous CPU tensors only")
            self._flat = bits_view(t).reshape(-1)
        return self._flat

    @property
    def written(self) -> bool:
        return bool(self.dense or self.sparse or self.alias)


def _lookup(state: dict[str, torch.Tensor], name: str, dt: str, shape: list, where: str) -> Staged:
    if name not in state:
        raise DeltaError(f"{where}: the receiving state has no tensor {name!r}")
    t = state[name]
    if dtype_name(t.dtype) != dt or list(t.shape) != shape:
        have = f"{dtype_name(t.dtype)}{list(t.shape)}"
        raise DeltaError(f"{where}: delta is for {dt}{shape}, the receiving state has {have}")
    return Staged(name, t)


def _positions(rec: dict, buf: np.ndarray, numel: int, where: str) -> np.ndarray:
    """Gap-decoded sorted int64 positions, all inside ``[rec["lo"], numel)``."""
    n, lo = rec["n"], rec["lo"]
    try:
        gaps = decode_gaps(rec["c"], buf, n)
    except ValueError as e:
        raise DeltaError(f"{where}: bad index block ({e})") from None
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    # every gap < numel and their float sum small => the int64 running sum cannot overflow
    if int(gaps.max()) >= numel or float(gaps.sum(dtype=np.float64)) + n + lo > 2.0 * numel + 1:
        raise DeltaError(f"{where}: index gaps run past the tensor's {numel} elements")
    idx = gaps.view(np.int64)
    idx += 1
    idx[0] += lo - 1
    np.cumsum(idx, out=idx)
    if idx[-1] >= numel:
        raise DeltaError(f"{where}: position {int(idx[-1])} is past the tensor's {numel} elements")
    return idx


def _stage(state: dict[str, torch.Tensor], parsed: Parsed) -> dict[str, Staged]:
    """Every record decoded and bounds-checked into staging (nothing written)."""
    staged: dict[str, Staged] = {}
    for name, dt, shape, _, _ in parsed.manifest:
        staged[name] = _lookup(state, name, dt, shape, f"manifest tensor {name!r}")
    for bi, bucket in enumerate(parsed.buckets):
        pos = 0
        for j, rec in enumerate(bucket.records):
            name, ib, vb = rec["k"], rec["ib"], rec["vb"]
            where = f"delta bucket {bi}, record {j} (tensor {name!r})"
            idx_bytes, val_bytes = bucket.body[pos : pos + ib], bucket.body[pos + ib : pos + ib + vb]
            pos += ib + vb
            if name not in staged:
                if parsed.fmt == 2:
                    raise DeltaError(f"{where}: the tensor is not in the payload's manifest")
                staged[name] = _lookup(state, name, rec["dt"], rec["sh"], where)
            s = staged[name]
            if dtype_name(s.tensor.dtype) != rec["dt"] or list(s.tensor.shape) != rec["sh"]:
                raise DeltaError(f"{where}: record is for {rec['dt']}{rec['sh']}, the tensor is "
                                 f"{dtype_name(s.tensor.dtype)}{list(s.tensor.shape)}")
            if rec["m"] == "a":
                if s.written:
                    raise DeltaError(f"{where}: an alias record for a tensor that has other records")
                if rec["src"] not in staged:
                    if parsed.fmt == 2:
                        raise DeltaError(f"{where}: alias of {rec['src']!r}, which is not in the payload's manifest")
                    staged[rec["src"]] = _lookup(state, rec["src"], rec["dt"], rec["sh"], where)
                s.alias = rec["src"]
                continue
            if s.alias:
                raise DeltaError(f"{where}: a data record for a tensor that is an alias")
            values = val_bytes.view(s.flat.dtype)
            if rec["m"] == "d":
                if rec["lo"] < s.end:
                    raise DeltaError(f"{where}: records overlap or go backwards")
                s.dense.append((rec["lo"], values))
                s.end = rec["lo"] + rec["n"]
            else:
                idx = _positions(rec, idx_bytes, s.flat.size, where)
                if idx.size and idx[0] < s.end:
                    raise DeltaError(f"{where}: records overlap or go backwards")
                s.sparse.append((idx, values))
                s.end = int(idx[-1]) + 1 if idx.size else s.end
    return staged


def _predict(s: Staged, base: int | None) -> int:
    """The digest ``s`` will have once its staged changes are written (nothing is written).
    ``base``: its current digest, or None when it was not needed so far."""
    if not s.dense and not s.sparse:
        return tensor_digest(s.tensor) if base is None else base
    size = s.flat.itemsize
    if s.dense and not s.sparse and sum(v.size for _, v in s.dense) == s.flat.size:
        # dense records tiling the whole tensor (they move forward and fit): the new bytes alone
        return sum(bytes_digest(v.view(np.uint8), lo * size) for lo, v in s.dense) & MASK
    d = tensor_digest(s.tensor) if base is None else base
    for lo, v in s.dense:
        old = s.flat[lo : lo + v.size].view(np.uint8)
        d += bytes_digest(v.view(np.uint8), lo * size) - bytes_digest(old, lo * size)
    for idx, v in s.sparse:
        d += changes_digest(idx, s.flat[idx], v)
    return d & MASK


def _verify(staged: dict[str, Staged], parsed: Parsed) -> None:
    """Base digests, predicted result digests, aliases and receiver-side ties (format 2)."""
    hexd = "{:016x}".format
    base_of: dict[tuple, int] = {}
    for name, _, _, base, _ in parsed.manifest:
        if base is None:  # a full resend: any base will do
            continue
        key = storage_key(staged[name].tensor)
        if key not in base_of:
            base_of[key] = tensor_digest(staged[name].tensor)
        if base_of[key] != base:
            raise DeltaError(
                f"tensor {name!r}: the receiving state is not version {parsed.from_version}, the base of this "
                f"{parsed.from_version} -> {parsed.to_version} delta (base digest {hexd(base)} expected, "
                f"{hexd(base_of[key])} found): an update was missed, this delta was already applied, or the "
                "state was changed since; nothing was written")
    results = {name: result for name, _, _, _, result in parsed.manifest}
    for name, _, _, _, result in parsed.manifest:
        s = staged[name]
        if s.alias is not None:
            src = staged.get(s.alias)
            if src is None or src.alias is not None:
                raise DeltaError(f"tensor {name!r}: alias of {s.alias!r}, which is not a manifest tensor with data")
            if (src.tensor.dtype, src.tensor.shape) != (s.tensor.dtype, s.tensor.shape) or results[s.alias] != result:
                raise DeltaError(f"tensor {name!r}: alias of {s.alias!r}, but their dtype, shape or result differ")
            continue
        got = _predict(s, base_of.get(storage_key(s.tensor)))
        if got != result:
            raise DeltaError(f"tensor {name!r}: the staged changes give result digest {hexd(got)}, the payload "
                             f"promises {hexd(result)} (records missing, corrupted or from another payload); "
                             "nothing was written")
    by_memory: dict[tuple, str] = {}
    for name, s in staged.items():
        other = by_memory.setdefault(storage_key(s.tensor), name)
        if other != name and results[other] != results[name] and (s.written or staged[other].written):
            raise DeltaError(f"tensors {other!r} and {name!r} are one tensor (tied) in the receiving state but "
                             "differ in the delta's result; untie them before applying")


def _write(staged: dict[str, Staged]) -> None:
    for s in staged.values():
        for lo, v in s.dense:
            s.flat[lo : lo + v.size] = v
        for idx, v in s.sparse:
            s.flat[idx] = v if v.flags.aligned else v.copy()  # a sequential copy beats an unaligned scatter
    for s in staged.values():
        if s.alias is not None:
            src = staged[s.alias].flat
            if not np.shares_memory(src, s.flat):
                s.flat[:] = src


def apply_payload(state: dict[str, torch.Tensor], raws: list, version: int | None = None) -> Parsed:
    """Verify every bucket, size, base and result, then write (see the module docstring)."""
    parsed = parse_payload(list(raws))
    if parsed.fmt == 1:
        if version is not None:
            raise DeltaError(f"a format-1 delta payload carries no version numbers, so it cannot be checked "
                             f"against version {version}; apply it without version=")
    elif version is not None and parsed.from_version is not None and version != parsed.from_version:
        frm, to = parsed.from_version, parsed.to_version
        why = (f"{frm - version} update(s) missed: apply the deltas in between or resend the full state"
               if version < frm else "this delta was already applied" if version >= to else "versions overlap")
        raise DeltaError(f"delta goes from version {frm} to {to}, the receiving state is at version {version}: "
                         f"{why}; nothing was written")
    staged = _stage(state, parsed)
    if parsed.fmt == 2:
        _verify(staged, parsed)
    else:
        for s in staged.values():
            if s.alias is not None and staged[s.alias].alias is not None:
                raise DeltaError(f"tensor {s.name!r}: alias of {s.alias!r}, which is an alias itself")
        warnings.warn("delta payload in format 1 (written before base digests existed) has no base digests or "
                      "version numbers: applied without checking that the receiving state is its base",
                      DeltaWarning, stacklevel=3)
    with torch.no_grad():
        _write(staged)
    return parsed
