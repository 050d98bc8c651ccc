"""Hugging Face directories with packed weights, and back to a normal ``from_pretrained``.

A sparse HF directory is an ordinary model directory (``config.json``, tokenizer files,
``generation_config.json``, ...) whose weights are one packed sparsecraft file,
``sparse_model.safetensors`` (safetensors + the JSON sparsity config in its metadata),
plus the same config as a readable sidecar, ``sparsity_config.json``.

* :func:`save_pretrained_sparse` writes one from a model (row-view layouts come from the
  model's modules, so GPT-2 ``Conv1D`` N:M runs along its inputs; tied weights stored once).
* :func:`compress_dir` / :func:`decompress_dir` convert directories (the CLI uses them);
  decompressing writes a standard ``model.safetensors``. Inputs are read only from inside
  the folder (no link out of it is followed, index entries are plain file names), and the
  output folder is built aside and swapped in whole.
* :func:`load_pretrained_sparse` decompresses into a temporary directory and calls the
  architecture's own ``from_pretrained``: the result is a normal transformers model whose
  weights are bit-identical to the ones saved.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsecraft import atomic
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


def _inside(root: Path, f: Path, what: str) -> Path:
    """``f`` when it resolves inside folder ``root``; a link out of the folder is an error:
    reading a model folder never follows a link out of it (e.g. to ``/etc/passwd``)."""
    real = f.resolve()
    if real != root and root not in real.parents:
        raise CheckpointError(
            f"{what} {f.name!r} of {root} is a link to {str(real)!r}, outside the folder; links out of a model "
            "folder are not followed (copy it with `cp -rL` to make them plain files)"
        )
    return f


def _side_files(src: Path) -> list[Path]:
    """Config, tokenizer and other small files; not weights, indexes or our sidecar."""
    root, out = src.resolve(), []
    for f in sorted(src.iterdir()):
        if f.name.endswith(_WEIGHT_FILES) or f.name.endswith(".index.json") or f.name == SIDECAR:
            continue
        if f.is_symlink():
            _inside(root, f, "file")
            if not f.exists():
                raise CheckpointError(f"file {f.name!r} of {root} is a broken link; fix or remove it")
        if f.is_file():
            out.append(f)
    return out


def _replaceable(dst: Path, src: Path, marker: str, kind: str) -> None:
    """``dst`` is replaced as a whole: allow only a new path, an empty folder or an earlier
    output of the same kind (holding ``marker``); never a folder that holds the input."""
    if dst.resolve() == src.resolve() or dst.resolve() in src.resolve().parents:
        raise CheckpointError(f"output {str(dst)!r} contains the input {str(src)!r}; write to a new folder")
    if dst.is_dir() and any(dst.iterdir()) and not (dst / marker).is_file():
        raise CheckpointError(
            f"output folder {str(dst)!r} exists and is not a {kind} (no {marker}); it would be replaced as a "
            "whole: give a new or empty folder"
        )


def _read_index(src: Path, root: Path) -> dict[str, str]:
    index = _inside(root, src / f"{DENSE_WEIGHTS}.index.json", "index")
    try:
        doc = json.loads(index.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{index} is not valid JSON ({e})") from None
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index} has no 'weight_map' object (tensor name -> shard file name)")
    for name, shard in weight_map.items():
        if not (isinstance(shard, str) and shard.endswith(".safetensors") and Path(shard).name == shard):
            raise CheckpointError(f"{index}: weight_map[{name!r}] is {json.dumps(shard)}; expected the name of a "
                                  ".safetensors file in the same folder")
        if not (src / shard).is_file():
            raise CheckpointError(f"{index}: shard {shard!r} does not exist")
        _inside(root, src / shard, "shard")
    return weight_map


def _weight_files(src: Path) -> tuple[list[Path], dict[str, str] | None]:
    """The weight files of ``src`` and, for a sharded folder, the index's weight map."""
    root = src.resolve()
    if (src / f"{DENSE_WEIGHTS}.index.json").is_file():
        weight_map = _read_index(src, root)
        return [src / s for s in sorted(set(weight_map.values()))], weight_map
    if (src / DENSE_WEIGHTS).is_file():
        return [_inside(root, src / DENSE_WEIGHTS, "weights")], None
    raise CheckpointError(f"{src} has no {DENSE_WEIGHTS} (or sharded index); only safetensors weights are supported")


