"""Sparse checkpoints: safetensors + JSON metadata, masks stored as bits, no pickle.

File layout (one ``.safetensors`` file):

* with ``format="dense"`` (the default) every ``state_dict`` tensor except the masks is
  stored as is, under its own key;
* a quantized weight (``sparsecraft.quant``: ``_qscale``/``_qzero``/``_qspec`` buffers beside
  it) is stored, with any format but ``dense``, as codes + float16 scales in the smallest of
  ``qdense`` / ``qbitmap`` / ``qgroup`` (:mod:`sparsecraft.formats.qcommon`), its buffers inside;
* with ``format="auto"|"bitmap"|"csr"|"nm"|"bsr"`` a floating-point tensor of at least
  ``MIN_PACK`` elements is packed (:mod:`sparsecraft.formats`; ``auto`` = the smallest
  lossless format per tensor, dense when sparse does not pay; a named format is used where
  it can hold the tensor, e.g. ``nm`` only on N:M weights, dense elsewhere; ``nm`` takes
  the smallest N:M with M in 4/8/16 that fits) and stored as its parts,
  ``<key>.__packed_<part>__``; tied tensors (shared storage) are stored once;
* every mask as packed bits (``numpy.packbits``, little bit order) under ``<key>.__bits__``,
  or, in packed checkpoints, as a reference to its weight when the mask equals the
  weight's (bitwise) nonzero pattern;
* the safetensors header's ``__metadata__["sparsecraft"]`` holds a JSON document: format
  version, per-mask shape, pattern, target sparsity, method and step, the sparsity config
  of every packed tensor (format, parameters, part dtypes/shapes, CRC32 of the original
  tensor), plus a CRC32 and the byte size of every stored tensor, so a corrupted or
  truncated file is reported naming the tensor, never loaded.

Writes are atomic: the file is written next to the destination under a temporary name,
flushed, then renamed over it, so a failed save never destroys an existing checkpoint.
"""

from __future__ import annotations

import json
import os
import tempfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from sparsecraft.errors import CheckpointError, SparsecraftError
from sparsecraft.formats import FORMAT_CHOICES, unpack
from sparsecraft.formats.base import bits_view
from sparsecraft.formats.container import from_entries, probe, split_part_key, to_entries
from sparsecraft.formats.qcommon import QUANT_FORMATS, pack_quantized
from sparsecraft.formats.select import make_format, pack_if_fits
from sparsecraft.layout import WeightLayout, layout_for
from sparsecraft.masks import MASK_SUFFIX, MaskMeta, masked_params, prepare_for_state_dict
from sparsecraft.quant.state import SUFFIXES as QUANT_SUFFIXES
from sparsecraft.quant.state import QuantState, siblings, state_from_siblings
from sparsecraft.quant.state import prepare_for_state_dict as prepare_quant_for_state_dict

FORMAT_VERSION = 2  # 1: dense + mask bits; 2: adds packed tensors, aliases, derived masks
BITS_SUFFIX = ".__bits__"
SIDECAR = "sparsity_config.json"
MIN_PACK = 64
PACKABLE = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Boolean tensor -> uint8 tensor of ceil(n/8) bytes (little bit order)."""
    bits = np.packbits(mask.detach().cpu().reshape(-1).numpy().astype(np.uint8), bitorder="little")
    return torch.from_numpy(bits)


def unpack_bits(packed: torch.Tensor, shape: list[int]) -> torch.Tensor:
    n = int(np.prod(shape)) if shape else 1
    bits = np.unpackbits(packed.numpy(), bitorder="little", count=n)
    return torch.from_numpy(bits.astype(bool)).reshape(shape)


def tensor_crc(t: torch.Tensor) -> int:
    t = t.detach().cpu().contiguous()
    return zlib.crc32(t.reshape(-1).view(torch.uint8).numpy()) if t.numel() else 0


def atomic_save_file(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """safetensors ``save_file`` through a temporary file + rename in the same directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def model_layouts(model: nn.Module) -> dict[str, WeightLayout]:
    """Row-view layout of every >= 2-D parameter/buffer of ``model`` by state_dict key."""
    out = {}
    for mname, module in model.named_modules():
        for pname, t in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            if t is not None and t.dim() >= 2:
                out[f"{mname}.{pname}" if mname else pname] = layout_for(module, t)
    return out


