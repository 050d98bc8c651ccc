"""End-to-end tuning of the quantization scales, codes and masks frozen (GQSA's stage 2, E2E-OQP).

After one-shot quantization every quantized Linear computes with ``W = s[r, g] * (q - z)``.
:func:`tune_scales` makes the per-(row, group) scales ``s`` the *only* trainable parameters,
writes ``W`` from them at every forward (a pre-forward hook: ``expand(s) * (q - z)`` with the
integer codes and zero points fixed, pruned weights 0), and trains them end to end on the
calibration windows with the library's recovery loop (:func:`sparsecraft.oneshot.recovery.recover`,
loss ``lm`` = next-token cross-entropy or ``squarehead`` = distillation from a dense teacher).
At the end the scales are rounded to float16 (the storage type) and the weights rewritten, so
the model stays exactly on its grid and packs losslessly. The input embedding (and a head tied
to it) is left as it is.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.layout import layout_for
from sparsecraft.oneshot.recovery import RecoveryResult, recover
from sparsecraft.quant.grid import expand_groups, to_fp16_grid
from sparsecraft.quant.state import QuantState, quantized_params, set_quant


class _ScaledCodes:
    """The frozen ``q - z`` of one weight and its trainable scale; writes the weight on forward."""

    def __init__(self, module: nn.Module, pname: str, st: QuantState) -> None:
        w = getattr(module, pname)
        self.module, self.pname, self.spec = module, pname, st.spec
        self.layout = layout_for(module, w)
        codes = st.codes(self.layout.to_rows(w.detach()), f"{type(module).__name__}.{pname}")
        g = self.layout.cols // st.scale.shape[1]
        self.group = g
        self.centered = (codes.to(torch.float32) - expand_groups(st.zero.to(torch.float32), g)).to(w.device)
        self.zero = st.zero
        self.scale = nn.Parameter(st.scale.detach().clone().to(w.device))
        self.requires_grad = w.requires_grad
        module._parameters.pop(pname)
        module.register_parameter(pname + "_scale_tuned", self.scale)
        self.handle = module.register_forward_pre_hook(self._write)
        self._write(module, ())

    def weight(self) -> torch.Tensor:
        return self.layout.from_rows(expand_groups(self.scale, self.group) * self.centered)

    def _write(self, module: nn.Module, args: Any) -> None:
        module.__dict__[self.pname] = self.weight()

    @torch.no_grad()
    def finish(self) -> None:
        self.handle.remove()
        self.scale.data = to_fp16_grid(self.scale.data)
        final = self.weight().detach().clone()
        self.module.__dict__.pop(self.pname, None)
        del self.module._parameters[self.pname + "_scale_tuned"]
        self.module.register_parameter(self.pname, nn.Parameter(final, requires_grad=self.requires_grad))
        set_quant(self.module, QuantState(self.spec, self.scale.data.clone(), self.zero), self.pname)


def tune_scales(
    model: nn.Module,
    calib: torch.Tensor,
    steps: int = 100,
    lr: float = 1e-5,
    loss: str = "lm",
    teacher: nn.Module | None = None,
    batch_size: int = 1,
    progress: bool = True,
) -> RecoveryResult:
    """Train only the quantization scales of ``model``'s quantized Linear layers (in place) on the
    (n, L) token ``calib`` windows; returns the recovery record (losses, wall time)."""
    if steps < 1:
        raise SparsecraftError(f"tune_scales needs steps >= 1, got {steps}")
    targets = [(m, p, st) for _, m, p, st in quantized_params(model) if isinstance(m, nn.Linear)]
    if not targets:
        raise SparsecraftError("tune_scales: the model has no quantized Linear layer (quantize it first)")
    frozen = {id(p): p.requires_grad for p in model.parameters()}
    params = list(model.parameters())
    tuned: list[_ScaledCodes] = []
    try:
        for module, pname, st in targets:  # reads each weight's requires_grad before freezing
            tuned.append(_ScaledCodes(module, pname, st))
        for p in params:
            p.requires_grad_(False)
        return recover(model, calib, teacher, loss, steps, lr, batch_size, progress=progress)
    finally:
        for t in tuned:
            t.finish()
        for p in params:
            p.requires_grad_(frozen.get(id(p), True))
