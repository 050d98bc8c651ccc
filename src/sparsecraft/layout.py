"""The "row view" of a weight: every prunable weight as a 2-D matrix (outputs, inputs).

Patterns work on this view so that one rule serves every layer type:

* ``nn.Linear``: ``weight`` is (out, in) already.
* ``nn.Conv1d/2d/3d``: ``weight`` (out, in/groups, *k) is permuted to (out, *k, in) and
  flattened, so consecutive columns run along *input channels* (N:M groups along in-channels,
  as in NVIDIA's ASP and SR-STE).
* Hugging Face GPT-2 ``Conv1D``: ``weight`` is stored transposed, (in, out); the view is its
  transpose, so N:M still runs along the input dimension.
* Fused mixture-of-experts weights (3-D, one (out, in) matrix per expert: the experts modules
  of transformers' Qwen2-MoE / Qwen3-MoE / Mixtral / OLMoE and :mod:`sparsecraft.moe`): the
  experts' rows are stacked, (E, out, in) -> (E * out, in), so every row belongs to one expert
  and N:M groups run along each expert's input dimension. Modules that store them transposed,
  (E, in, out) (transformers' ``is_transposed``), are transposed per expert first.

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

    kind: str  # "linear" | "conv" | "transposed" | "experts" | "experts_transposed"
    shape: tuple[int, ...]

    @property
    def experts(self) -> int:
        """Number of expert matrices stacked in the row view (1 for a plain weight)."""
        return self.shape[0] if self.kind in EXPERT_KINDS else 1

    @property
    def rows(self) -> int:
        if self.kind in EXPERT_KINDS:
            return self.shape[0] * self.shape[2 if self.kind == "experts_transposed" else 1]
        return self.shape[1] if self.kind == "transposed" else self.shape[0]

    @property
    def cols(self) -> int:
        if self.kind in EXPERT_KINDS:
            return self.shape[1 if self.kind == "experts_transposed" else 2]
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
        if self.kind == "experts":
            return t.reshape(self.rows, self.cols)
        if self.kind == "experts_transposed":
            return t.transpose(1, 2).reshape(self.rows, self.cols)
        # conv: (out, in, *k) -> (out, *k, in) -> (out, prod(k)*in)
        perm = (0, *range(2, t.dim()), 1)
        return t.permute(perm).reshape(t.shape[0], -1)

    def from_rows(self, m: torch.Tensor) -> torch.Tensor:
        if self.kind == "linear":
            return m
        if self.kind == "transposed":
            return m.t()
        if self.kind == "experts":
            return m.reshape(self.shape)
        if self.kind == "experts_transposed":
            e, cin, out = self.shape
            return m.reshape(e, out, cin).transpose(1, 2)
        out, cin, *k = self.shape
        t = m.reshape(out, *k, cin)
        perm = (0, t.dim() - 1, *range(1, t.dim() - 1))
        return t.permute(perm)


EXPERT_KINDS = ("experts", "experts_transposed")
#: weight names of the fused experts modules of transformers (``@use_experts_implementation``)
HF_EXPERT_PARAMS = ("gate_up_proj", "up_proj", "down_proj")


def expert_param_names(module: nn.Module) -> tuple[str, ...]:
    """Names of the fused 3-D expert weights of ``module`` (empty for any other module).

    A module declares them with ``sparsecraft_expert_params`` (:class:`sparsecraft.moe.FusedExperts`);
    the experts classes of transformers are recognised by the attributes their
    ``@use_experts_implementation`` decorator sets (``is_transposed``, ``has_gate``)."""
    names = getattr(module, "sparsecraft_expert_params", None)
    if names is not None:
        return tuple(names)
    if hasattr(module, "is_transposed") and hasattr(module, "has_gate"):
        return tuple(n for n in HF_EXPERT_PARAMS
                     if isinstance(getattr(module, n, None), nn.Parameter) and getattr(module, n).dim() == 3)
    return ()


def is_transposed_conv1d(module: nn.Module) -> bool:
    """True for Hugging Face's GPT-2 style ``Conv1D`` (weight stored as (in, out))."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def layout_for(module: nn.Module | None, param: torch.Tensor) -> WeightLayout:
    """The layout of ``param`` owned by ``module`` (``None`` = treat as a plain matrix)."""
    shape = tuple(param.shape)
    if module is not None and is_transposed_conv1d(module) and param.dim() == 2:
        return WeightLayout("transposed", shape)
    if param.dim() == 3 and module is not None and expert_param_names(module):
        return WeightLayout("experts_transposed" if getattr(module, "is_transposed", False) else "experts", shape)
    if param.dim() >= 3:
        return WeightLayout("conv", shape)
    if param.dim() == 2:
        return WeightLayout("linear", shape)
    raise ValueError(f"no row view for a {param.dim()}-D tensor of shape {shape}")
