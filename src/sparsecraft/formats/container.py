"""Packed tensors inside a safetensors file, and a header probe that names damaged tensors.

A packed tensor ``key`` is stored as one safetensors entry per part,
``<key>.__packed_<part>__``; value parts keep the tensor's own dtype (so ``bfloat16``
values show as ``bfloat16`` in any viewer), index parts are stored as signed integers of
the same width (safetensors has no portable unsigned 16/32-bit type) and viewed back as
unsigned on read. The part dtypes and shapes live in the JSON header of the packed tensor.

:func:`probe` parses the safetensors header itself (8-byte little-endian length + JSON), so
a truncated file is reported with the name of the first tensor whose bytes are missing.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparsecraft.errors import CheckpointError
from sparsecraft.formats.base import Packed, bits_view, dtype_from_name, from_bits

PACKED_INFIX = ".__packed_"
VALUE_PARTS = ("values", "blocks")
_SIGNED_NP = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}


def part_key(key: str, part: str) -> str:
    return f"{key}{PACKED_INFIX}{part}__"


def split_part_key(stored: str) -> tuple[str, str] | None:
    """``'a.weight.__packed_values__'`` -> ``('a.weight', 'values')``; else ``None``."""
    if PACKED_INFIX not in stored or not stored.endswith("__"):
        return None
    key, _, rest = stored.rpartition(PACKED_INFIX)
    return key, rest[:-2]


def to_entries(key: str, p: Packed) -> dict[str, torch.Tensor]:
    """Safetensors entries (name -> tensor) for packed tensor ``p`` stored under ``key``."""
    out = {}
    dtype = dtype_from_name(p.dtype)
    for part, arr in p.parts.items():
        if part in VALUE_PARTS:
            t = from_bits(arr, dtype)
        elif arr.dtype == np.uint8:
            t = torch.from_numpy(np.ascontiguousarray(arr))
        else:
            t = torch.from_numpy(np.ascontiguousarray(arr).view(_SIGNED_NP[arr.itemsize]))
        out[part_key(key, part)] = t.reshape(arr.shape).contiguous()
    return out


def from_entries(key: str, header: dict[str, Any], raw: dict[str, torch.Tensor]) -> Packed:
    """Rebuild the :class:`Packed` of ``key`` from its header and the file's tensors."""
    parts = {}
    value_size = torch.empty((), dtype=dtype_from_name(header["dtype"])).element_size()
    for part, (np_dtype, shape) in header["parts"].items():
        stored = part_key(key, part)
        if stored not in raw:
            raise CheckpointError(f"tensor {key!r}: part {part!r} is missing from the file")
        dt = np.dtype(np_dtype)
        if part in VALUE_PARTS and dt.itemsize != value_size:
            raise CheckpointError(f"tensor {key!r}: part {part!r} is {np_dtype}, but {header['dtype']} values "
                                  f"take {value_size} bytes")
        try:
            arr = bits_view(raw[stored]).view(dt)
        except ValueError:
            raise CheckpointError(f"tensor {key!r}: part {part!r} is not a whole number of {np_dtype}") from None
        if list(arr.shape) != list(shape):
            raise CheckpointError(f"tensor {key!r}: part {part!r} has shape {list(arr.shape)}, expected {shape}")
        parts[part] = arr
    return Packed(
        format=header["format"], shape=tuple(header["shape"]), dtype=header["dtype"], parts=parts,
        params=header.get("params", {}), layout=header.get("layout"),
    )


_PICKLE_HINT = "sparsecraft never unpickles files: convert it to safetensors with the tool that wrote it"


def _not_safetensors(path: Path, head: bytes, why: str) -> CheckpointError:
    """The error for a file without a valid safetensors header, naming a pickle or zip."""
    if head[:4] == b"PK\x03\x04":
        return CheckpointError(f"{path} is a zip archive (a PyTorch .bin/.pt?), not safetensors; {_PICKLE_HINT}")
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return CheckpointError(f"{path} is a Python pickle, not safetensors; {_PICKLE_HINT}")
    return CheckpointError(f"{path}: {why}")


def _ints(xs: Any, n: int | None = None) -> bool:
    return (isinstance(xs, list) and (n is None or len(xs) == n)
            and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in xs))


def _entry_ok(v: Any) -> bool:
    if not isinstance(v, dict) or not isinstance(v.get("dtype"), str):
        return False
    shape, offsets = v.get("shape"), v.get("data_offsets")
    return _ints(shape) and _ints(offsets, 2) and offsets[0] <= offsets[1]


def probe(path: Path) -> dict[str, Any]:
    """Parse the safetensors header of ``path`` (refusing pickles and malformed headers);
    raise :class:`CheckpointError` naming the first tensor whose bytes lie beyond the end
    of the file (truncation)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _not_safetensors(path, head, f"truncated: {size} bytes, no safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise _not_safetensors(path, head, f"not safetensors or truncated inside its header "
                                               f"({size} bytes, header claims {n})")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise _not_safetensors(path, head, f"safetensors header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header is not a JSON object")
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CheckpointError(f"{path}: safetensors __metadata__ is not an object of strings")
    for k, v in header.items():
        if k != "__metadata__" and not _entry_ok(v):
            raise CheckpointError(f"{path}: safetensors header entry {k!r} is malformed "
                                  "(needs dtype, shape and data_offsets [begin, end])")
    data = size - 8 - n
    entries = sorted(
        ((v["data_offsets"][1], k) for k, v in header.items() if k != "__metadata__"), key=lambda e: e[0]
    )
    for end, name in entries:
        if end > data:
            owner = split_part_key(name)
            what = f"tensor {owner[0]!r} (part {owner[1]!r})" if owner else f"tensor {name!r}"
            raise CheckpointError(
                f"{path} is truncated: {what} needs bytes up to {end} of the data section, "
                f"the file has {data}"
            )
    return header
