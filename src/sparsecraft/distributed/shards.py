"""Read a Hugging Face safetensors checkpoint a few tensors at a time, and write one shard at a time.

:class:`ShardedCheckpoint` maps every tensor name to its file (``model.safetensors`` or the
shards listed in ``model.safetensors.index.json``) from the files' JSON headers alone (8-byte
length + header; no tensor byte is touched), so the dtype, shape and size of every tensor is
known before anything is loaded. :meth:`ShardedCheckpoint.read` opens each needed shard with
``safetensors.safe_open`` (memory-mapped), copies the requested tensors out and closes it
again, so at most one shard is mapped at a time and only the requested bytes become resident.

:class:`ShardWriter` writes the output checkpoint shard by shard into a folder (each file
through :func:`sparsecraft.atomic.write_safetensors`) and finishes it with the index file, so
an output model of any size is never held in memory at once.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Iterable
from pathlib import Path

import torch

from sparsecraft import atomic
from sparsecraft.errors import SparsecraftError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}  # fmt: skip

#: files copied unchanged from the input model folder to the output one
COPIED_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja")


def read_header(path: Path) -> dict[str, dict]:
    """The JSON header of a safetensors file (tensor name -> dtype, shape, data_offsets)."""
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > 100_000_000:
                raise ValueError("header larger than 100 MB")
            header = json.loads(f.read(size))
    except (OSError, ValueError, struct.error) as e:
        raise SparsecraftError(f"{str(path)!r} is not a readable safetensors file ({e})") from None
    header.pop("__metadata__", None)
    return header


class ShardedCheckpoint:
    """The tensors of a model folder's safetensors file(s), read on demand."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        index = self.folder / INDEX
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (OSError, ValueError, KeyError) as e:
                raise SparsecraftError(f"{str(index)!r} is not a safetensors index ({e})") from None
            files = sorted(set(weight_map.values()))
        elif (self.folder / SINGLE).is_file():
            files = [SINGLE]
        else:
            raise SparsecraftError(f"model folder {str(self.folder)!r} has no {SINGLE} or {INDEX}")
        self.file_of: dict[str, str] = {}
        self.info: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
        for name in files:
            for key, meta in read_header(self.folder / name).items():
                dtype = _DTYPES.get(meta.get("dtype"))
                if dtype is None:
                    raise SparsecraftError(f"tensor {key!r} in {name} has unsupported dtype {meta.get('dtype')!r}")
                self.file_of[key] = name
                self.info[key] = (dtype, tuple(meta["shape"]))

    def names(self) -> list[str]:
        return list(self.file_of)

    def nbytes(self, names: Iterable[str] | None = None) -> int:
        """Bytes of the named tensors (default: all) in their stored dtypes."""
        total = 0
        for n in self.names() if names is None else names:
            dtype, shape = self.info[n]
            numel = 1
            for s in shape:
                numel *= s
            total += numel * dtype.itemsize
        return total

    def float_dtype(self) -> torch.dtype:
        """The dtype most floating-point bytes are stored in (the model's dtype)."""
        per: dict[torch.dtype, int] = {}
        for n, (dtype, _) in self.info.items():
            if dtype.is_floating_point:
                per[dtype] = per.get(dtype, 0) + self.nbytes([n])
        if not per:
            raise SparsecraftError(f"model folder {str(self.folder)!r} has no floating-point tensors")
        return max(per, key=lambda d: per[d])

    def read(self, names: Iterable[str], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Copy the named tensors out of their (memory-mapped) shards, one shard open at a time."""
        from safetensors import safe_open

        by_file: dict[str, list[str]] = {}
        for n in names:
            if n not in self.file_of:
                raise SparsecraftError(f"tensor {n!r} is not in the checkpoint of {str(self.folder)!r}")
            by_file.setdefault(self.file_of[n], []).append(n)
        out: dict[str, torch.Tensor] = {}
        for fname, keys in by_file.items():
            with safe_open(str(self.folder / fname), framework="pt", device="cpu") as f:
                for k in keys:
                    t = f.get_tensor(k)
                    out[k] = t.to(device) if str(device) != "cpu" else t
        return out


class ShardWriter:
    """Write a model checkpoint as numbered shards plus ``model.safetensors.index.json``."""

    def __init__(self, folder: str | os.PathLike, n_shards: int) -> None:
        self.folder = Path(folder)
        self.n_shards = n_shards
        self.weight_map: dict[str, str] = {}
        self.total_size = 0
        self.written = 0

    def write(self, tensors: dict[str, torch.Tensor]) -> Path:
        """Write the next shard (tensors moved to CPU, contiguous)."""
        if self.written >= self.n_shards:
            raise SparsecraftError(f"shard writer was sized for {self.n_shards} shards")
        self.written += 1
        name = f"model-{self.written:05d}-of-{self.n_shards:05d}.safetensors"
        cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        atomic.write_safetensors(self.folder / name, cpu, metadata={"format": "pt"})
        for k, v in cpu.items():
            self.weight_map[k] = name
            self.total_size += v.numel() * v.element_size()
        return self.folder / name

    def finish(self, source: Path | None = None) -> None:
        """Write the index (and copy config / tokenizer files from ``source``)."""
        if self.written != self.n_shards:
            raise SparsecraftError(f"shard writer wrote {self.written} of {self.n_shards} shards")
        index = {"metadata": {"total_size": self.total_size}, "weight_map": dict(sorted(self.weight_map.items()))}
        atomic.write_json(self.folder / INDEX, index)
        if source is not None:
            copy_model_files(source, self.folder)


def copy_model_files(source: Path, dest: Path) -> None:
    """Copy config, generation config and tokenizer files (into a folder being written
    through :func:`sparsecraft.atomic.directory`, so they appear with the rest)."""
    for name in COPIED_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, dest / name)
