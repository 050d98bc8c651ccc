"""Run a module's forward with a computed weight instead of its stored parameter.

N:M straight-through methods (STE, SR-STE, PGF) keep the dense weight ``W`` as the trained
parameter and use ``W * E`` (or a soft variant) in forward. :func:`patch_forward` swaps the
module's ``forward`` for one that asks ``weight_fn()`` for the weight, so parameter names,
``state_dict`` and the optimizer are untouched; it also registers
``module.sparsecraft_forward_weights`` so :func:`sparsecraft.report` counts the zeros of the
weight forward really uses.
"""

from __future__ import annotations

import types
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.layout import is_transposed_conv1d

WeightFn = Callable[[], torch.Tensor]


def functional_forward(module: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``module(x)`` computed with ``weight`` in place of ``module.weight``."""
    if isinstance(module, nn.Linear):
        return F.linear(x, weight, module.bias)
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return module._conv_forward(x, weight, module.bias)
    if is_transposed_conv1d(module):  # GPT-2 Conv1D: x @ W + b with W (in, out)
        size_out = x.size()[:-1] + (weight.shape[1],)
        out = torch.addmm(module.bias, x.reshape(-1, x.size(-1)), weight)
        return out.view(size_out)
    raise SparsecraftError(f"cannot compute a forward with a custom weight for {type(module).__name__}")


def patch_forward(module: nn.Module, weight_fn: WeightFn, param_name: str = "weight") -> None:
    """Make ``module`` use ``weight_fn()`` as its weight in forward (and in reports)."""
    if param_name != "weight":
        raise SparsecraftError("only 'weight' parameters can be patched")
    if "_sparsecraft_orig_forward" in module.__dict__:
        unpatch_forward(module)
    module._sparsecraft_orig_forward = module.__dict__.get("forward")

    def forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return functional_forward(self, x, weight_fn())

    module.forward = types.MethodType(forward, module)
    hooks = dict(getattr(module, "sparsecraft_forward_weights", {}) or {})
    hooks[param_name] = lambda: weight_fn().detach()
    module.sparsecraft_forward_weights = hooks


def unpatch_forward(module: nn.Module, param_name: str = "weight") -> None:
    """Undo :func:`patch_forward`."""
    if "_sparsecraft_orig_forward" not in module.__dict__:
        return
    orig = module.__dict__.pop("_sparsecraft_orig_forward")
    if orig is None:
        module.__dict__.pop("forward", None)
    else:
        module.forward = orig
    hooks = getattr(module, "sparsecraft_forward_weights", None)
    if hooks:
        hooks.pop(param_name, None)
        if not hooks:
            del module.sparsecraft_forward_weights
