"""The bytes of a delta payload: buckets, their headers, and strict checks of both.

A bucket is ``MAGIC | u32 header length | u32 CRC32 of header + body | JSON header | body``.

* Format 2 (``SCD2``, this version): the header is an object ``{"f": 2, "from": base version
  or null for a full resend, "to": result version, "i": bucket number, "of": number of
  buckets, "m": CRC32 of the manifest, "r": [records]}``; bucket 0 also carries ``"man"``,
  the manifest: one ``[name, dtype, shape, base digest or null, result digest]`` per tensor
  of the state (digests: :mod:`sparsecraft.formats.digest`, 16 hex digits).
* Format 1 (``SCD1``, the first release): the header is the list of records, nothing else.

A record is ``{"k": tensor, "dt": dtype, "sh": shape, "m": mode, "n": count, "ib": index
bytes, "vb": value bytes, ...}`` with mode ``"s"`` (sparse: ``"lo"`` base position, ``"c"``
index coding, then ``ib`` bytes of gap-coded positions and ``vb`` bytes of values), ``"d"``
(dense: ``"lo"`` first element, ``vb`` bytes of values) or ``"a"`` (alias: copy tensor
``"src"``). Bodies are the records' bytes back to back.

Everything a header declares is checked here against the bucket's real byte length and
against itself *before* anything is allocated or decoded (a count of ``10**12`` values in a
3-byte index block is refused, not allocated); every failure is a one-line
:class:`DeltaError` naming the
bucket, the record and the reason.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sparsecraft.errors import SparsecraftError
from sparsecraft.formats.base import DTYPES
from sparsecraft.formats.varint import CODINGS

MAGIC_V1, MAGIC_V2 = b"SCD1", b"SCD2"
HEAD = struct.Struct("<4sII")
_FIXED_WIDTH = {"u8": 1, "u16": 2, "u32": 4, "u64": 8}
_ITEMSIZE = {name: torch.empty((), dtype=dt).element_size() for name, dt in DTYPES.items()}


class DeltaError(SparsecraftError):
    """A delta payload is truncated, corrupted or malformed, or does not match the state it
    is applied to."""


@dataclass
class Bucket:
    """One parsed, CRC-checked bucket whose records fit its body exactly."""

    fmt: int
    records: list[dict]
    body: np.ndarray  # uint8, the records' bytes back to back
    header: dict = field(default_factory=dict)  # format 2 only


def manifest_crc(manifest: list) -> str:
    return f"{zlib.crc32(dump(manifest)):08x}"


def dump(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def pack_bucket(header: Any, arrays: list[np.ndarray], fmt: int = 2) -> bytes:
    head = dump(header)
    parts = [np.ascontiguousarray(a).view(np.uint8) for a in arrays]
    crc = zlib.crc32(head)
    for part in parts:
        crc = zlib.crc32(part, crc)
    return b"".join([HEAD.pack(MAGIC_V2 if fmt == 2 else MAGIC_V1, len(head), crc), head, *parts])


def _int(rec: dict, key: str, where: str, low: int = 0) -> int:
    v = rec.get(key)
    if type(v) is not int or v < low:
        raise DeltaError(f"{where}: field {key!r} must be an integer >= {low}, got {v!r}")
    return v


def numel_of(shape: list, where: str) -> int:
    if not isinstance(shape, list) or any(type(d) is not int or d < 0 for d in shape):
        raise DeltaError(f"{where}: shape must be a list of integers >= 0, got {shape!r}")
    return math.prod(shape)


def check_record(rec: Any, where: str) -> None:
    """The record's fields exist, have the right types and agree with each other."""
    if not isinstance(rec, dict):
        raise DeltaError(f"{where}: a record must be an object, got {type(rec).__name__}")
    name = rec.get("k")
    if not isinstance(name, str):
        raise DeltaError(f"{where}: field 'k' (tensor name) must be a string, got {name!r}")
    where = f"{where} (tensor {name!r})"
    if not isinstance(rec.get("dt"), str) or rec["dt"] not in _ITEMSIZE:
        raise DeltaError(f"{where}: unknown dtype {rec.get('dt')!r}; allowed: {', '.join(_ITEMSIZE)}")
    numel, size = numel_of(rec.get("sh"), where), _ITEMSIZE[rec["dt"]]
    mode = rec.get("m")
    n, ib, vb = _int(rec, "n", where), _int(rec, "ib", where), _int(rec, "vb", where)
    if mode == "a":
        if not isinstance(rec.get("src"), str) or n or ib or vb:
            raise DeltaError(f"{where}: an alias record needs a string 'src' and n = ib = vb = 0")
        return
    if mode not in ("s", "d"):
        raise DeltaError(f"{where}: unknown record mode {mode!r}; allowed: 's' (sparse), 'd' (dense), 'a' (alias)")
    lo = _int(rec, "lo", where)
    if vb != n * size:
        raise DeltaError(f"{where}: {n} values of {rec['dt']} need {n * size} bytes, the record declares {vb}")
    if mode == "d":
        if ib or lo + n > numel:
            raise DeltaError(f"{where}: dense elements [{lo}, {lo + n}) (index bytes {ib}) do not fit {numel} elements")
        return
    coding = rec.get("c")
    if coding not in CODINGS:
        raise DeltaError(f"{where}: unknown index coding {coding!r}; known: {', '.join(CODINGS)}")
    if lo > numel or n > numel - lo:
        raise DeltaError(f"{where}: {n} changes from position {lo} do not fit {numel} elements")
    width = _FIXED_WIDTH.get(coding)
    if (ib != n * width) if width else not (n <= ib <= 21 * n):
        need = f"{n * width}" if width else f"{n} to {21 * n}"
        raise DeltaError(f"{where}: {n} {coding} indices need {need} bytes, the record declares {ib}")


