"""Which parameters of a model are prunable ("targets"), and the keep-dense rules.

A target is the ``weight`` of a ``nn.Linear``, ``nn.Conv1d/2d/3d`` or Hugging Face GPT-2
``Conv1D``, or a fused 3-D expert weight of a mixture-of-experts module (``gate_up_proj`` /
``down_proj`` of transformers' Qwen2-MoE, Qwen3-MoE, Mixtral, OLMoE experts and of
:class:`sparsecraft.moe.FusedExperts`; see :func:`sparsecraft.layout.expert_param_names`).
1-D parameters (biases, norm scales) and empty weights are never targets. The same two words select
layers everywhere (API, recipes, CLI): ``targets`` (names or regexes) narrows the search, e.g.
to the decoder layers of a language model, and layers matching ``ignore`` stay untouched
(dense). Regexes are matched with ``re.search`` against the module name
(``layers.0.mlp.up_proj``) and the parameter name (``layers.0.mlp.up_proj.weight``); a plain
name also matches exactly.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.layout import WeightLayout, expert_param_names, is_transposed_conv1d, layout_for

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class Target:
    """One prunable parameter: ``module.<param_name>`` at ``module_name`` in the model."""

    module_name: str
    module: nn.Module
    param_name: str = "weight"

    @property
    def name(self) -> str:
        return f"{self.module_name}.{self.param_name}" if self.module_name else self.param_name

    @property
    def param(self) -> torch.Tensor:
        return getattr(self.module, self.param_name)

    @property
    def layout(self) -> WeightLayout:
        return layout_for(self.module, self.param)

    @property
    def numel(self) -> int:
        return self.param.numel()

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.param.shape)


def name_matches(patterns: Iterable[str], *names: str) -> bool:
    """True if any of ``names`` equals a pattern or matches it as a regex (targets / ignore rules)."""
    for p in patterns:
        rx = re.compile(p)
        if any(n == p or rx.search(n) for n in names):
            return True
    return False


def is_prunable_module(module: nn.Module) -> bool:
    return isinstance(module, PRUNABLE_TYPES) or is_transposed_conv1d(module)


def check_regexes(patterns: Iterable[str] | None, what: str) -> list[str]:
    """``patterns`` as a list, each compiled once so a bad regex is a one-line error naming it."""
    if patterns is None:
        return []
    if isinstance(patterns, str):
        patterns = [patterns]
    out = []
    for p in patterns:
        if not isinstance(p, str):
            raise SparsecraftError(f"{what}: expected regex strings, got {p!r}")
        try:
            re.compile(p)
        except re.error as e:
            raise SparsecraftError(f"bad regex {p!r} in {what}: {e}") from None
        out.append(p)
    return out


def find_targets(
    model: nn.Module,
    targets: Sequence[str] | None = None,
    ignore: Sequence[str] | None = None,
) -> list[Target]:
    """All prunable weights of ``model`` in module order that match ``targets`` (default: all)
    and not ``ignore``."""
    if not isinstance(model, nn.Module):
        raise SparsecraftError(f"expected a torch.nn.Module, got {type(model).__name__}")
    include = check_regexes(targets, "targets")
    ignore = check_regexes(ignore, "ignore")
    found = []
    for mname, module in model.named_modules():
        if is_prunable_module(module):
            candidates = [Target(mname, module)]
        else:
            candidates = [Target(mname, module, p) for p in expert_param_names(module)]
        for t in candidates:
            weight = getattr(module, t.param_name, None)
            if not isinstance(weight, torch.Tensor) or weight.dim() < 2 or weight.numel() == 0:
                continue  # 1-D parameters and empty layers (e.g. Linear(0, n)) have nothing to prune
            if include and not name_matches(include, mname, t.name):
                continue
            if name_matches(ignore, mname, t.name):
                continue
            found.append(t)
    return found
