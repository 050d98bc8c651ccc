"""Save and restore a whole training state without pickle.

A checkpoint folder holds ``model.safetensors`` (:func:`sparsecraft.save`: weights, masks as
bits, CRC32) and ``state.safetensors``: the sparse method's tensors (RNG, masks, scores,
rewind weights) under ``method.*``, the optimizer's state tensors under ``optimizer.*``, the
global torch RNG under ``torch_rng``, and one JSON metadata document with the method's
metadata, the optimizer's structure and the caller's ``extra`` (epoch, step, curves). Both
files are written atomically (temp file + rename), the state file last, so a folder with a
state file is complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from sparsecraft.errors import CheckpointError
from sparsecraft.formats.checkpoint import atomic_save_file, load, save
from sparsecraft.methods.base import SparseMethod
from sparsecraft.methods.optimizer_state import optimizer_from_tensors, optimizer_to_tensors

MODEL_FILE, STATE_FILE = "model.safetensors", "state.safetensors"


def save_training_state(
    folder: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    method: SparseMethod | None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write model, method and optimizer state to ``folder``; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save(model, folder / MODEL_FILE)
    tensors, opt_structure = optimizer_to_tensors(optimizer, prefix="optimizer")
    doc: dict[str, Any] = {"optimizer": opt_structure, "extra": extra or {}, "method": None}
    if method is not None:
        ms = method.state_dict()
        tensors.update({f"method.{k}": v.contiguous() for k, v in ms["tensors"].items()})
        doc["method"] = ms["meta"]
    tensors["torch_rng"] = torch.get_rng_state()
    atomic_save_file(tensors, folder / STATE_FILE, {"sparsecraft_training": json.dumps(doc)})
    return folder


def read_training_state(folder: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"no training state at {str(path)!r}: nothing to resume from")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        doc = json.loads(meta["sparsecraft_training"])
    except Exception as e:  # damaged header, missing key, bad JSON
        raise CheckpointError(f"{path} is not a readable sparsecraft training state ({e})") from None
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
    load(folder / MODEL_FILE, model)
    if method is not None:
        if doc.get("method") is None:
            raise CheckpointError(f"{folder} holds a dense run; cannot resume method {method.name!r}")
        mt = {k[len("method.") :]: v for k, v in tensors.items() if k.startswith("method.")}
        method.load_state_dict({"tensors": mt, "meta": doc["method"]})
    opt_t = {k: v for k, v in tensors.items() if k.startswith("optimizer.")}
    optimizer_from_tensors(optimizer, opt_t, doc["optimizer"])
    torch.set_rng_state(tensors["torch_rng"])
    return doc.get("extra", {})