def quantized_keys(state: dict[str, torch.Tensor]) -> dict[str, QuantState]:
    """Every quantized weight of a state dict (one with ``_qscale/_qzero/_qspec`` siblings)."""
    out = {}
    for key in state:
        if key.endswith(QUANT_SUFFIXES):
            continue
        sib = siblings(state, key)
        if sib is not None:
            out[key] = state_from_siblings(sib)
    return out


def _alias_key(t: torch.Tensor) -> tuple:
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)


def save_state(
    state: dict[str, torch.Tensor],
    path: str | os.PathLike,
    format: str = "auto",
    layouts: dict[str, WeightLayout] | None = None,
    extra: dict[str, Any] | None = None,
    masks: dict[str, dict[str, Any]] | None = None,
    source_metadata: dict[str, str] | None = None,
    sidecar: bool = False,
) -> Path:
    """Write a state dict (masks: bool ``*_mask`` tensors described in ``masks``) to ``path``.
    ``format`` is ``dense`` or a packed format name / ``auto`` (see module docstring)."""
    if format not in FORMAT_CHOICES:
        raise SparsecraftError(f"unknown checkpoint format {format!r}; allowed: {', '.join(FORMAT_CHOICES)}")
    path, layouts, masks = Path(path), layouts or {}, dict(masks or {})
    tensors: dict[str, torch.Tensor] = {}
    packed: dict[str, Any] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    dense_bytes = 0
    quant = quantized_keys(state) if format != "dense" else {}
    consumed = {key + s for key in quant for s in QUANT_SUFFIXES}
    for key, value in tqdm(state.items(), desc=f"save {path.name}", disable=None, leave=False):
        value = value.detach().cpu()
        dense_bytes += value.numel() * value.element_size()
        if key in consumed:  # scales / zero points / spec travel inside the packed weight
            continue
        if format != "dense" and value.numel() > 0:
            first = seen.setdefault(_alias_key(value), key)
            if first != key:
                aliases[key] = first
                continue
        if key in quant:
            layout = layouts.get(key) or WeightLayout("linear", tuple(value.shape))
            p = pack_quantized(value, quant[key], layout, "auto", key)
            tensors.update(to_entries(key, p))
            packed[key] = {**p.header(), "crc32": tensor_crc(value), "nbytes": p.nbytes}
        elif key.endswith(MASK_SUFFIX) and value.dtype == torch.bool:
            info = {"shape": list(value.shape), **masks.get(key, MaskMeta().to_dict())}
            wkey = key[: -len(MASK_SUFFIX)]
            weight = state.get(wkey)
            if format != "dense" and weight is not None and weight.shape == value.shape and torch.equal(
                torch.from_numpy(bits_view(weight) != 0), value.cpu()
            ):
                info["from_nonzero"] = wkey
            else:
                tensors[key + BITS_SUFFIX] = pack_bits(value)
            masks[key] = info
        elif format != "dense" and value.dtype in PACKABLE and value.numel() >= MIN_PACK:
            p = pack_if_fits(value, format, layout=layouts.get(key))
            if p is None or p.format == "dense":  # sparse does not pay / does not fit
                tensors[key] = value.contiguous().clone()
            else:
                tensors.update(to_entries(key, p))
                packed[key] = {**p.header(), "crc32": tensor_crc(value), "nbytes": p.nbytes}
        else:
            tensors[key] = value.contiguous().clone()
    checks = {k: {"crc32": tensor_crc(v), "nbytes": v.numel() * v.element_size()} for k, v in tensors.items()}
    stored = sum(c["nbytes"] for c in checks.values())
    version = 2 if (packed or aliases or any("from_nonzero" in m for m in masks.values())) else 1
    doc = {
        "format_version": version, "format": format, "masks": masks, "tensors": checks,
        "packed": packed, "aliases": aliases, "sizes": {"dense_bytes": dense_bytes, "stored_bytes": stored},
        "source_metadata": source_metadata or {}, "extra": extra or {},
    }
    atomic_save_file(tensors, path, {"sparsecraft": json.dumps(doc)})
    if sidecar:
        sc = {k: doc[k] for k in ("format_version", "format", "packed", "aliases", "sizes", "masks")}
        atomic_write_text(path.with_name(SIDECAR), json.dumps(sc, indent=1))
    return path


