"""File-level compress / decompress: any safetensors file <-> a packed sparsecraft file.

``compress_file`` reads a plain safetensors file (e.g. a Hugging Face ``model.safetensors``)
or a sparsecraft checkpoint and writes a packed sparsecraft checkpoint (``format="auto"``
by default); the original file's own metadata is kept in the sparsecraft document.
``decompress_file`` is the inverse: a file that came from a plain safetensors file is
written back as a plain safetensors file with its original metadata (loadable by anything),
a sparsecraft checkpoint as a dense sparsecraft checkpoint (masks and metadata kept).
Tensors are bit-identical both ways.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from sparsecraft import atomic
from sparsecraft.errors import CheckpointError
from sparsecraft.formats.checkpoint import read_checkpoint, save_state
from sparsecraft.formats.checkpoint_doc import check_document
from sparsecraft.formats.container import probe
from sparsecraft.layout import WeightLayout
from sparsecraft.masks import MASK_SUFFIX
from sparsecraft.quant.state import is_quant_key

_MASK_FIELDS = ("pattern", "target", "method", "step")


def read_any(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None, dict[str, str]]:
    """(state, sparsecraft document or ``None``, foreign metadata) of any safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{str(path)!r} does not exist")
    header = probe(path)
    meta = header.get("__metadata__") or {}
    if "sparsecraft" in meta:
        state, doc = read_checkpoint(path)
        return state, doc, dict(doc.get("source_metadata") or {})
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, None, dict(meta)
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None


def _mask_metas(doc: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    masks = (doc or {}).get("masks", {})
    return {k: {f: v[f] for f in _MASK_FIELDS if f in v} for k, v in masks.items()}


def file_bytes(path: Path) -> int:
    return path.stat().st_size


def compress_file(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    format: str = "auto",
    layouts: dict[str, WeightLayout] | None = None,
    sidecar: bool = False,
) -> dict[str, Any]:
    """Pack every tensor of ``src`` into ``dst``; returns sizes and the per-format counts."""
    src, dst = Path(src), Path(dst)
    state, doc, foreign = read_any(src)
    save_state(
        state, dst, format=format, layouts=layouts, masks=_mask_metas(doc),
        extra=(doc or {}).get("extra"), source_metadata=foreign if doc is None else doc.get("source_metadata"),
        sidecar=sidecar,
    )
    return summary(src, dst, dst)


def decompress_file(src: str | os.PathLike, dst: str | os.PathLike, drop_masks: bool = False) -> dict[str, Any]:
    """Write the dense equivalent of packed file ``src`` to ``dst`` (see module docstring)."""
    src, dst = Path(src), Path(dst)
    state, doc = read_checkpoint(src)
    foreign = doc.get("source_metadata") or {}
    if foreign or drop_masks:
        plain = {}
        for key, t in state.items():
            if key in doc.get("aliases", {}) or (key.endswith(MASK_SUFFIX) and t.dtype == torch.bool) \
                    or is_quant_key(key):
                continue  # tied copies are re-tied by the loader; masks and quantization buffers are
                # sparsecraft's (the weights themselves are the dequantized floats)
            plain[key] = t.contiguous()
        atomic.write_safetensors(dst, plain, foreign)
    else:
        for key, target in doc.get("aliases", {}).items():
            state[key] = state[target].clone()
        save_state(state, dst, format="dense", masks=_mask_metas(doc), extra=doc.get("extra"))
    return summary(src, dst, src)


def format_counts(packed_file: Path) -> dict[str, int]:
    """How many tensors of a sparsecraft file use each format (``{}`` for a plain file)."""
    meta = (probe(packed_file).get("__metadata__") or {}).get("sparsecraft")
    if not meta:
        return {}
    doc = check_document(meta, packed_file)
    counts: dict[str, int] = {}
    for h in doc.get("packed", {}).values():
        counts[h["format"]] = counts.get(h["format"], 0) + 1
    plain = [k for k in doc.get("tensors", {}) if ".__packed_" not in k and not k.endswith(".__bits__")]
    if plain:
        counts["dense"] = counts.get("dense", 0) + len(plain)
    if doc.get("aliases"):
        counts["tied"] = len(doc["aliases"])
    return counts


def summary(src: Path, dst: Path, packed_side: Path) -> dict[str, Any]:
    """Sizes before/after and how many tensors use each format on the packed side."""
    out: dict[str, Any] = {"input": str(src), "output": str(dst), "input_bytes": file_bytes(src),
                           "output_bytes": file_bytes(dst)}
    out["ratio"] = out["output_bytes"] / max(1, out["input_bytes"])
    out["formats"] = format_counts(packed_side)
    return out
