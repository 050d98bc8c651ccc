"""Shared maths of the N:M training methods (STE, SR-STE, PGF, CAST, ISS-P on N:M).

These methods keep the *dense* weight ``W`` as the trained parameter and compute the weight
used in forward from it (ALGORITHMS.md, "N:M training"):

* **mask** ``E``: in every group of M consecutive weights along the input dimension keep the
  N largest ``|w|`` (row view of :mod:`sparsecraft.layout`: Linear rows, conv permuted to
  (out, kh, kw, in), GPT-2 ``Conv1D`` transposed), via :class:`sparsecraft.patterns.NM`;
* **forward weight** ``W_f = W * (E + (1 - E) * beta)``; ``beta = 0`` is the hard N:M weight
  (STE / SR-STE), ``beta(t) in (0, 1]`` is PGF's decayed gradient-flow weight (MDGF);
* **backward** (:class:`SoftMaskSTE`): ``dL/dW = g + lambda_w * (1 - E) * W`` with
  ``g = dL/dW_f`` -- plain STE for ``lambda_w = 0``, SR-STE (Zhou et al., 2021, eq. 5)
  otherwise.

The substitution is done by giving the module an instance ``forward`` that calls the layer's
functional op with ``W_f`` (``state_dict`` keys stay unchanged, so save/load round-trip), and
``module.sparsecraft_forward_weights = {"weight": ...}`` so that :func:`sparsecraft.report`
counts the zeros of ``W_f``, the weight forward really uses. The current mask is kept in the
ordinary ``weight_mask`` buffer (saved as bits by :mod:`sparsecraft.checkpoint`); it is an
*indicator* here, never applied to ``W`` in place until the method's hard phase / finalize.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from sparsecraft.layout import WeightLayout, layout_for
from sparsecraft.masks import MASK_SUFFIX, MaskMeta, set_mask
from sparsecraft.methods.forward import functional_forward
from sparsecraft.patterns import NM

STATE_ATTR = "sparsecraft_nm"


def nm_keep(weight: torch.Tensor, layout: WeightLayout, n: int, m: int) -> torch.Tensor:
    """Keep-mask (param shape, bool) with the N largest ``|w|`` of every M along the input."""
    rows = layout.to_rows(weight.detach().abs())
    return layout.from_rows(NM(n, m).mask(rows)).contiguous()


class SoftMaskSTE(torch.autograd.Function):
    """``W_f = W * (E + (1-E) * beta)``; backward ``g + lambda_w * (1-E) * W``.

    ``beta = lambda_w = 0`` is the straight-through estimator of Zhou et al. (2021); a
    positive ``lambda_w`` is SR-STE; ``beta > 0`` with ``lambda_w = 0`` is PGF's MDGF.
    """

    @staticmethod
    def forward(ctx, w: torch.Tensor, keep: torch.Tensor, beta: float, lambda_w: float):  # type: ignore[override]
        e = keep.to(w.dtype)
        ctx.save_for_backward(w, e)
        ctx.lambda_w = lambda_w
        factor = e if beta == 0.0 else e + (1.0 - e) * beta
        return w * factor

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        w, e = ctx.saved_tensors
        grad = g
        if ctx.lambda_w:
            grad = g + ctx.lambda_w * (1.0 - e) * w
        return grad, None, None, None


def soft_masked_weight(
    w: torch.Tensor, keep: torch.Tensor, beta: float = 0.0, lambda_w: float = 0.0
) -> torch.Tensor:
    """Apply :class:`SoftMaskSTE` (differentiable in ``w`` only)."""
    return SoftMaskSTE.apply(w, keep, float(beta), float(lambda_w))


@dataclass
class NMLayerState:
    """Per-layer settings read by the substituted forward (stored on the module)."""

    n: int
    m: int
    layout: WeightLayout
    beta: float = 0.0  # gradient-flow weight of pruned entries (PGF); 0 = hard N:M
    lambda_w: float = 0.0  # SR-STE refinement
    frozen: bool = False  # True: use weight_mask as is (hard fine-tune); False: recompute
    scale: nn.Parameter | None = None  # CAST's learnable per-layer scale
    extra: dict = field(default_factory=dict)
    _version: int = -1  # weight._version when the mask was last recomputed


def refresh_mask(module: nn.Module) -> torch.Tensor:
    """Recompute the N:M mask of ``module.weight`` unless frozen or unchanged; return it."""
    st: NMLayerState = getattr(module, STATE_ATTR)
    buf = getattr(module, "weight" + MASK_SUFFIX)
    w = module.weight
    if not st.frozen and w._version != st._version:
        with torch.no_grad():
            buf.copy_(nm_keep(w, st.layout, st.n, st.m))
        st._version = w._version
    return buf


def effective_weight(module: nn.Module) -> torch.Tensor:
    """The weight forward uses: ``scale * W * (E + (1-E) * beta)`` (see module docstring)."""
    st: NMLayerState = getattr(module, STATE_ATTR)
    keep = refresh_mask(module)
    w = soft_masked_weight(module.weight, keep, st.beta, st.lambda_w)
    if st.scale is not None:
        w = w * st.scale
    return w


def _nm_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return functional_forward(self, x, effective_weight(self))


class _ReportWeight:
    """Picklable/deep-copyable callable for ``sparsecraft_forward_weights``."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self) -> torch.Tensor:
        with torch.no_grad():
            return effective_weight(self.module).detach()


