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

The document is sealed with a CRC32 of itself (:mod:`.checkpoint_doc`). Reading checks,
before decoding or writing anything, that the document is well formed and unedited, that
every stored entry has a CRC32 in it (an entry without one is an error, not a pass), that
every declared shape agrees with the bytes stored for it (so a damaged header cannot make
the reader allocate gigabytes), and that masks have their weights' shapes. :func:`load`
then checks every key, shape and dtype against the model before it changes any of it.

Writes go through :mod:`sparsecraft.atomic`: a failed or killed save never destroys an
existing checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from torch import nn
from tqdm import tqdm

from sparsecraft import atomic
from sparsecraft.errors import CheckpointError, SparsecraftError
from sparsecraft.formats import FORMAT_CHOICES, unpack
from sparsecraft.formats.base import bits_view
from sparsecraft.formats.checkpoint_doc import (
    BITS_SUFFIX,
    FORMAT_VERSION,
    check_declared_sizes,
    check_document,
    entry_kinds,
    seal,
)
from sparsecraft.formats.container import from_entries, probe, to_entries
from sparsecraft.formats.qcommon import QUANT_FORMATS, pack_quantized
from sparsecraft.formats.select import make_format, pack_if_fits
from sparsecraft.layout import WeightLayout, layout_for
from sparsecraft.masks import MASK_SUFFIX, MaskMeta, masked_params, prepare_for_state_dict
from sparsecraft.quant.state import SUFFIXES as QUANT_SUFFIXES
from sparsecraft.quant.state import QuantState, siblings, state_from_siblings
from sparsecraft.quant.state import prepare_for_state_dict as prepare_quant_for_state_dict

