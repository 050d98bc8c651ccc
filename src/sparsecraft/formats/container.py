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
    for part, (np_dtype, shape) in header["parts"].items():
        stored = part_key(key, part)
        if stored not in raw:
            raise CheckpointError(f"tensor {key!r}: part {part!r} is missing from the file")
        arr = bits_view(raw[stored]).view(np.dtype(np_dtype))
        if list(arr.shape) != list(shape):
            raise CheckpointError(f"tensor {key!r}: part {part!r} has shape {list(arr.shape)}, expected {shape}")
        parts[part] = arr
    return Packed(
        format=header["format"], shape=tuple(header["shape"]), dtype=header["dtype"], parts=parts,
        params=header.get("params", {}), layout=header.get("layout"),
    )


def probe(path: Path) -> dict[str, Any]:
    """Parse the safetensors header of ``path``; raise :class:`CheckpointError` naming the
    first tensor whose bytes lie beyond the end of the file (truncation)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path} is truncated: {size} bytes, no safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise CheckpointError(f"{path} is truncated inside its header ({size} bytes, header {n})")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path}: safetensors header is not valid JSON ({e})") from None
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
