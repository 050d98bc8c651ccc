"""Load a model + tokenizer from a built-in name or a local HF directory (float32, offline).

A directory saved by :func:`sparsecraft.structure.save_pretrained` whose shapes plain
``transformers`` cannot build (per-layer widths, SliceGPT) is built by
:func:`sparsecraft.structure.load_pretrained` instead."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.models.sources import require_transformers, resolve_model_dir


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: Any
    path: Path
    kind: str  #: "causal-lm" or "encoder"


def model_kind(path: Path) -> str:
    """``causal-lm`` when the config names a *ForCausalLM architecture, else ``encoder``."""
    import json

    cfg = json.loads((path / "config.json").read_text())
    archs = cfg.get("architectures") or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return "causal-lm"
    if cfg.get("model_type") in ("bert", "roberta", "distilbert", "xlm-roberta", "mpnet"):
        return "encoder"
    return "causal-lm" if cfg.get("is_decoder") or not archs else "encoder"


def require_safetensors(path: Path) -> None:
    """A model folder must hold safetensors weights: pickled ``pytorch_model.bin`` files are
    never loaded (unpickling runs code), so they get a one-line error instead."""
    if any(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").is_file():
        return
    found = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack"))
    raise SparsecraftError(
        f"model folder {str(path)!r} has no .safetensors weights{f' (found {found[:3]})' if found else ''}; "
        "sparsecraft never unpickles weights: convert them to safetensors first (save_pretrained(..., "
        "safe_serialization=True) in a trusted environment)"
    )


def load_model(name_or_path: str | os.PathLike, kind: str | None = None) -> LoadedModel:
    """Model (eval mode, float32) and tokenizer of ``name_or_path``; no network access,
    safetensors weights only."""
    require_transformers()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_dir(name_or_path)
    require_safetensors(path)
    kind = kind or model_kind(path)
    from sparsecraft.structure.hf import load_pretrained, needs_loader

    if needs_loader(path):  # per-layer shapes (removed structures) recorded by sparsecraft.structure
        model = load_pretrained(path)
    else:
        cls = AutoModelForCausalLM if kind == "causal-lm" else AutoModel
        model = cls.from_pretrained(str(path), dtype=torch.float32, use_safetensors=True)
    model.eval()
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except Exception:  # a model directory without tokenizer files
        tok = None
    return LoadedModel(model, tok, path, kind)