__all__ = [
    "BITS_SUFFIX", "FORMAT_VERSION", "MIN_PACK", "SIDECAR", "load", "model_layouts", "pack_bits", "read_checkpoint",
    "quantized_keys", "save", "save_state", "tensor_crc", "unpack_bits",
]
SIDECAR = "sparsity_config.json"
MIN_PACK = 64
PACKABLE = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Boolean tensor -> uint8 tensor of ceil(n/8) bytes (little bit order)."""
    bits = np.packbits(mask.detach().cpu().reshape(-1).numpy().astype(np.uint8), bitorder="little")
    return torch.from_numpy(bits)


def unpack_bits(packed: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """Inverse of :func:`pack_bits`; ``ValueError`` unless ``packed`` holds exactly the
    ``ceil(n/8)`` bytes of ``n = prod(shape)`` bits with zero padding (checked before
    anything of size ``n`` is allocated)."""
    n = math.prod(shape)
    raw = packed.numpy()
    if packed.dtype != torch.uint8 or raw.ndim != 1 or raw.size != (n + 7) // 8:
        raise ValueError(f"{raw.size} bytes of mask bits do not hold shape {list(shape)} ({(n + 7) // 8} bytes)")
    if n % 8 and raw[-1] >> (n % 8):
        raise ValueError(f"mask bits have set bits beyond the {n} elements of shape {list(shape)}")
    bits = np.unpackbits(raw, bitorder="little", count=n)
    return torch.from_numpy(bits.astype(bool)).reshape(shape)


def tensor_crc(t: torch.Tensor) -> int:
    t = t.detach().cpu().contiguous()
    return zlib.crc32(t.reshape(-1).view(torch.uint8).numpy()) if t.numel() else 0


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
    path, layouts, given = Path(path), layouts or {}, dict(masks or {})
    masks = {}  # only masks that are stored: the reader requires each one's bits or its derivation
    if path.is_dir():  # before the work of packing: the write would fail at the end
        raise SparsecraftError(f"output {str(path)!r} is an existing folder; give a .safetensors file path")
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
            info = {"shape": list(value.shape), **given.get(key, MaskMeta().to_dict())}
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
    atomic.write_safetensors(path, tensors, {"sparsecraft": seal(doc)})
    if sidecar:
        sc = {k: doc[k] for k in ("format_version", "format", "packed", "aliases", "sizes", "masks")}
        atomic.write_text(path.with_name(SIDECAR), json.dumps(sc, indent=1))
    return path


def save(
    model: nn.Module,
    path: str | os.PathLike,
    extra: dict[str, Any] | None = None,
    format: str = "dense",
    sidecar: bool = False,
) -> Path:
    """Write ``model``'s state_dict (weights, masks as bits, metadata) to ``path`` atomically.
    ``format="auto"`` stores every weight in its smallest lossless packed format.

    ``format="compressed-tensors"`` (or ``"sparse-bitmask"`` / ``"sparse-24-bitmask"``) writes a
    Hugging Face *folder* at ``path`` in the compressed-tensors sparse layout instead (a
    transformers model only; :func:`sparsecraft.formats.compressed_tensors.save_compressed_tensors`)."""
    from sparsecraft.formats.compressed_tensors import WRITE_FORMATS, save_compressed_tensors

    if format in WRITE_FORMATS:
        if extra or sidecar:
            raise SparsecraftError("the compressed-tensors layout has no place for extra= or sidecar=")
        return save_compressed_tensors(model, path, format=format)
    metas = {f"{mp.name}{MASK_SUFFIX}": mp.meta.to_dict() for mp in masked_params(model)}
    return save_state(
        model.state_dict(), path, format=format, layouts=model_layouts(model), extra=extra,
        masks=metas, sidecar=sidecar,
    )



def _decode(
    path: Path, key: str, header: dict[str, Any], raw: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The tensor of packed entry ``key`` and, for a quantized format, its quantization
    buffers by state-dict key (scales / zero points / spec)."""
    extra: dict[str, torch.Tensor] = {}
    try:
        p = from_entries(key, header, raw)
        fmt = make_format(p.format, **p.params)
        if fmt.params() != p.params:
            raise ValueError(f"parameters {p.params}; {p.format} takes {sorted(fmt.params())}")
        fmt.check_parts(p)  # sizes agree with the shape before decode allocates it
        t = unpack(p)
        if p.format in QUANT_FORMATS:
            extra = {key + s: v for s, v in fmt.quant_state(p).items()}
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except Exception as e:  # a damaged header/payload: report it, never a traceback
        raise CheckpointError(f"{path}: tensor {key!r} cannot be decoded ({e})") from None
    if tensor_crc(t) != header["crc32"]:
        raise CheckpointError(f"{path}: tensor {key!r} decodes to wrong bytes (CRC32 mismatch)")
    return t, extra


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify a checkpoint: (state_dict with masks unpacked, metadata document)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{str(path)!r} is a folder; give a .safetensors checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    header = probe(path)
    meta = header.get("__metadata__") or {}
    if "sparsecraft" not in meta:
        raise CheckpointError(f"{path} is a safetensors file but not a sparsecraft checkpoint")
    doc = check_document(meta["sparsecraft"], path)
    kinds = entry_kinds(path, doc, header)
    check_declared_sizes(path, doc, header, kinds)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for damaged headers/data
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None
    for key, check in doc["tensors"].items():
        t = raw[key]
        if t.numel() * t.element_size() != check["nbytes"] or tensor_crc(t) != check["crc32"]:
            raise CheckpointError(f"{path}: tensor {key!r} is corrupted (size or CRC32 mismatch)")
    state: dict[str, torch.Tensor] = {}
    for key, header_ in doc.get("packed", {}).items():
        state[key], quant_buffers = _decode(path, key, header_, raw)
        state.update(quant_buffers)
    for key, kind in kinds.items():
        if kind == "plain":
            state[key] = raw[key]
        elif kind == "bits":
            mkey = key[: -len(BITS_SUFFIX)]
            try:
                state[mkey] = unpack_bits(raw[key], doc["masks"][mkey]["shape"])
            except ValueError as e:
                raise CheckpointError(f"{path}: mask {mkey!r}: {e}") from None
    for key, target in doc.get("aliases", {}).items():
        state[key] = state[target]
    for mkey, info in doc.get("masks", {}).items():
        wkey = mkey[: -len(MASK_SUFFIX)]
        if wkey not in state or list(state[wkey].shape) != info["shape"]:
            got = list(state[wkey].shape) if wkey in state else "missing"
            raise CheckpointError(f"{path}: mask {mkey!r} has shape {info['shape']} but its weight is {got}")
        if "from_nonzero" in info:
            state[mkey] = torch.from_numpy(bits_view(state[wkey]) != 0)
    return state, doc


