"""Save and restore a whole training state without pickle, as one verified pair of files.

A checkpoint folder holds ``model.safetensors`` (:func:`sparsecraft.save`: weights, masks as
bits, CRC32 per tensor) and ``state.safetensors``: the sparse method's tensors (RNG, masks,
scores, rewind weights) under ``method.*``, the optimizer's state tensors under
``optimizer.*``, the global torch RNG under ``torch_rng``, and one JSON metadata document with
the method's metadata, the optimizer's structure, the caller's ``extra`` (epoch, step,
curves, run settings), the CRC32 and size of every state tensor, and the CRC32 and size of
the model file it belongs with; the document itself is CRC32-checked.

Atomicity: both files are written into a fresh folder that then replaces the checkpoint
folder (:func:`sparsecraft.atomic.directory`), so a crash leaves either the previous pair or
the new one, never a model from one save next to the state of another; a crash inside the
swap itself is undone on the next read (:func:`sparsecraft.atomic.recover_directory`).
Reading refuses a flipped byte anywhere (tensor or metadata CRC) and a model file that is not
the one the state was saved with (copied in by hand, or a pair from an older sparsecraft that
wrote the two files one after the other).
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from sparsecraft import atomic
from sparsecraft.errors import CheckpointError
from sparsecraft.formats.checkpoint import load, save, tensor_crc
from sparsecraft.methods.base import SparseMethod
from sparsecraft.methods.optimizer_state import optimizer_from_tensors, optimizer_to_tensors

MODEL_FILE, STATE_FILE = "model.safetensors", "state.safetensors"
DOC_KEY, DOC_CRC_KEY = "sparsecraft_training", "sparsecraft_training_crc32"


def file_crc(path: Path) -> tuple[int, int]:
    """(CRC32, size in bytes) of a whole file, read in 1 MiB chunks."""
    crc, size = 0, 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            crc, size = zlib.crc32(chunk, crc), size + len(chunk)
    return crc, size


def save_training_state(
    folder: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    method: SparseMethod | None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write model, method and optimizer state to ``folder`` (replaced as a whole); returns it."""
    folder = Path(folder)
    tensors, opt_structure = optimizer_to_tensors(optimizer, prefix="optimizer")
    doc: dict[str, Any] = {"optimizer": opt_structure, "extra": extra or {}, "method": None}
    if method is not None:
        ms = method.state_dict()
        tensors.update({f"method.{k}": v.contiguous() for k, v in ms["tensors"].items()})
        doc["method"] = ms["meta"]
    tensors["torch_rng"] = torch.get_rng_state()
    doc["tensors"] = {k: {"crc32": tensor_crc(v), "nbytes": v.numel() * v.element_size()} for k, v in tensors.items()}
    with atomic.directory(folder) as tmp:
        save(model, tmp / MODEL_FILE)
        crc, size = file_crc(tmp / MODEL_FILE)
        doc["model_file"] = {"name": MODEL_FILE, "crc32": crc, "nbytes": size}
        text = json.dumps(doc)
        meta = {DOC_KEY: text, DOC_CRC_KEY: str(zlib.crc32(text.encode()))}
        atomic.write_safetensors(tmp / STATE_FILE, tensors, meta)
    return folder


def read_training_state(folder: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The verified state tensors and metadata document of a checkpoint folder; also checks
    that its model file is the one saved with this state. Raises :class:`CheckpointError`."""
    folder = Path(folder)
    atomic.recover_directory(folder)
    path = folder / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"no training state at {str(path)!r}: nothing to resume from")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        text = meta[DOC_KEY]
        doc_crc = meta.get(DOC_CRC_KEY)
        doc = json.loads(text)
        if not isinstance(doc, dict):
            raise ValueError("metadata is not a JSON object")
    except Exception as e:  # damaged header, missing key, bad JSON
        why = " ".join(str(e).split())
        raise CheckpointError(f"{path} is not a readable sparsecraft training state ({why})") from None
    if doc_crc is None or "model_file" not in doc:
        raise CheckpointError(
            f"{path} was written by an older sparsecraft that did not record which model file it belongs "
            "with, so the pair cannot be verified; start a new run folder"
        )
    if doc_crc != str(zlib.crc32(text.encode())):
        raise CheckpointError(f"{path}: metadata is corrupted (CRC32 mismatch)")
    try:
        checks, pair = dict(doc["tensors"]), doc["model_file"]
        if set(checks) != set(tensors):
            raise CheckpointError(f"{path}: tensors {sorted(set(checks) ^ set(tensors))[:5]} missing or unexpected")
        corrupted = [k for k, t in tensors.items()
                     if t.numel() * t.element_size() != checks[k]["nbytes"] or tensor_crc(t) != checks[k]["crc32"]]
        expected = (int(pair["crc32"]), int(pair["nbytes"]))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: metadata is malformed ({e!r})") from None
    if corrupted:
        raise CheckpointError(f"{path}: tensor {corrupted[0]!r} is corrupted (size or CRC32 mismatch)")
    model_path = folder / MODEL_FILE
    if not model_path.is_file():
        raise CheckpointError(f"{path} belongs with {str(model_path)!r}, which is missing")
    if file_crc(model_path) != expected:
        raise CheckpointError(
            f"{model_path} is not the model file saved with {path} (from another save, or corrupted): "
            "refusing to resume a mismatched pair"
        )
    return tensors, doc


def load_training_state(
    folder: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    method: SparseMethod | None,
) -> dict[str, Any]:
    """Restore what :func:`save_training_state` wrote (into an attached ``method``); returns
    the ``extra`` dict."""
    folder = Path(folder)
    tensors, doc = read_training_state(folder)
    load(model, folder / MODEL_FILE)
    if method is not None:
        if doc.get("method") is None:
            raise CheckpointError(f"{folder} holds a dense run; cannot resume method {method.name!r}")
        mt = {k[len("method.") :]: v for k, v in tensors.items() if k.startswith("method.")}
        method.load_state_dict({"tensors": mt, "meta": doc["method"]})
    elif doc.get("method") is not None:
        raise CheckpointError(f"{folder} holds a sparse run; cannot resume it without its method")
    opt_t = {k: v for k, v in tensors.items() if k.startswith("optimizer.")}
    optimizer_from_tensors(optimizer, opt_t, doc["optimizer"])
    torch.set_rng_state(tensors["torch_rng"])
    return doc.get("extra", {})


def flatten_settings(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists and empty dicts stay values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten_settings(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def changed_settings(saved: dict[str, Any], current: dict[str, Any], show: int = 5) -> str:
    """``"key (old -> new), ..."`` for every flattened key whose value differs ('' if none)."""
    changed = [f"{k} ({saved.get(k, '(unset)')!r} -> {current.get(k, '(unset)')!r})"
               for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]  # fmt: skip
    more = f" and {len(changed) - show} more" if len(changed) > show else ""
    return ", ".join(changed[:show]) + more
