"""Sparse checkpoints: safetensors + JSON metadata, masks stored as bits, no pickle.

File layout (one ``.safetensors`` file):

* every ``state_dict`` tensor except the masks, under its own key;
* every mask as packed bits (``numpy.packbits``, little bit order) under ``<key>.__bits__``;
* the safetensors header's ``__metadata__["sparsecraft"]`` holds a JSON document: format
  version, per-mask shape, pattern, target sparsity, method and step, plus a CRC32 and the
  byte size of every stored tensor so a corrupted file is reported, never loaded.

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

from sparsecraft.errors import CheckpointError
from sparsecraft.masks import MASK_SUFFIX, MaskMeta, masked_params, prepare_for_state_dict

FORMAT_VERSION = 1
BITS_SUFFIX = ".__bits__"


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
    return zlib.crc32(t.reshape(-1).view(torch.uint8).numpy().tobytes()) if t.numel() else 0


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


def save(model: nn.Module, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s state_dict (weights, masks as bits, metadata) to ``path`` atomically."""
    path = Path(path)
    sd = model.state_dict()
    metas = {f"{mp.name}{MASK_SUFFIX}": mp.meta.to_dict() for mp in masked_params(model)}
    tensors: dict[str, torch.Tensor] = {}
    masks: dict[str, Any] = {}
    for key, value in sd.items():
        value = value.detach().cpu()
        if key.endswith(MASK_SUFFIX) and value.dtype == torch.bool:
            tensors[key + BITS_SUFFIX] = pack_bits(value)
            masks[key] = {"shape": list(value.shape), **metas.get(key, MaskMeta().to_dict())}
        else:
            tensors[key] = value.contiguous().clone()
    checks = {k: {"crc32": tensor_crc(v), "nbytes": v.numel() * v.element_size()} for k, v in tensors.items()}
    doc = {"format_version": FORMAT_VERSION, "masks": masks, "tensors": checks, "extra": extra or {}}
    atomic_save_file(tensors, path, {"sparsecraft": json.dumps(doc)})
    return path


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify a checkpoint: (state_dict with masks unpacked, metadata document)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
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
    for key, t in raw.items():
        if key.endswith(BITS_SUFFIX):
            mkey = key[: -len(BITS_SUFFIX)]
            info = doc["masks"].get(mkey)
            if info is None:
                raise CheckpointError(f"{path}: packed mask {mkey!r} has no metadata")
            state[mkey] = unpack_bits(t, info["shape"])
        else:
            state[key] = t
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
