"""compressed-tensors sparse checkpoints (the legacy layout, compressed-tensors <= 0.14), read and
written without the ``compressed-tensors`` package.

Sparse checkpoints published by SparseML / llm-compressor are Hugging Face folders whose
``config.json`` carries ``quantization_config`` (files of the first releases: ``compression_config``)
with a ``sparsity_config``::

    {"quant_method": "compressed-tensors", "version": "0.14.0.1", "transform_config": {},
     "sparsity_config": {"format": "sparse-24-bitmask", "global_sparsity": 0.42,
                         "sparsity_structure": "2:4", "targets": ["Linear"], "ignore": ["lm_head"]}}

and whose safetensors weights hold, for every compressed weight, the parts described in
:mod:`sparsecraft.formats.ct_codec`. compressed-tensors 0.15, vLLM and transformers dropped these
formats, so a folder like this loads nowhere else now: :func:`decompress_ct_dir` turns it into a
normal folder (``sparsecraft decompress DIR OUT``) and :func:`sparsecraft.formats.hf.load_pretrained_sparse`
loads it. :func:`save_compressed_tensors` writes one (``save(model, folder, format="compressed-tensors")``
or ``save_pretrained_sparse(model, folder, format="compressed-tensors")``), loadable by the stacks
that still read the layout.

Reading is defensive: the ``format`` string is compared with a fixed list before anything else
is read (a crafted config never selects code); a quantized checkpoint is refused, not half-read;
unknown keys are ignored and reported as notes; every compressed weight must have exactly the
parts of its format, with sizes that agree with its declared shape (checked before the dense
tensor is allocated) and as many values as its bitmask marks; inputs are read only from inside
the folder (links out of it are refused, as in :mod:`sparsecraft.formats.hf`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsecraft import atomic
from sparsecraft.errors import CheckpointError, SparsecraftError
from sparsecraft.formats import ct_codec
from sparsecraft.formats.hf import save_config_files

SPARSITY_FORMATS = ("dense", "sparse-bitmask", "sparse-24-bitmask")
WRITE_FORMATS = ("compressed-tensors", "sparse-bitmask", "sparse-24-bitmask")  # the first = choose per model
PARTS = {"dense": (), "sparse-bitmask": ("shape", "compressed", "bitmask", "row_offsets"),
         "sparse-24-bitmask": ("shape", "compressed", "bitmask")}
PART_NAMES = {"shape", "compressed", "bitmask", "row_offsets"}
CONFIG_KEYS = ("quantization_config", "compression_config")
LAYOUT_VERSION = "0.14.0.1"  #: the compressed-tensors release whose layout is written
_SPARSITY_KEYS = {"format", "global_sparsity", "sparsity_structure", "targets", "ignore", "registry_requires_subclass"}
_WRAPPER_KEYS = {"quant_method", "version", "sparsity_config", "transform_config", "config_groups", "format",
                 "quantization_status", "kv_cache_scheme", "global_compression_ratio", "ignore"}
_QUANT_KEYS = ("config_groups", "kv_cache_scheme", "transform_config")


def _wrapper(config: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    for key in CONFIG_KEYS:
        value = config.get(key)
        ours = isinstance(value, dict) and value.get("quant_method") == "compressed-tensors"
        if isinstance(value, dict) and (ours or "sparsity_config" in value):
            return key, value
    return None


def is_compressed_tensors_dir(path: str | os.PathLike) -> bool:
    """True when ``path/config.json`` names a compressed-tensors checkpoint (cheap, never raises)."""
    try:
        config = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and _wrapper(config) is not None


def _strings(value: Any) -> bool:
    return value is None or (isinstance(value, list) and all(isinstance(v, str) for v in value))


def read_config(directory: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config.json, checked sparsity config with ``notes``) of a compressed-tensors folder."""
    path = directory / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not readable JSON ({e})") from None
    found = _wrapper(config) if isinstance(config, dict) else None
    if found is None:
        raise CheckpointError(f"{path} has no compressed-tensors {' / '.join(CONFIG_KEYS)} with a sparsity_config")
    key, wrapper = found
    sc = wrapper.get("sparsity_config")
    fmt = sc.get("format") if isinstance(sc, dict) else None
    if not isinstance(fmt, str) or fmt not in SPARSITY_FORMATS:  # first: nothing else is read otherwise
        shown = json.dumps(fmt)[:60]
        raise CheckpointError(f"{path}: {key}.sparsity_config.format is {shown}; sparsecraft reads "
                              f"{', '.join(SPARSITY_FORMATS)} (the legacy sparse layouts)")
    quant = [k for k in _QUANT_KEYS if wrapper.get(k)]
    if quant or wrapper.get("format") not in (None, "dense"):
        what = ", ".join(quant) or f"format {json.dumps(wrapper.get('format'))[:40]}"
        raise CheckpointError(f"{path}: {key} also quantizes or transforms the weights ({what}); only sparse-only "
                              "compressed-tensors checkpoints are read")
    if wrapper.get("quant_method", "compressed-tensors") != "compressed-tensors":
        raise CheckpointError(f"{path}: {key}.quant_method is {json.dumps(wrapper['quant_method'])[:40]}; "
                              "expected \"compressed-tensors\"")
    checks = {"global_sparsity": lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)),
              "sparsity_structure": lambda v: v is None or isinstance(v, str), "targets": _strings, "ignore": _strings}
    for field, ok in checks.items():
        if not ok(sc.get(field)):
            raise CheckpointError(f"{path}: {key}.sparsity_config.{field} is {json.dumps(sc.get(field))[:60]}; "
                                  "expected a number / string / list of strings or null")
    notes = [f"{key}.sparsity_config.{k} is not part of the layout; ignored" for k in sorted(set(sc) - _SPARSITY_KEYS)]
    notes += [f"{key}.{k} is not part of the layout; ignored" for k in sorted(set(wrapper) - _WRAPPER_KEYS)]
    info = {"config_key": key, "format": fmt, "version": wrapper.get("version"),
            **{f: sc.get(f) for f in ("global_sparsity", "sparsity_structure", "targets", "ignore")}, "notes": notes}
    return config, info


