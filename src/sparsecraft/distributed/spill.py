"""Calibration activations between blocks: in memory when they fit, on disk when they do not.

The sequential protocol (:mod:`sparsecraft.oneshot.blockwise`) keeps, for every calibration
batch, the hidden states that enter the current block. :class:`SpilledInputs` is a drop-in
``Sequence[BlockInput]`` that keeps the (small) extra arguments of every batch -- attention
mask, rotary position embeddings -- in memory and the hidden states in one safetensors file
per batch in a private temporary folder; iterating yields ``BlockInput`` objects whose hidden
states are read back one batch at a time. :meth:`advance` replaces every batch's hidden
states by the block's outputs (written to a new file, then renamed over the old one).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch


class SpilledInputs(Sequence):
    """Block inputs whose hidden states live on disk (one file per batch)."""

    def __init__(self, folder: str | Path | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sparsecraft-spill-", dir=folder))
        self._shells: list[Any] = []
        self.bytes_on_disk = 0

    def append(self, inp: Any) -> None:
        """Add one batch's block input; its hidden states go to disk."""
        i = len(self._shells)
        self._write(i, inp.hidden)
        self.bytes_on_disk += self._path(i).stat().st_size
        self._shells.append(replace(inp, hidden=torch.empty(0)))

    def _path(self, i: int) -> Path:
        return self.dir / f"hidden-{i:06d}.safetensors"

    def _write(self, i: int, hidden: torch.Tensor) -> None:
        from safetensors.torch import save_file

        tmp = self.dir / f".next-{i:06d}.safetensors"
        save_file({"hidden": hidden.detach().to("cpu").contiguous()}, str(tmp))
        tmp.replace(self._path(i))

    def _read(self, i: int) -> torch.Tensor:
        from safetensors.torch import load_file

        return load_file(str(self._path(i)))["hidden"]

    def __len__(self) -> int:
        return len(self._shells)

    def __getitem__(self, i: int) -> Any:  # type: ignore[override]
        return replace(self._shells[i], hidden=self._read(i))

    def __iter__(self) -> Iterator[Any]:
        for i in range(len(self)):
            yield self[i]

    def advance(self, forward: Callable[[Any], torch.Tensor]) -> None:
        """Replace every batch's hidden states by ``forward(block input)``."""
        for i in range(len(self)):
            self._write(i, forward(self[i]))

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def __del__(self) -> None:  # the folder never outlives the run
        self.close()


def activation_bytes(inputs: Sequence[Any]) -> int:
    """Bytes of the hidden states held by ``inputs`` (in memory)."""
    return sum(inp.hidden.numel() * inp.hidden.element_size() for inp in inputs)
