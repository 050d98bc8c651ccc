"""The JSON document inside a sparse checkpoint: sealed with a CRC32 of itself when written,
trusted on read only after every field has the type the writer gives it.

The document lives in the safetensors header (``__metadata__["sparsecraft"]``) and says how
to rebuild the state dict: masks' shapes, packed tensors' headers, aliases of tied tensors,
the CRC32 of every stored entry. A damaged or hand-edited document must never load wrong
tensors, so a reader checks, before decoding anything:

* the document is a JSON object whose fields have the right types (:func:`check_document`);
* every stored entry is listed in the CRC table and belongs to something the document
  describes (:func:`entry_kinds`), and every declared shape agrees with the stored bytes
  (:func:`check_declared_sizes`), before anything is allocated from a declared shape;
* ``doc_crc32``, the CRC32 of the canonical JSON of the rest of the document (sorted keys,
  no spaces), matches: an edit anywhere (a redirected alias, a mask shape, a CRC table entry)
  is reported, not obeyed. Files written before the seal existed have no ``doc_crc32`` and
  are checked field by field only; the seal adds no format version, so older readers, which
  ignore unknown fields, still read new files.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from pathlib import Path
from typing import Any

import torch

from sparsecraft.errors import CheckpointError
from sparsecraft.formats.base import DTYPES, FORMATS
from sparsecraft.formats.container import split_part_key
from sparsecraft.masks import MASK_SUFFIX

BITS_SUFFIX = ".__bits__"  # a mask stored as packed bits: <mask key>.__bits__
FORMAT_VERSION = 2  # 1: dense + mask bits; 2: adds packed tensors, aliases, derived masks
DOC_CRC = "doc_crc32"
PART_DTYPES = ("uint8", "uint16", "uint32", "uint64")  # every part is stored as an unsigned bit view
MAX_DIMS = 16


def _canonical_crc(doc: dict[str, Any]) -> int:
    body = {k: v for k, v in doc.items() if k != DOC_CRC}
    return zlib.crc32(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def seal(doc: dict[str, Any]) -> str:
    """The document as JSON text with its ``doc_crc32`` (computed on the JSON round trip,
    which is what a reader sees: int keys become strings, tuples lists)."""
    plain = json.loads(json.dumps(doc))
    plain[DOC_CRC] = _canonical_crc(plain)
    return json.dumps(plain)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _shape(v: Any) -> bool:
    return isinstance(v, list) and len(v) <= MAX_DIMS and all(_int(d) and d >= 0 for d in v)


class _Checker:
    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, where: str, value: Any, expected: str) -> None:
        shown = json.dumps(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise CheckpointError(f"{self.path}: metadata {where} is {shown}; expected {expected}")

    def mapping(self, doc: dict[str, Any], field: str, check_value: Any) -> dict[str, Any]:
        value = doc.get(field, {})
        if not isinstance(value, dict):
            self.fail(f"field {field!r}", value, "an object")
        for key, item in value.items():
            check_value(f"{field}[{key!r}]", item)
        return value

    def crc_entry(self, where: str, item: Any) -> None:
        if not (isinstance(item, dict) and _int(item.get("crc32")) and _int(item.get("nbytes"))
                and item["nbytes"] >= 0):
            self.fail(where, item, 'an object {"crc32": int, "nbytes": int >= 0}')

    def mask(self, where: str, item: Any) -> None:
        if not isinstance(item, dict) or not _shape(item.get("shape")):
            self.fail(where, item, 'an object with "shape": a list of integers >= 0')
        kinds = {"from_nonzero": str, "pattern": str, "method": str}
        for field, kind in kinds.items():
            if field in item and not isinstance(item[field], kind):
                self.fail(f"{where}[{field!r}]", item[field], "a string")
        if "step" in item and not _int(item["step"]):
            self.fail(f"{where}['step']", item["step"], "an integer")
        target = item.get("target", 0.0)
        if isinstance(target, bool) or not isinstance(target, (int, float)):
            self.fail(f"{where}['target']", target, "a number")

    def packed(self, where: str, item: Any) -> None:
        if not isinstance(item, dict):
            self.fail(where, item, "an object (a packed tensor's header)")
        checks = {
            "format": (lambda v: isinstance(v, str) and v in FORMATS, f"one of {', '.join(FORMATS.names())}"),
            "shape": (_shape, "a list of integers >= 0"),
            "dtype": (lambda v: isinstance(v, str) and v in DTYPES, f"one of {', '.join(DTYPES)}"),
            "params": (lambda v: isinstance(v, dict) and all(_int(x) for x in v.values()),
                       "an object of integers"),
            "layout": (lambda v: v is None or v in ("linear", "conv", "transposed", "experts", "experts_transposed"),
                       "null, 'linear', 'conv', 'transposed', 'experts' or 'experts_transposed'"),
            "parts": (lambda v: isinstance(v, dict) and bool(v), "an object of parts"),
            "crc32": (_int, "an integer"),
            "nbytes": (lambda v: _int(v) and v >= 0, "an integer >= 0"),
        }
        for field, (ok, expected) in checks.items():
            if not ok(item.get(field, {} if field == "params" else None)):
                self.fail(f"{where}[{field!r}]", item.get(field), expected)
        for part, spec in item["parts"].items():
            if not (isinstance(spec, list) and len(spec) == 2 and spec[0] in PART_DTYPES and _shape(spec[1])):
                self.fail(f"{where}['parts'][{part!r}]", spec, f"[dtype, shape] with dtype one of {PART_DTYPES}")

    def string(self, where: str, item: Any) -> None:
        if not isinstance(item, str):
            self.fail(where, item, "a string")

    def size(self, where: str, item: Any) -> None:
        if not (_int(item) and item >= 0):
            self.fail(where, item, "an integer >= 0")


def check_document(text: str, path: str | Path) -> dict[str, Any]:
    """Parse and check the document ``text`` of checkpoint ``path``; one-line
    :class:`CheckpointError` naming the field otherwise."""
    path = Path(path)
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, TypeError) as e:
        raise CheckpointError(f"{path}: metadata is not valid JSON ({e})") from None
    c = _Checker(path)
    if not isinstance(doc, dict):
        c.fail("document", doc, "a JSON object")
    version = doc.get("format_version")
    if not _int(version) or version < 1:
        c.fail("field 'format_version'", version, f"an integer from 1 to {FORMAT_VERSION}")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {version}; this sparsecraft reads <= {FORMAT_VERSION}")
    if DOC_CRC in doc:
        if not _int(doc[DOC_CRC]):
            c.fail(f"field {DOC_CRC!r}", doc[DOC_CRC], "an integer")
        if _canonical_crc(doc) != doc[DOC_CRC]:
            raise CheckpointError(
                f"{path}: metadata was changed after it was written (CRC32 of the document does not match); "
                "re-save the model instead of editing the file"
            )
    c.mapping(doc, "tensors", c.crc_entry)
    for key in c.mapping(doc, "masks", c.mask):
        if not key.endswith(MASK_SUFFIX):
            c.fail("key in field 'masks'", key, f"a name ending in {MASK_SUFFIX!r}")
    c.mapping(doc, "packed", c.packed)
    c.mapping(doc, "aliases", c.string)
    c.mapping(doc, "source_metadata", c.string)
    c.mapping(doc, "sizes", c.size)
    if not isinstance(doc.get("extra", {}), dict):
        c.fail("field 'extra'", doc["extra"], "an object")
    return doc


def entry_kinds(path: Path, doc: dict[str, Any], header: dict[str, Any]) -> dict[str, str]:
    """Every stored entry's role ("plain", "bits", "part"), after checking that the CRC table
    lists exactly the stored entries and that every entry belongs to something described."""
    stored = [k for k in header if k != "__metadata__"]
    listed, packed, masks = doc.get("tensors", {}), doc.get("packed", {}), doc.get("masks", {})
    for key in listed:
        if key not in header or key == "__metadata__":
            raise CheckpointError(f"{path}: tensor {key!r} is listed in the metadata but missing")
    kinds = {}
    for key in stored:
        if key not in listed:
            raise CheckpointError(f"{path}: tensor {key!r} has no CRC32 in the metadata, so it cannot be checked")
        owner = split_part_key(key)
        if key.endswith(BITS_SUFFIX):
            info = masks.get(key[: -len(BITS_SUFFIX)])
            if info is None or "from_nonzero" in info:
                raise CheckpointError(f"{path}: packed mask {key[: -len(BITS_SUFFIX)]!r} has no metadata")
            kinds[key] = "bits"
        elif owner is not None:
            if owner[0] not in packed or owner[1] not in packed[owner[0]]["parts"]:
                raise CheckpointError(f"{path}: {key!r} is a part of a packed tensor the metadata does not describe")
            kinds[key] = "part"
        else:
            kinds[key] = "plain"
    for mkey, info in masks.items():
        src = info.get("from_nonzero")
        if src is None and mkey + BITS_SUFFIX not in header:
            raise CheckpointError(f"{path}: mask {mkey!r} is described in the metadata but not stored")
        if src is not None and src != mkey[: -len(MASK_SUFFIX)]:
            raise CheckpointError(f"{path}: mask {mkey!r} derives from {src!r}; a mask derives only from its weight")
    return kinds


def check_declared_sizes(path: Path, doc: dict[str, Any], header: dict[str, Any], kinds: dict[str, str]) -> None:
    """Check every declared shape against the stored bytes before anything is decoded: mask
    bits must be exactly ``ceil(n/8)`` bytes, and the decoded sizes must add up to the
    document's ``dense_bytes``."""
    sizes: dict[str, int] = {}
    for key, kind in kinds.items():
        begin, end = header[key]["data_offsets"]
        if kind == "plain":
            sizes[key] = end - begin
        elif kind == "bits":
            mkey = key[: -len(BITS_SUFFIX)]
            n = math.prod(doc["masks"][mkey]["shape"])
            if header[key]["dtype"] != "U8" or header[key]["shape"] != [(n + 7) // 8]:
                raise CheckpointError(
                    f"{path}: mask {mkey!r} declares shape {doc['masks'][mkey]['shape']} ({(n + 7) // 8} bytes of "
                    f"bits) but {header[key]['shape']} {header[key]['dtype']} are stored"
                )
    for mkey, info in doc.get("masks", {}).items():
        sizes[mkey] = math.prod(info["shape"])
    for key, h in doc.get("packed", {}).items():
        if key in sizes:
            raise CheckpointError(f"{path}: tensor {key!r} is stored twice (packed and plain)")
        sizes[key] = math.prod(h["shape"]) * torch.empty((), dtype=DTYPES[h["dtype"]]).element_size()
    aliases = doc.get("aliases", {})
    for key, target in aliases.items():
        if key in sizes or target in aliases or target not in sizes:
            raise CheckpointError(f"{path}: tied tensor {key!r} -> {target!r} does not name a stored tensor")
        sizes[key] = sizes[target]
    total, want = sum(sizes.values()), doc.get("sizes", {}).get("dense_bytes")
    if want is not None and total != want:
        raise CheckpointError(
            f"{path}: declared shapes add up to {total} bytes, the metadata says {want}: "
            "a shape in the metadata is wrong"
        )
    ram = physical_memory()
    if ram is not None and total > ram:
        raise CheckpointError(f"{path} decodes to {total / 2**30:.1f} GiB, more than this machine's "
                              f"{ram / 2**30:.1f} GiB of memory")


def physical_memory() -> int | None:
    """Bytes of physical memory (``None`` where the system does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