def save(
    model: nn.Module,
    path: str | os.PathLike,
    extra: dict[str, Any] | None = None,
    format: str = "dense",
    sidecar: bool = False,
) -> Path:
    """Write ``model``'s state_dict (weights, masks as bits, metadata) to ``path`` atomically.
    ``format="auto"`` stores every weight in its smallest lossless packed format."""
    metas = {f"{mp.name}{MASK_SUFFIX}": mp.meta.to_dict() for mp in masked_params(model)}
    return save_state(
        model.state_dict(), path, format=format, layouts=model_layouts(model), extra=extra,
        masks=metas, sidecar=sidecar,
    )


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify a checkpoint: (state_dict with masks unpacked, metadata document)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    probe(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            raw = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for damaged headers/data
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None
    if "sparsecraft" not in meta:
        raise CheckpointError(f"{path} is a safetensors file but not a sparsecraft checkpoint")
    try:
        doc = json.loads(meta["sparsecraft"])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: metadata is not valid JSON ({e})") from None
    if doc.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {doc['format_version']}; this sparsecraft reads <= {FORMAT_VERSION}"
        )
    for key, check in doc.get("tensors", {}).items():
        if key not in raw:
            raise CheckpointError(f"{path}: tensor {key!r} is listed in the metadata but missing")
        t = raw[key]
        if t.numel() * t.element_size() != check["nbytes"] or tensor_crc(t) != check["crc32"]:
            raise CheckpointError(f"{path}: tensor {key!r} is corrupted (size or CRC32 mismatch)")
    state: dict[str, torch.Tensor] = {}
    packed = doc.get("packed", {})
    for key, header in packed.items():
        try:
            p = from_entries(key, header, raw)
            t = unpack(p)
            if p.format in QUANT_FORMATS:  # the weight's scales / zero points / spec come back too
                state.update({key + s: v for s, v in make_format(p.format, **p.params).quant_state(p).items()})
        except CheckpointError as e:
            raise CheckpointError(f"{path}: {e}") from None
        except Exception as e:
            raise CheckpointError(f"{path}: tensor {key!r} cannot be decoded ({e})") from None
        if tensor_crc(t) != header["crc32"]:
            raise CheckpointError(f"{path}: tensor {key!r} decodes to wrong bytes (CRC32 mismatch)")
        state[key] = t
    derived = []
    for key, t in raw.items():
        if key.endswith(BITS_SUFFIX):
            mkey = key[: -len(BITS_SUFFIX)]
            info = doc["masks"].get(mkey)
            if info is None:
                raise CheckpointError(f"{path}: packed mask {mkey!r} has no metadata")
            state[mkey] = unpack_bits(t, info["shape"])
        elif (split_part_key(key) or ("",))[0] not in packed:
            state[key] = t
    for mkey, info in doc.get("masks", {}).items():
        if "from_nonzero" in info:
            derived.append((mkey, info["from_nonzero"]))
    for key, target in doc.get("aliases", {}).items():
        if target not in state:
            raise CheckpointError(f"{path}: tensor {key!r} is tied to {target!r}, which is missing")
        state[key] = state[target]
    for mkey, wkey in derived:
        if wkey not in state:
            raise CheckpointError(f"{path}: mask {mkey!r} derives from missing tensor {wkey!r}")
        state[mkey] = torch.from_numpy(bits_view(state[wkey]) != 0)
    return state, doc


def load(path: str | os.PathLike, model: nn.Module, strict: bool = True) -> nn.Module:
    """Load a checkpoint written by :func:`save` into ``model`` (masks are re-created)."""
    state, doc = read_checkpoint(path)
    own = model.state_dict()
    for key, t in state.items():
        if key in own and tuple(own[key].shape) != tuple(t.shape):
            raise CheckpointError(
                f"checkpoint tensor {key!r} has shape {tuple(t.shape)} but the model expects "
                f"{tuple(own[key].shape)}: wrong model for this checkpoint?"
            )
    prepare_for_state_dict(model, state)
    prepare_quant_for_state_dict(model, state)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith(MASK_SUFFIX)]
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"checkpoint does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    modules = dict(model.named_modules())
    for key, info in doc.get("masks", {}).items():
        mname, _, bname = key.rpartition(".")
        pname = bname[: -len(MASK_SUFFIX)]
        module = modules[mname]
        fields = {k: info[k] for k in ("pattern", "target", "method", "step") if k in info}
        module.sparsecraft_meta[pname] = MaskMeta(**fields)
    return model
