"""Hugging Face directories with packed weights, and back to a normal ``from_pretrained``.

A sparse HF directory is an ordinary model directory (``config.json``, tokenizer files,
``generation_config.json``, ...) whose weights are one packed sparsecraft file,
``sparse_model.safetensors`` (safetensors + the JSON sparsity config in its metadata),
plus the same config as a readable sidecar, ``sparsity_config.json``.

* :func:`save_pretrained_sparse` writes one from a model (row-view layouts come from the
  model's modules, so GPT-2 ``Conv1D`` N:M runs along its inputs; tied weights stored once).
* :func:`compress_dir` / :func:`decompress_dir` convert directories (the CLI uses them);
  decompressing writes a standard ``model.safetensors``.
* :func:`load_pretrained_sparse` decompresses into a temporary directory and calls the
  architecture's own ``from_pretrained``: the result is a normal transformers model whose
  weights are bit-identical to the ones saved.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsecraft.errors import CheckpointError, MissingDependencyError
from sparsecraft.formats.checkpoint import SIDECAR, model_layouts, save_state
from sparsecraft.formats.files import compress_file, decompress_file, read_any, summary
from sparsecraft.layout import WeightLayout
from sparsecraft.masks import MASK_SUFFIX, masked_params

SPARSE_WEIGHTS = "sparse_model.safetensors"
DENSE_WEIGHTS = "model.safetensors"
_WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".msgpack", ".h5")


def _transformers():
    try:
        import transformers
    except ImportError:
        raise MissingDependencyError("Hugging Face support needs transformers: pip install 'sparsecraft[hf]'") from None
    return transformers


def is_hf_dir(path: str | os.PathLike) -> bool:
    return Path(path).is_dir() and (Path(path) / "config.json").is_file()


def _copy_side_files(src: Path, dst: Path) -> None:
    """Config, tokenizer and other small files; not weights, indexes or our sidecar."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith(_WEIGHT_FILES) and not f.name.endswith(".index.json") \
                and f.name != SIDECAR:
            shutil.copy2(f, dst / f.name)


def _weight_files(src: Path) -> list[Path]:
    index = src / f"{DENSE_WEIGHTS}.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [src / s for s in shards]
    if (src / DENSE_WEIGHTS).is_file():
        return [src / DENSE_WEIGHTS]
    raise CheckpointError(f"{src} has no {DENSE_WEIGHTS} (or sharded index); only safetensors weights are supported")


def model_class(config: Any) -> Any:
    """The transformers class named by ``config.architectures`` (AutoModelForCausalLM if none)."""
    tf = _transformers()
    for name in getattr(config, "architectures", None) or []:
        if hasattr(tf, name):
            return getattr(tf, name)
    return tf.AutoModelForCausalLM


def dir_layouts(src: Path) -> dict[str, WeightLayout]:
    """Row-view layouts from the architecture built on the meta device (no weights, no
    download); ``{}`` if that is not possible (then layouts follow the tensor shapes)."""
    try:
        tf = _transformers()
        config = tf.AutoConfig.from_pretrained(str(src))
        with torch.device("meta"):
            model = model_class(config)._from_config(config)
        return model_layouts(model)
    except Exception:
        return {}


def compress_dir(src: str | os.PathLike, dst: str | os.PathLike, format: str = "auto") -> dict[str, Any]:
    """HF directory (dense safetensors, sharded or not) -> sparse HF directory."""
    src, dst = Path(src), Path(dst)
    files = _weight_files(src)
    _copy_side_files(src, dst)
    layouts = dir_layouts(src)
    if len(files) == 1:
        out = compress_file(files[0], dst / SPARSE_WEIGHTS, format=format, layouts=layouts, sidecar=True)
    else:
        state: dict[str, torch.Tensor] = {}
        for f in files:
            state.update(read_any(f)[0])
        save_state(state, dst / SPARSE_WEIGHTS, format=format, layouts=layouts,
                   source_metadata={"format": "pt"}, sidecar=True)
        out = summary(files[0], dst / SPARSE_WEIGHTS, dst / SPARSE_WEIGHTS)
    out["input"], out["output"] = str(src), str(dst)
    out["input_bytes"] = sum(f.stat().st_size for f in files)
    out["ratio"] = out["output_bytes"] / max(1, out["input_bytes"])
    return out


