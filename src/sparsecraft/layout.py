"""The "row view" of a weight: every prunable weight as a 2-D matrix (outputs, inputs).

Patterns work on this view so that one rule serves every layer type:

* ``nn.Linear``: ``weight`` is (out, in) already.
* ``nn.Conv1d/2d/3d``: ``weight`` (out, in/groups, *k) is permuted to (out, *k, in) and
  flattened, so consecutive columns run along *input channels* (N:M groups along in-channels,
  as in NVIDIA's ASP and SR-STE).
* Hugging Face GPT-2 ``Conv1D``: ``weight`` is stored transposed, (in, out); the view is its
  transpose, so N:M still runs along the input dimension.

``to_rows`` and ``from_rows`` are exact inverses; both return views/copies without changing
the parameter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class WeightLayout:
    """How a parameter of shape ``shape`` maps to its (out, in) row view."""

    kind: str  # "linear" | "conv" | "transposed"
    shape: tuple[int, ...]

    @property
    def rows(self) -> int:
        return self.shape[1] if self.kind == "transposed" else self.shape[0]

    @property
    def cols(self) -> int:
        if self.kind == "transposed":
            return self.shape[0]
        n = 1
        for d in self.shape[1:]:  # (out, in) or conv (out, in, *k); no division: rows may be 0
            n *= d
        return n

    def to_rows(self, t: torch.Tensor) -> torch.Tensor:
        if self.kind == "linear":
            return t
        if self.kind == "transposed":
            return t.t()
        # conv: (out, in, *k) -> (out, *k, in) -> (out, prod(k)*in)
        perm = (0, *range(2, t.dim()), 1)
        return t.permute(perm).reshape(t.shape[0], -1)

    def from_rows(self, m: torch.Tensor) -> torch.Tensor:
        if self.kind == "linear":
            return m
        if self.kind == "transposed":
            return m.t()
        out, cin, *k = self.shape
        t = m.reshape(out, *k, cin)
        perm = (0, t.dim() - 1, *range(1, t.dim() - 1))
        return t.permute(perm)


def is_transposed_conv1d(module: nn.Module) -> bool:
    """True for Hugging Face's GPT-2 style ``Conv1D`` (weight stored as (in, out))."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def layout_for(module: nn.Module | None, param: torch.Tensor) -> WeightLayout:
    """The layout of ``param`` owned by ``module`` (``None`` = treat as a plain matrix)."""
    shape = tuple(param.shape)
    if module is not None and is_transposed_conv1d(module) and param.dim() == 2:
        return WeightLayout("transposed", shape)
    if param.dim() >= 3:
        return WeightLayout("conv", shape)
    if param.dim() == 2:
        return WeightLayout("linear", shape)
    raise ValueError(f"no row view for a {param.dim()}-D tensor of shape {shape}")