_EXACT_WIDENING = {
    (torch.float16, torch.float32), (torch.bfloat16, torch.float32), (torch.float16, torch.float64),
    (torch.bfloat16, torch.float64), (torch.float32, torch.float64),
}


def _plan(
    model: nn.Module, state: dict[str, torch.Tensor], doc: dict[str, Any], strict: bool, convert_dtype: bool
) -> tuple[dict[str, torch.Tensor], dict[str, tuple[nn.Module, str, MaskMeta]]]:
    """Check the whole checkpoint against ``model`` without changing it; returns what to
    load and the mask metadata to set. Every mismatch is found here, before any write."""
    own, modules = model.state_dict(), dict(model.named_modules())
    unexpected = []
    for key, t in state.items():
        target = own.get(key)
        if key.endswith(MASK_SUFFIX) and t.dtype == torch.bool and target is None:
            mname, _, bname = key.rpartition(".")
            target = getattr(modules.get(mname), bname[: -len(MASK_SUFFIX)], None)
            if not isinstance(target, torch.Tensor):
                unexpected.append(key)
                continue
            target = target.bool()
        if target is None and key.endswith(QUANT_SUFFIXES):  # buffers a fresh model gets on load
            mname, _, bname = key.rpartition(".")
            suffix = next(x for x in QUANT_SUFFIXES if bname.endswith(x))
            weight = getattr(modules.get(mname), bname[: -len(suffix)], None)
            if not isinstance(weight, torch.Tensor):
                unexpected.append(key)
            continue
        if target is None:
            unexpected.append(key)
            continue
        if tuple(target.shape) != tuple(t.shape):
            raise CheckpointError(
                f"checkpoint tensor {key!r} has shape {tuple(t.shape)} but the model expects "
                f"{tuple(target.shape)}: wrong model for this checkpoint?"
            )
        if t.dtype != target.dtype and not convert_dtype and (t.dtype, target.dtype) not in _EXACT_WIDENING:
            raise CheckpointError(
                f"checkpoint tensor {key!r} is {t.dtype} but the model's is {target.dtype}: loading would change "
                "its values; cast the model (e.g. model.float()) or pass convert_dtype=True"
            )
    missing = [k for k in own if k not in state and not k.endswith(MASK_SUFFIX)]
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"checkpoint does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]} "
            f"({len(missing)} missing, {len(unexpected)} unexpected); nothing was loaded"
        )
    metas = {}
    for key, info in doc.get("masks", {}).items():
        if key in unexpected:
            continue
        mname, _, bname = key.rpartition(".")
        fields = {k: info[k] for k in ("pattern", "target", "method", "step") if k in info}
        metas[key] = (modules[mname], bname[: -len(MASK_SUFFIX)], MaskMeta(**fields))
    return {k: v for k, v in state.items() if k not in unexpected}, metas


def load(
    model: nn.Module, path: str | os.PathLike, strict: bool = True, convert_dtype: bool = False
) -> nn.Module:
    """Load a checkpoint written by :func:`save` into ``model`` (masks are re-created).

    Everything is checked before the model is touched: a checkpoint that does not fit
    (missing or unexpected keys with ``strict``, a shape, a dtype) raises
    :class:`CheckpointError` and leaves the model as it was. A tensor is converted to the
    model's dtype only when that is exact (e.g. float16 -> float32) or ``convert_dtype``."""
    if isinstance(model, (str, os.PathLike)) and isinstance(path, nn.Module):
        raise SparsecraftError("load takes the model first: load(model, path), like save(model, path)")
    state, doc = read_checkpoint(path)
    state, metas = _plan(model, state, doc, strict, convert_dtype)
    prepare_for_state_dict(model, state)
    prepare_quant_for_state_dict(model, state)
    model.load_state_dict(state, strict=False)
    for module, pname, meta in metas.values():
        module.sparsecraft_meta[pname] = meta
    return model