def decompress_dir(src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, Any]:
    """Sparse HF directory -> standard HF directory with ``model.safetensors``."""
    src, dst = Path(src), Path(dst)
    if not (src / SPARSE_WEIGHTS).is_file():
        raise CheckpointError(f"{src} has no {SPARSE_WEIGHTS}: not a sparse Hugging Face directory")
    _copy_side_files(src, dst)
    out = decompress_file(src / SPARSE_WEIGHTS, dst / DENSE_WEIGHTS, drop_masks=True)
    out["input"], out["output"] = str(src), str(dst)
    return out


def save_pretrained_sparse(
    model: nn.Module, directory: str | os.PathLike, tokenizer: Any = None, format: str = "auto"
) -> Path:
    """Write config (+ generation config, + tokenizer if given) and packed weights."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(str(directory))
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        try:
            gen.save_pretrained(str(directory))
        except Exception:  # a model without a usable generation config
            pass
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
    metas = {f"{mp.name}{MASK_SUFFIX}": mp.meta.to_dict() for mp in masked_params(model)}
    save_state(model.state_dict(), directory / SPARSE_WEIGHTS, format=format,
               layouts=model_layouts(model), masks=metas, source_metadata={"format": "pt"}, sidecar=True)
    return directory


def resolve_dir(path: str | os.PathLike) -> Path:
    """``path`` if it holds a ``config.json``, else its ``model/`` folder (the run folder that
    ``sparsecraft prune --out DIR`` writes), else a one-line error."""
    path = Path(path)
    for d in (path, path / "model"):
        if (d / "config.json").is_file():
            return d
    raise CheckpointError(f"{str(path)!r} is not a model directory (no config.json in it or in its model/ folder)")


def load_sparse_model(directory: str | os.PathLike) -> nn.Module:
    """A transformers model (float32, eval mode) *with* sparsecraft's state: masks and the
    quantization scales of quantized weights (what the kernels and the decode path read). Reads a
    sparse directory (``sparse_model.safetensors``), a prune run folder, or a plain HF directory."""
    from sparsecraft.formats.checkpoint import load

    tf = _transformers()
    d = resolve_dir(directory)
    if not (d / SPARSE_WEIGHTS).is_file():
        return model_class(tf.AutoConfig.from_pretrained(str(d))).from_pretrained(str(d), dtype=torch.float32).eval()
    config = tf.AutoConfig.from_pretrained(str(d))
    cls = model_class(config)
    model = (cls.from_config(config) if hasattr(cls, "from_config") else cls._from_config(config)).float()
    load(path=d / SPARSE_WEIGHTS, model=model)
    return model.eval()


def load_pretrained_sparse(directory: str | os.PathLike, cls: Any = None, **kwargs: Any) -> nn.Module:
    """A normal transformers model from a sparse directory (``cls.from_pretrained``; the
    class defaults to the one in ``config.architectures``); weights bit-identical. Quantized
    weights come back dequantized (their float values), so plain ``transformers`` runs them.
    A prune run folder (``DIR/model``) is accepted too."""
    tf = _transformers()
    directory = resolve_dir(directory)
    tmp = Path(tempfile.mkdtemp(prefix="sparsecraft-hf-"))
    try:
        decompress_dir(directory, tmp)
        cls = cls or model_class(tf.AutoConfig.from_pretrained(str(tmp)))
        kwargs.setdefault("dtype", "auto")
        return cls.from_pretrained(str(tmp), **kwargs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
