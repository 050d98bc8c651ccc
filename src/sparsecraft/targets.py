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

A tensor shared by several modules (tied weights) is **one** target: it is named after the
first module that holds it (``named_modules`` order, as ``named_parameters`` names it), the
others are listed in :attr:`Target.aliases`, and the ``targets`` / ``ignore`` rules see every
one of its names (ignored if any name is ignored). So a shared weight gets one mask and is
counted once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

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
    #: other ``(module_name, module)`` whose ``param_name`` is this very tensor (tied weights)
    aliases: list[tuple[str, nn.Module]] = field(default_factory=list, compare=False, repr=False)

    @property
    def name(self) -> str:
        return f"{self.module_name}.{self.param_name}" if self.module_name else self.param_name

    @property
    def param(self) -> torch.Tensor:
        return getattr(self.module, self.param_name)

    @property
    def modules(self) -> list[nn.Module]:
        """Every module that holds this tensor (the owner first, then the aliases)."""
        return [self.module, *(m for _, m in self.aliases)]

    @property
    def names(self) -> list[str]:
        """Every module and parameter name this tensor goes by (for the targets / ignore rules)."""
        out = [self.module_name, self.name]
        for mname, _ in self.aliases:
            out += [mname, f"{mname}.{self.param_name}" if mname else self.param_name]
        return out

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
    by_tensor: dict[int, Target] = {}
    for mname, module in model.named_modules():
        if is_prunable_module(module):
            candidates = [Target(mname, module)]
        else:
            candidates = [Target(mname, module, p) for p in expert_param_names(module)]
        for t in candidates:
            weight = getattr(module, t.param_name, None)
            if not isinstance(weight, torch.Tensor) or weight.dim() < 2 or weight.numel() == 0:
                continue  # 1-D parameters and empty layers (e.g. Linear(0, n)) have nothing to prune
            first = by_tensor.get(id(weight))
            if first is not None:  # a tied weight: one target, this module is an alias
                first.aliases.append((mname, module))
                continue
            by_tensor[id(weight)] = t
    found = []
    for t in by_tensor.values():
        names = t.names
        if include and not name_matches(include, *names):
            continue
        if name_matches(ignore, *names):
            continue
        found.append(t)
    return found