def _dense_name(prefix: str) -> str:
    """The state-dict key of compressed weight ``prefix``: the module name plus ``.weight``; files
    of the first releases named the parameter itself (``<module>.weight`` / ``.bias``)."""
    return prefix if prefix.rsplit(".", 1)[-1] in ("weight", "bias") else f"{prefix}.weight"


def group_parts(
    path: Path, stored: dict[str, torch.Tensor], fmt: str
) -> tuple[dict[str, dict], dict[str, torch.Tensor]]:
    """(compressed prefix -> its parts, plain tensors) after checking that every prefix has exactly
    the parts of ``fmt`` and that no decoded name collides with a stored tensor."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    plain = {}
    for key, t in stored.items():
        prefix, _, last = key.rpartition(".")
        if fmt != "dense" and prefix and last in PART_NAMES:
            groups.setdefault(prefix, {})[last] = t
        else:
            plain[key] = t
    want = set(PARTS[fmt])
    for prefix, parts in groups.items():
        if set(parts) != want:
            raise CheckpointError(f"{path}: compressed weight {prefix!r} has parts {sorted(parts)}; {fmt} stores "
                                  f"exactly {sorted(want)}")
        if _dense_name(prefix) in plain:
            raise CheckpointError(f"{path}: {_dense_name(prefix)!r} is stored both compressed and plain")
    return groups, plain


def _declared_bytes(path: Path, groups: dict[str, dict], plain: dict[str, torch.Tensor], fmt: str) -> int:
    """Bytes of the dense state, from the declared shapes (checked small and sane first)."""
    total = sum(t.numel() * t.element_size() for t in plain.values())
    for prefix, parts in groups.items():
        try:
            shape = ct_codec.declared_shape(parts["shape"], prefix, expect_24=fmt == "sparse-24-bitmask")
        except CheckpointError as e:
            raise CheckpointError(f"{path}: {e}") from None
        total += math.prod(shape) * parts["compressed"].element_size()
    return total


def read_state(directory: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The dense state dict of a compressed-tensors folder and its sparsity info (with notes)."""
    from sparsecraft.formats.checkpoint_doc import physical_memory
    from sparsecraft.formats.files import read_any
    from sparsecraft.formats.hf import _read_shards, _weight_files

    src = Path(directory)
    _, info = read_config(src)
    files, weight_map = _weight_files(src)
    if weight_map is None:
        stored, doc, _ = read_any(files[0])
        if doc is not None:
            raise CheckpointError(f"{files[0]} is a sparsecraft checkpoint, not compressed-tensors weights")
    else:
        stored, _ = _read_shards(files, weight_map)
    fmt = info["format"]
    groups, plain = group_parts(src, stored, fmt)
    need, ram = _declared_bytes(src, groups, plain, fmt), physical_memory()
    if ram is not None and need > ram:
        raise CheckpointError(f"{src} decodes to {need / 2**30:.1f} GiB, more than this machine's "
                              f"{ram / 2**30:.1f} GiB of memory")
    decode = ct_codec.decode_24 if fmt == "sparse-24-bitmask" else ct_codec.decode_bitmask
    state = dict(plain)
    for prefix, parts in groups.items():
        try:
            state[_dense_name(prefix)] = decode(prefix, parts)
        except CheckpointError as e:
            raise CheckpointError(f"{src}: {e}") from None
    info["compressed"] = len(groups)
    info["dense_bytes"] = need
    return state, info