def parse_bucket(raw: bytes | memoryview | np.ndarray, number: int) -> Bucket:
    """CRC-checked, schema-checked bucket ``number`` (0-based position in the payload)."""
    where = f"delta bucket {number}"
    buf = memoryview(raw).cast("B") if not isinstance(raw, np.ndarray) else memoryview(raw.reshape(-1))
    if len(buf) < HEAD.size:
        raise DeltaError(f"{where} is truncated: {len(buf)} bytes, a bucket has at least {HEAD.size}")
    magic, hlen, crc = HEAD.unpack_from(buf)
    if magic not in (MAGIC_V1, MAGIC_V2):
        raise DeltaError(f"{where} is not a sparsecraft delta bucket (magic {bytes(magic)!r})")
    if HEAD.size + hlen > len(buf):
        raise DeltaError(f"{where} is truncated: header of {hlen} bytes, only {len(buf) - HEAD.size} present")
    header, body = buf[HEAD.size : HEAD.size + hlen], buf[HEAD.size + hlen :]
    if zlib.crc32(body, zlib.crc32(header)) != crc:
        raise DeltaError(f"{where} is corrupted or truncated (CRC32 mismatch)")
    try:
        doc = json.loads(bytes(header))
    except (ValueError, RecursionError) as e:
        raise DeltaError(f"{where}: header is not valid JSON ({type(e).__name__})") from None
    fmt = 1 if magic == MAGIC_V1 else 2
    head: dict = {}
    if fmt == 2:
        if not isinstance(doc, dict) or doc.get("f") != 2:
            raise DeltaError(f"{where}: a format-2 header must be an object with \"f\": 2")
        head, records = doc, doc.get("r")
    else:
        records = doc
    if not isinstance(records, list):
        raise DeltaError(f"{where}: the records must be a list, got {type(records).__name__}")
    total = 0
    for j, rec in enumerate(records):
        check_record(rec, f"{where}, record {j}")
        total += rec["ib"] + rec["vb"]
    if total != len(body):
        raise DeltaError(f"{where}: the records declare {total} bytes, the body has {len(body)}")
    return Bucket(fmt, records, np.frombuffer(body, dtype=np.uint8), head)


