"""Hugging Face configs of smaller models: rewritten so ``from_pretrained`` builds them directly.

After a removal :func:`sync_config` looks for the config fields that describe the new shapes
(``intermediate_size`` / ``n_inner`` / ``ffn_dim``, ``num_attention_heads`` / ``n_head`` with
``head_dim``, ``num_key_value_heads``): it proposes values from the shapes that changed, builds
the model class from the proposed config on the ``meta`` device and accepts the proposal only if
*every* parameter then has the pruned model's shape. Uniform removals (the same width in every
layer) become plain configs that any ``transformers`` loads.

Otherwise (per-layer widths, heads whose width no config field can express, SliceGPT's
shortcut matrices) the shapes go into ``config.sparsecraft_structure`` (``params``: every
parameter whose shape differs from the config's model or that the config's model lacks;
``attrs``: module attributes such as head counts; ``slicegpt``: the sliced layers), and
:func:`save_pretrained` writes the hidden size in ``config.json`` as a sentence, so that plain
``transformers`` stops at once with an error naming :func:`load_pretrained` (its config
validation reads: *Field 'hidden_size' expected int, got str (value: 'per-layer shapes in
sparsecraft_structure: load this model with sparsecraft.structure.load_pretrained(path)')*).
:func:`load_pretrained` restores the field, builds the model, applies the record and loads the
weights.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsecraft import atomic
from sparsecraft.errors import SparsecraftError
from sparsecraft.masks import MASK_SUFFIX

RECORD = "sparsecraft_structure"
POISON_FIELDS = ("hidden_size", "n_embd", "d_model")
MESSAGE = "per-layer shapes in sparsecraft_structure: load this model with sparsecraft.structure.load_pretrained(path)"
WIDTH_FIELDS = ("intermediate_size", "n_inner", "ffn_dim")
HEAD_FIELDS = ("num_attention_heads", "n_head")
KV_FIELDS = ("num_key_value_heads",)


def is_hf_model(model: nn.Module) -> bool:
    return hasattr(getattr(model, "config", None), "to_dict") and hasattr(model, "save_pretrained")


def shapes_of(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith(MASK_SUFFIX)}


def _fresh_shapes(cls: type, config: Any) -> dict[str, tuple[int, ...]] | None:
    try:
        with torch.device("meta"):
            return shapes_of(cls(config))
    except Exception:  # a proposed config the model class rejects
        return None


def _head_dim(cfg: Any) -> int | None:
    hd = getattr(cfg, "head_dim", None)
    heads = next((getattr(cfg, f) for f in HEAD_FIELDS if isinstance(getattr(cfg, f, None), int)), None)
    hidden = next((getattr(cfg, f) for f in POISON_FIELDS if isinstance(getattr(cfg, f, None), int)), None)
    return hd if isinstance(hd, int) else (hidden // heads if heads and hidden else None)


def _proposals(cfg: Any, want: dict, have: dict) -> dict[str, set[int]]:
    """Config field -> candidate values, from the dimensions that differ."""
    hints: dict[str, set[int]] = {}
    hd = _head_dim(cfg)
    for key, got in have.items():
        ref = want.get(key)
        if ref is None or len(ref) != len(got):
            continue
        for old, new in zip(ref, got):
            if old == new:
                continue
            for f in WIDTH_FIELDS:
                if getattr(cfg, f, None) == old or (f == "n_inner" and getattr(cfg, f, 0) is None
                                                    and old == 4 * getattr(cfg, "n_embd", -1)):
                    hints.setdefault(f, set()).add(new)
            for fields in (HEAD_FIELDS, KV_FIELDS):
                for f in fields:
                    if hd and isinstance(getattr(cfg, f, None), int) and getattr(cfg, f) * hd == old and new % hd == 0:
                        hints.setdefault(f, set()).add(new // hd)
    return hints


def sync_config(model: nn.Module, change: dict[str, Any] | None = None, attrs: dict | None = None) -> dict[str, Any]:
    """Make ``model.config`` describe the model's shapes (natively where possible) and keep the
    structure record in ``model.config.sparsecraft_structure``; returns the record."""
    cfg = model.config
    rec = copy.deepcopy(getattr(cfg, RECORD, None) or {"version": 1, "history": [], "attrs": {}})
    if change:
        rec["history"].append(change)
    for mod, values in (attrs or {}).items():
        if values:
            rec["attrs"].setdefault(mod, {}).update(values)
    have = shapes_of(model)
    cls = type(model)
    base = _fresh_shapes(cls, cfg) or {}
    native: dict[str, int] = {}
    if base != have and "slicegpt" not in rec:
        hints = _proposals(cfg, base, have)
        fields = sorted(hints)
        for combo in itertools.islice(itertools.product(*(sorted(hints[f]) for f in fields)), 64):
            values = dict(zip(fields, combo))
            if any(f in values for f in HEAD_FIELDS + KV_FIELDS):  # keep the head size (default: hidden / heads)
                values["head_dim"] = _head_dim(cfg)
            try:
                cand = type(cfg).from_dict({**cfg.to_dict(), **values})
            except Exception:
                continue
            if _fresh_shapes(cls, cand) == have:
                native = values
                break
        for f, v in native.items():
            setattr(cfg, f, v)
        if native:
            base = have
    rec["native"] = base == have and "slicegpt" not in rec
    rec["params"] = {} if rec["native"] else {k: list(v) for k, v in have.items() if base.get(k) != v}
    rec["missing"] = [] if rec["native"] else sorted(set(base) - set(have))
    if native:
        rec.setdefault("config", {}).update(native)
    setattr(cfg, RECORD, rec)
    return rec


def save_pretrained(model: nn.Module, dest: str | os.PathLike, tokenizer: Any = None) -> Path:
    """Write a ``from_pretrained`` directory (masks dropped) atomically, the config first brought up
    to date with :func:`sync_config`; a model that plain ``transformers`` cannot build gets its
    poisoned hidden size (see the module docstring)."""
    dest = Path(dest)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith(MASK_SUFFIX)}
    rec = getattr(model.config, RECORD, None)
    if rec is not None or shapes_of(model) != (_fresh_shapes(type(model), model.config) or {}):
        rec = sync_config(model)  # removals done with the low-level functions: describe them now
    with atomic.directory(dest) as tmp:
        model.save_pretrained(str(tmp), state_dict=state, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        if rec and not rec.get("native", True):
            path = tmp / "config.json"
            data = json.loads(path.read_text())
            field = next((f for f in POISON_FIELDS if isinstance(data.get(f), int)), None)
            if field is None:
                raise SparsecraftError(f"cannot mark {type(model).__name__}'s config as sparsecraft-only: none of "
                                       f"{', '.join(POISON_FIELDS)} in config.json")
            data[RECORD] = {**data[RECORD], "base": {field: data[field]}}
            data[field] = MESSAGE
            path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return dest


def read_record(path: str | os.PathLike) -> dict[str, Any] | None:
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return None
    return json.loads(cfg.read_text()).get(RECORD)


def needs_loader(path: str | os.PathLike) -> bool:
    """True when ``path`` holds a model that only :func:`load_pretrained` can build."""
    rec = read_record(path)
    return bool(rec) and not rec.get("native", True)


def _set_tensor(model: nn.Module, name: str, shape: list[int]) -> None:
    mname, _, pname = name.rpartition(".")
    mod = model.get_submodule(mname) if mname else model
    old = getattr(mod, pname, None)
    if not isinstance(old, torch.Tensor):
        raise SparsecraftError(f"the structure record names {name}, which the rebuilt model does not have")
    fresh = torch.empty(shape, dtype=old.dtype)
    if pname in mod._parameters:
        mod._parameters[pname] = nn.Parameter(fresh, requires_grad=old.requires_grad)
    else:
        mod._buffers[pname] = fresh
    from sparsecraft.structure.remove import _fix_sizes

    _fix_sizes(mod)


def apply_record(model: nn.Module, rec: dict[str, Any]) -> None:
    """Give a freshly built model the shapes and attributes of a structure record."""
    if "slicegpt" in rec:
        from sparsecraft.structure.sliced import convert_sliced

        convert_sliced(model, rec["slicegpt"])
    for name, shape in rec.get("params", {}).items():
        _set_tensor(model, name, shape)
    for mname, attrs in rec.get("attrs", {}).items():
        mod = model.get_submodule(mname)
        for k, v in attrs.items():
            setattr(mod, k, v)


def load_pretrained(path: str | os.PathLike, kind: str | None = None) -> nn.Module:
    """Load a model saved by :func:`save_pretrained` (float32, eval mode; plain directories too)."""
    import transformers
    from safetensors.torch import load_file

    path = Path(path)
    rec = read_record(path)
    if not rec or rec.get("native", True):
        from sparsecraft.models.loader import load_model

        return load_model(path, kind).model
    data = json.loads((path / "config.json").read_text())
    data.update(rec.get("base", {}))
    config = transformers.AutoConfig.for_model(data.pop("model_type"), **data)
    archs = getattr(config, "architectures", None) or []
    cls = getattr(transformers, archs[0], None) if archs else None
    if cls is None:
        raise SparsecraftError(f"{path}: config.json names no transformers architecture ({archs})")
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers: initialise normally (slower, same result)
        from contextlib import nullcontext as no_init_weights
    with no_init_weights():
        model = cls(config)
    apply_record(model, rec)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise SparsecraftError(f"{path}: no *.safetensors weights")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or {})
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    missing = [k for k in missing if k not in tied]
    recorded = [k for k in missing if k in rec.get("params", {})]
    if unexpected or recorded:
        raise SparsecraftError(f"{path}: weights do not match the structure record (missing {recorded[:3]}, "
                               f"unexpected {unexpected[:3]})")
    if missing:  # as from_pretrained does for heads the checkpoint lacks (e.g. a pooler)
        warnings.warn(f"{path}: {len(missing)} weights not in the checkpoint were newly initialised: {missing[:4]}",
                      stacklevel=2)
    model.float().eval()
    return model
