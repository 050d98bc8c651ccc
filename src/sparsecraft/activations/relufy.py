"""ReLU-fication: swap the MLP activation function (SiLU, GELU, ...) for ReLU, optionally shifted.

ReLU activations are exactly zero for every negative pre-activation, which is where the natural
activation sparsity of Lazy Neuron comes from; Sparsing Law (Luo et al. 2024) finds ReLU models
as good as SiLU ones and sparser. ReLU-fication (Mirzadeh et al. 2023, "ReLU Strikes Back")
replaces the activation of a trained SiLU/GELU model by ``ReLU(x - b)`` (``b = shift``; the
*shifted* ReLU with ``b > 0`` zeroes more) and recovers the loss with a short fine-tune
(:func:`sparsecraft.oneshot.recovery.recover`). In a gated MLP the function is replaced where
it acts (``act(gate(x))``), so ``a = ReLU(gate(x) - b) * up(x)`` is zero wherever the gate is.
The replaced function is kept (``.original``) and :func:`sparsecraft.activations.restore` puts
it back.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sparsecraft.activations.base import TRANSFORMS, ActivationTransform
from sparsecraft.activations.sites import MLPSite, find_sites
from sparsecraft.errors import SparsecraftError


class ShiftedReLU(nn.Module):
    """``max(x - shift, 0)``; ``original`` is the activation function it replaced."""

    def __init__(self, shift: float = 0.0, original: nn.Module | None = None) -> None:
        super().__init__()
        self.shift = float(shift)
        # a plain attribute, not a submodule: the replaced function has no parameters to train
        self.__dict__["original"] = original

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x - self.shift) if self.shift else F.relu(x)

    def extra_repr(self) -> str:
        return f"shift={self.shift:g}"


@TRANSFORMS.register("relu")
class ReLUfication(ActivationTransform):
    """ReLU-fication: replace every MLP activation function by ReLU(x - shift)."""

    def __init__(self, shift: float = 0.0) -> None:
        if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not math.isfinite(shift):
            raise SparsecraftError(f"ReLU shift must be a finite number, got {shift!r}")
        self.shift = float(shift)

    def apply(self, model: nn.Module) -> list[MLPSite]:
        sites = find_sites(model)
        for site in sites:
            current = site.activation
            original = current.__dict__.get("original", current) if isinstance(current, ShiftedReLU) else current
            setattr(site.act_parent, site.act_attr, ShiftedReLU(self.shift, original))
        return sites

    def to_dict(self) -> dict:
        return {"type": "relu", "shift": self.shift}