def _version(head: dict, key: str, where: str, allow_none: bool = False) -> int | None:
    v = head.get(key)
    if (v is None and allow_none) or (type(v) is int and v >= 0):
        return v
    raise DeltaError(f"{where}: field {key!r} must be an integer >= 0{' or null' if allow_none else ''}, got {v!r}")


def check_manifest(man: Any, where: str) -> list[tuple[str, str, list, int | None, int]]:
    """``[(name, dtype, shape, base digest or None, result digest)]`` from bucket 0."""
    if not isinstance(man, list):
        raise DeltaError(f"{where}: the manifest must be a list, got {type(man).__name__}")
    out, seen = [], set()
    for j, entry in enumerate(man):
        w = f"{where}, manifest entry {j}"
        if not isinstance(entry, list) or len(entry) != 5 or not isinstance(entry[0], str):
            raise DeltaError(f"{w}: must be [name, dtype, shape, base digest, result digest]")
        name, dt, shape, base, result = entry
        w = f"{w} (tensor {name!r})"
        if name in seen:
            raise DeltaError(f"{w}: tensor listed twice")
        seen.add(name)
        if not isinstance(dt, str) or dt not in _ITEMSIZE:
            raise DeltaError(f"{w}: unknown dtype {dt!r}")
        numel_of(shape, w)
        digests = []
        for label, d in (("base", base), ("result", result)):
            if d is None and label == "base":
                digests.append(None)
                continue
            if not isinstance(d, str) or len(d) != 16 or any(c not in "0123456789abcdef" for c in d):
                raise DeltaError(f"{w}: {label} digest must be 16 lowercase hex digits, got {d!r}")
            digests.append(int(d, 16))
        out.append((name, dt, shape, digests[0], digests[1]))
    return out


@dataclass
class Parsed:
    """All buckets of one payload, checked for completeness and consistency."""

    fmt: int
    buckets: list[Bucket]
    from_version: int | None = None
    to_version: int | None = None
    manifest: list[tuple[str, str, list, int | None, int]] = field(default_factory=list)


def parse_payload(raws: list) -> Parsed:
    """Parse every bucket; a format-2 payload must be complete (buckets ``0 .. of-1``, once
    each, in order), from one encode (same versions and manifest CRC everywhere)."""
    if not raws:
        raise DeltaError("delta payload has no buckets (a format-2 payload has at least one)")
    buckets = [parse_bucket(raw, i) for i, raw in enumerate(raws)]
    fmts = {b.fmt for b in buckets}
    if len(fmts) > 1:
        raise DeltaError("delta payload mixes format-1 and format-2 buckets")
    if fmts == {1}:
        return Parsed(1, buckets)
    first = buckets[0].header
    frm = _version(first, "from", "delta bucket 0", allow_none=True)
    to = _version(first, "to", "delta bucket 0")
    of = _version(first, "of", "delta bucket 0")
    if frm is not None and to <= frm:
        raise DeltaError(f"delta bucket 0: version {frm} -> {to} does not move forward")
    for i, b in enumerate(buckets):
        w = f"delta bucket {i}"
        if _version(b.header, "i", w) != i:
            raise DeltaError(f"{w}: carries bucket number {b.header['i']} (buckets missing, repeated or out of order)")
        if (b.header.get("from"), b.header.get("to"), b.header.get("of"), b.header.get("m")) != (
                frm, to, of, first.get("m")):
            raise DeltaError(f"{w} belongs to another payload (versions, bucket count or manifest differ from "
                             "bucket 0)")
        if i and "man" in b.header:
            raise DeltaError(f"{w}: only bucket 0 may carry the manifest")
    if len(buckets) != of:
        raise DeltaError(f"delta payload is truncated: {len(buckets)} of {of} buckets present "
                        f"(bucket {len(buckets)} onwards missing)" if len(buckets) < of else
                        f"delta payload has {len(buckets)} buckets, bucket 0 says {of}")
    manifest = check_manifest(first.get("man"), "delta bucket 0")
    if manifest_crc(first["man"]) != first.get("m"):
        raise DeltaError("delta bucket 0: the manifest does not match its CRC")
    return Parsed(2, buckets, frm, to, manifest)