def decompress_ct_dir(src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, Any]:
    """compressed-tensors folder -> standard Hugging Face folder (``model.safetensors``; the
    compressed-tensors block removed from ``config.json``), built aside and swapped in whole."""
    from sparsecraft.formats.hf import DENSE_WEIGHTS, _replaceable, _side_files, _weight_files

    src, dst = Path(src), Path(dst)
    config, _ = read_config(src)
    files, _ = _weight_files(src)
    side = [f for f in _side_files(src) if f.name != "config.json"]
    _replaceable(dst, src, DENSE_WEIGHTS, "Hugging Face model folder")
    state, info = read_state(src)
    plain_config = {k: v for k, v in config.items() if k != info["config_key"]}
    with atomic.directory(dst) as tmp:
        for f in side:
            shutil.copy2(f, tmp / f.name)
        atomic.write_text(tmp / "config.json", json.dumps(plain_config, indent=2, sort_keys=True) + "\n")
        atomic.write_safetensors(tmp / DENSE_WEIGHTS, {k: v.contiguous() for k, v in state.items()}, {"format": "pt"})
    out = {"input": str(src), "output": str(dst), "input_bytes": sum(f.stat().st_size for f in files),
           "output_bytes": (dst / DENSE_WEIGHTS).stat().st_size,
           "formats": {info["format"]: info["compressed"], "dense": len(state) - info["compressed"]},
           "notes": info["notes"]}
    out["ratio"] = out["output_bytes"] / max(1, out["input_bytes"])
    return out


def _select(model: nn.Module, state: dict[str, torch.Tensor], targets: Any, ignore: Any) -> list[str]:
    """Names of the Linear modules whose weights are compressed (see :func:`save_compressed_tensors`)."""
    import re

    from sparsecraft.masks import masked_params
    from sparsecraft.targets import check_regexes

    given = targets is not None
    targets, ignore = check_regexes(targets, "targets"), check_regexes(ignore, "ignore")
    masked = {mp.name.rsplit(".", 1)[0] for mp in masked_params(model) if mp.param_name == "weight"}
    out = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or f"{name}.weight" not in state or module.weight.numel() == 0:
            continue
        if given:
            chosen = any(re.search(r, name) for r in targets)
        else:
            chosen = name in masked if masked else name.rsplit(".", 1)[-1] != "lm_head"
        if chosen and not any(re.search(r, name) for r in ignore):
            out.append(name)
    return out