def install(
    module: nn.Module, n: int, m: int, method: str, **settings: object
) -> NMLayerState:
    """Give ``module`` the N:M forward of this file and a ``weight_mask`` indicator buffer."""
    st = NMLayerState(n=n, m=m, layout=layout_for(module, module.weight), **settings)  # type: ignore[arg-type]
    NM(n, m).check(st.layout.rows, st.layout.cols)
    setattr(module, STATE_ATTR, st)
    keep = nm_keep(module.weight, st.layout, n, m)
    meta = MaskMeta(pattern=f"{n}:{m}", target=1.0 - n / m, method=method)
    set_mask(module, keep, "weight", meta, apply=False)
    st._version = module.weight._version
    module.forward = types.MethodType(_nm_forward, module)
    hooks = dict(getattr(module, "sparsecraft_forward_weights", {}) or {})
    hooks["weight"] = _ReportWeight(module)
    module.sparsecraft_forward_weights = hooks
    return st


@torch.no_grad()
def harden(module: nn.Module) -> None:
    """Zero the pruned weights in place and freeze the mask (start of a hard fine-tune)."""
    keep = refresh_mask(module)
    st: NMLayerState = getattr(module, STATE_ATTR)
    module.weight.masked_fill_(~keep, 0)
    st.frozen, st.beta, st.lambda_w = True, 0.0, 0.0


@torch.no_grad()
def uninstall(module: nn.Module, fold_scale: bool = True) -> None:
    """Make the N:M weight permanent: ``W <- W_f`` (scale folded in), plain forward again.

    The ``weight_mask`` buffer stays as an ordinary hard mask (so the checkpoint and the
    report still name the pattern), consistent with the now exactly N:M weight.
    """
    st: NMLayerState = getattr(module, STATE_ATTR)
    keep = refresh_mask(module)
    module.weight.masked_fill_(~keep, 0)
    if fold_scale and st.scale is not None:
        module.weight.mul_(st.scale.detach().to(module.weight.dtype))
    if "forward" in module.__dict__:
        del module.forward
    hooks = getattr(module, "sparsecraft_forward_weights", None)
    if hooks:
        hooks.pop("weight", None)
        if not hooks:
            del module.sparsecraft_forward_weights
    delattr(module, STATE_ATTR)


def nm_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every module of ``model`` that currently has the N:M forward installed."""
    return [(name, mod) for name, mod in model.named_modules() if hasattr(mod, STATE_ATTR)]


def set_all(model: nn.Module, fn: Callable[[NMLayerState], None]) -> None:
    """Apply ``fn`` to the state of every N:M layer (e.g. to set ``beta``)."""
    for _, mod in nm_modules(model):
        fn(getattr(mod, STATE_ATTR))