def _read_shards(files: list[Path], weight_map: dict[str, str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of a sharded folder, each from the shard the index names (a tensor in
    two shards, or missing from its shard, is an error: never a silent pick)."""
    state: dict[str, torch.Tensor] = {}
    foreign: dict[str, str] = {"format": "pt"}
    for f in files:
        tensors, _, meta = read_any(f)
        for name in tensors:
            if weight_map.get(name) != f.name:
                raise CheckpointError(f"{f}: tensor {name!r} is not mapped to this shard by the index "
                                      f"(index says {weight_map.get(name)!r})")
        state.update(tensors)
        foreign = meta if len(files) == 1 else foreign
    lost = [k for k in weight_map if k not in state]
    if lost:
        raise CheckpointError(f"tensors {lost[:5]} of the index are in none of the shards")
    return state, foreign


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
    """HF directory (dense safetensors, sharded or not) -> sparse HF directory. Everything
    is checked first, then ``dst`` is built aside and swapped in whole (:func:`atomic.directory`):
    a failed or killed run leaves the old ``dst`` as it was."""
    src, dst = Path(src), Path(dst)
    files, weight_map = _weight_files(src)
    side = _side_files(src)
    _replaceable(dst, src, SPARSE_WEIGHTS, "sparse model folder")
    layouts = dir_layouts(src)
    with atomic.directory(dst) as tmp:
        for f in side:
            shutil.copy2(f, tmp / f.name)
        if weight_map is None:
            out = compress_file(files[0], tmp / SPARSE_WEIGHTS, format=format, layouts=layouts, sidecar=True)
        else:
            state, foreign = _read_shards(files, weight_map)
            save_state(state, tmp / SPARSE_WEIGHTS, format=format, layouts=layouts, source_metadata=foreign,
                       sidecar=True)
            out = summary(files[0], tmp / SPARSE_WEIGHTS, tmp / SPARSE_WEIGHTS)
    out["input"], out["output"] = str(src), str(dst)
    out["input_bytes"] = sum(f.stat().st_size for f in files)
    out["ratio"] = out["output_bytes"] / max(1, out["input_bytes"])
    return out


def decompress_dir(src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, Any]:
    """Sparse HF directory -> standard HF directory with ``model.safetensors`` (built aside
    and swapped in whole, like :func:`compress_dir`)."""
    from sparsecraft.formats.compressed_tensors import decompress_ct_dir, is_compressed_tensors_dir

    src, dst = Path(src), Path(dst)
    if not (src / SPARSE_WEIGHTS).is_file() and is_compressed_tensors_dir(src):
        return decompress_ct_dir(src, dst)
    if not (src / SPARSE_WEIGHTS).is_file():
        raise CheckpointError(f"{src} has no {SPARSE_WEIGHTS} and no compressed-tensors sparsity_config in its "
                              "config.json: not a sparse Hugging Face directory")
    weights = _inside(src.resolve(), src / SPARSE_WEIGHTS, "weights")
    side = _side_files(src)
    _replaceable(dst, src, DENSE_WEIGHTS, "Hugging Face model folder")
    with atomic.directory(dst) as tmp:
        for f in side:
            shutil.copy2(f, tmp / f.name)
        out = decompress_file(weights, tmp / DENSE_WEIGHTS, drop_masks=True)
    out["input"], out["output"] = str(src), str(dst)
    return out


def save_config_files(model: nn.Module, directory: Path, tokenizer: Any = None) -> None:
    """Write a transformers model's config.json, generation config (when it has a usable one) and
    the tokenizer's files into ``directory`` (the side files of every Hugging Face folder we write)."""
    model.config.save_pretrained(str(directory))
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        try:
            gen.save_pretrained(str(directory))
        except Exception:  # a model without a usable generation config
            pass
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))


def save_pretrained_sparse(
    model: nn.Module, directory: str | os.PathLike, tokenizer: Any = None, format: str = "auto"
) -> Path:
    """Write config (+ generation config, + tokenizer if given) and packed weights. The
    folder is built aside and swapped in whole (other files already in it are kept), so a
    failed or killed save never leaves a new config beside old weights.

    ``format="compressed-tensors"`` (or ``"sparse-bitmask"`` / ``"sparse-24-bitmask"``) writes the
    compressed-tensors layout instead (:func:`.compressed_tensors.save_compressed_tensors`)."""
    from sparsecraft.formats.compressed_tensors import WRITE_FORMATS, save_compressed_tensors

    if format in WRITE_FORMATS:
        return save_compressed_tensors(model, directory, format=format, tokenizer=tokenizer)
    directory = Path(directory)
    metas = {f"{mp.name}{MASK_SUFFIX}": mp.meta.to_dict() for mp in masked_params(model)}
    with atomic.directory(directory, keep_others=True) as tmp:
        save_config_files(model, tmp, tokenizer)
        save_state(model.state_dict(), tmp / SPARSE_WEIGHTS, format=format,
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
    A prune run folder (``DIR/model``) is accepted too, and a compressed-tensors sparse folder
    (its notes, e.g. ignored keys, are warnings)."""
    tf = _transformers()
    directory = resolve_dir(directory)
    tmp = Path(tempfile.mkdtemp(prefix="sparsecraft-hf-"))
    try:
        for note in decompress_dir(directory, tmp).get("notes", []):
            warnings.warn(f"{directory}: {note}", stacklevel=2)
        cls = cls or model_class(tf.AutoConfig.from_pretrained(str(tmp)))
        kwargs.setdefault("dtype", "auto")
        return cls.from_pretrained(str(tmp), **kwargs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