def _state_once(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without masks and with each shared (tied) tensor once, under its first key."""
    from sparsecraft.masks import MASK_SUFFIX

    seen, out = set(), {}
    for key, t in model.state_dict().items():
        if key.endswith(MASK_SUFFIX) and t.dtype == torch.bool:
            continue
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)) if t.numel() else None
        if ident is not None and ident in seen:
            continue
        seen.add(ident)
        out[key] = t.detach().cpu()
    return out


def save_compressed_tensors(
    model: nn.Module,
    directory: str | os.PathLike,
    format: str = "compressed-tensors",
    tokenizer: Any = None,
    targets: Any = None,
    ignore: Any = None,
) -> Path:
    """Write ``model`` (a transformers model) as a compressed-tensors sparse folder.

    Compressed: the ``nn.Linear`` weights matching ``targets`` and not ``ignore`` (regexes); by
    default the masked Linear layers, or every Linear but ``lm_head`` when nothing is masked.
    ``format``: ``sparse-24-bitmask`` (every compressed weight must be 2:4), ``sparse-bitmask``,
    or ``compressed-tensors`` = 2:4 when all of them are, bitmask otherwise. ``-0.0`` is stored as
    ``+0.0`` (the layout cannot hold it). Masks are not stored (the layout has none); the config
    lists ``targets: ["Linear"]`` and, in ``ignore``, every Linear left dense, so readers compress
    exactly the same set. Everything is encoded before the folder is written; the folder is built
    aside and swapped in whole."""
    if format not in WRITE_FORMATS:
        raise SparsecraftError(f"unknown compressed-tensors format {format!r}; allowed: {', '.join(WRITE_FORMATS)}")
    if getattr(model, "config", None) is None or not hasattr(model.config, "save_pretrained"):
        raise SparsecraftError("a compressed-tensors folder is a Hugging Face folder: the model needs a "
                               "transformers config (model.config)")
    state = _state_once(model)
    chosen = _select(model, state, targets, ignore)
    for name in chosen:
        if not state[f"{name}.weight"].is_floating_point():
            raise SparsecraftError(f"{name}.weight is {state[f'{name}.weight'].dtype}; only float weights are stored")
    all_24 = bool(chosen) and all(ct_codec.is_24(state[f"{n}.weight"]) for n in chosen)
    fmt = format if format != "compressed-tensors" else ("sparse-24-bitmask" if all_24 else "sparse-bitmask")
    tensors = {k: v.contiguous() for k, v in state.items()}
    zeros = sum(int((t == 0).sum()) for t in state.values() if t.is_floating_point())
    numel = sum(t.numel() for t in state.values() if t.is_floating_point())
    for name in chosen:
        w = tensors.pop(f"{name}.weight")
        parts = ct_codec.encode_24(w, f"{name}.weight") if fmt == "sparse-24-bitmask" else ct_codec.encode_bitmask(w)
        tensors.update({f"{name}.{part}": t for part, t in parts.items()})
    dense_linear = sorted(n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in set(chosen))
    sparsity_config = {"format": fmt, "global_sparsity": zeros / max(1, numel),
                       "sparsity_structure": "2:4" if all_24 else "unstructured", "targets": ["Linear"],
                       "ignore": dense_linear, "registry_requires_subclass": False}
    directory = Path(directory)
    with atomic.directory(directory) as tmp:
        save_config_files(model, tmp, tokenizer)
        config = json.loads((tmp / "config.json").read_text())
        config.pop("compression_config", None)
        config["quantization_config"] = {"quant_method": "compressed-tensors", "version": LAYOUT_VERSION,
                                         "sparsity_config": sparsity_config, "transform_config": {}}
        atomic.write_text(tmp / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
        atomic.write_safetensors(tmp / "model.safetensors", tensors, {"format": "pt"})
    return directory
