"""Shared maths and lifecycle of the N:M training methods (STE, SR-STE, PGF, CAST).

These methods keep the *dense* weight ``W`` as the trained parameter and compute the weight
used in forward from it (ALGORITHMS.md, "N:M training"):

* **mask** ``E``: in every group of M consecutive weights along the input dimension keep the
  N largest ``|w|`` (row view of :mod:`sparsecraft.layout`: Linear rows, conv permuted to
  (out, kh, kw, in), GPT-2 ``Conv1D`` transposed), via :class:`sparsecraft.patterns.NM`;
  recomputed from the current ``W`` at every forward after ``W`` changed;
* **forward weight** ``W_f = W * (E + (1 - E) * beta)``; ``beta = 0`` is the hard N:M weight
  (STE / SR-STE), ``beta(t) in (0, 1]`` is PGF's decayed gradient flow (MDGF);
* **backward** (:class:`SoftMaskSTE`): ``dL/dW = g + lambda_w * (1 - E) * W`` with
  ``g = dL/dW_f`` -- plain STE for ``lambda_w = 0``, SR-STE (Zhou et al., 2021, eq. 5)
  otherwise.

:class:`NMMethod` plugs this into :class:`~sparsecraft.methods.base.SparseMethod` as a
soft-mask method: the base patches each layer's forward to use :meth:`NMMethod.forward_weight`
(state_dict keys unchanged) and registers it for :func:`sparsecraft.report`, so reports count
the zeros of ``W_f``. The ``weight_mask`` buffer holds the current ``E`` (saved as bits by
checkpoints). An optional final *hard fine-tune* (``finetune_steps``) freezes ``E``, zeroes
the pruned weights and keeps them (and their optimizer state) at zero like a static mask.
``finalize()`` writes ``W * E`` into ``W``: plain weights exactly N:M.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sparsecraft.errors import ShapeError, SparsecraftError
from sparsecraft.layout import WeightLayout
from sparsecraft.methods.base import SparseMethod, resolve_step
from sparsecraft.methods.optimizer_state import mask_state
from sparsecraft.patterns import NM, parse_pattern
from sparsecraft.targets import Target


def nm_keep(weight: torch.Tensor, layout: WeightLayout, n: int, m: int) -> torch.Tensor:
    """Keep-mask (param shape, bool) with the N largest ``|w|`` of every M along the input."""
    rows = layout.to_rows(weight.detach().abs())
    return layout.from_rows(NM(n, m).mask(rows)).contiguous()


class SoftMaskSTE(torch.autograd.Function):
    """``W_f = W * (E + (1-E) * beta)``; backward ``g + lambda_w * (1-E) * W``."""

    @staticmethod
    def forward(ctx, w, keep, beta, lambda_w):  # type: ignore[override]  # noqa: ANN001, ANN205
        e = keep.to(w.dtype)
        ctx.save_for_backward(w, e)
        ctx.lambda_w = lambda_w
        return w * (e if beta == 0.0 else e + (1.0 - e) * beta)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]  # noqa: ANN001, ANN205
        w, e = ctx.saved_tensors
        grad = g + ctx.lambda_w * (1.0 - e) * w if ctx.lambda_w else g
        return grad, None, None, None


def soft_masked_weight(w: torch.Tensor, keep: torch.Tensor, beta: float = 0.0, lambda_w: float = 0.0) -> torch.Tensor:
    """:class:`SoftMaskSTE` applied to ``w`` (differentiable in ``w`` only)."""
    return SoftMaskSTE.apply(w, keep, float(beta), float(lambda_w))


class NMMethod(SparseMethod):
    """Base of the N:M straight-through methods (see the module docstring).

    Args (besides :class:`SparseMethod`'s): ``pattern`` an ``"N:M"`` spec (default 2:4);
    ``finetune_steps`` (int or fraction of ``total_steps``) of final hard-mask fine-tune;
    ``skip_unfit`` drops layers whose input width is not divisible by M instead of raising.
    """

    hard_masks = False  # instance attribute flips to True in the hard fine-tune phase
    lambda_w_default = 0.0
    recompute_each_forward = True  # False: masks change only in compute_masks (CAST)
    #: for the STE family the UpdateRule only says how often mask dynamics (flips, SAD) are
    #: logged -- the mask itself moves at every forward
    default_update = {"every": 100, "start": 0, "stop": None}

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        pattern: Any = "2:4",
        finetune_steps: int | float = 0,
        skip_unfit: bool = False,
        **kwargs: Any,
    ) -> None:
        target = parse_pattern(pattern)
        if not isinstance(target, NM):
            raise SparsecraftError(f"method needs an N:M pattern such as '2:4', got {pattern!r}")
        kwargs.setdefault("sparsity", 1.0 - target.n / target.m)
        super().__init__(model, optimizer, pattern=target, **kwargs)
        self.target_nm: NM = target
        self.finetune_start = self.total_steps - (resolve_step(finetune_steps, self.total_steps) or 0)
        self.beta = 0.0
        self.lambda_w = self.lambda_w_default
        self._versions: dict[str, int] = {}
        self._last_logged: dict[str, torch.Tensor] = {}
        self._check_fit(self.required_patterns(), skip_unfit)

    # --------------------------------------------------------------- overridable pieces
    def required_patterns(self) -> list[NM]:
        """Every N:M pattern the run will use (checked against each layer at init)."""
        return [self.target_nm]

    def sync_phase(self, recompute: bool = True) -> None:
        """Set ``beta`` / ``pattern`` / hard phase for ``self.step_count`` (subclasses extend;
        ``recompute=False`` after a resume: the loaded masks are kept)."""
        if self.step_count >= self.finetune_start and not self.hard_masks:
            self.enter_hard_phase(recompute)

    # --------------------------------------------------------------- the N:M mechanics
    def _check_fit(self, patterns: list[NM], skip_unfit: bool) -> None:
        keep = []
        for t in self.targets:
            lay = t.layout
            bad = [p for p in patterns if not p.fits(lay.rows, lay.cols)]
            if not bad:
                keep.append(t)
            elif not skip_unfit:
                bad[0].check(lay.rows, lay.cols, t.name)
        if not keep:
            raise ShapeError(f"no layer can take {self.target_nm.spec()} (all inputs too narrow)")
        self.targets = keep

    def current_nm(self) -> NM:
        p = self.pattern
        return p if isinstance(p, NM) else self.target_nm

    def refresh_mask(self, t: Target) -> torch.Tensor:
        """Recompute ``E`` from ``|W|`` unless frozen (hard phase) or ``W`` is unchanged."""
        buf = self.mask(t)
        if self.hard_masks or not self.recompute_each_forward:
            return buf
        version = t.param._version
        if self._versions.get(t.name) != version:
            nm = self.current_nm()
            with torch.no_grad():
                buf.copy_(nm_keep(t.param, t.layout, nm.n, nm.m))
            self._versions[t.name] = t.param._version
        return buf

    def initial_masks(self) -> dict[str, torch.Tensor]:
        nm = self.current_nm()
        return {t.name: nm_keep(t.param, t.layout, nm.n, nm.m) for t in self.targets}

    def compute_masks(self, step: int) -> dict[str, torch.Tensor] | None:
        """Log the mask flips since the previous log (dropped/grown, SAD); no mask change."""
        if self.hard_masks:
            return None
        cur = {t.name: self.refresh_mask(t).detach().cpu().clone() for t in self.targets}
        old = {k: self._last_logged.get(k, self.dynamics.initial.get(k, v)) for k, v in cur.items()}
        self.dynamics.record(step, old, cur, sparsity=self.target_sparsity())
        self._last_logged = cur
        return None

    def extra_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, meta = super().extra_state()
        tensors.update({f"lastlog.{k}": v for k, v in self._last_logged.items()})
        return tensors, meta

    def load_extra_state(self, tensors: Any, meta: Any) -> None:
        own = {k: v for k, v in tensors.items() if k.startswith("lastlog.")}
        super().load_extra_state({k: v for k, v in tensors.items() if k not in own}, meta)
        self._last_logged = {k[8:]: v.to(torch.bool).clone() for k, v in own.items()}

    def forward_weight(self, target: Target) -> torch.Tensor:
        keep = self.refresh_mask(target)
        beta = 0.0 if self.hard_masks else self.beta
        return soft_masked_weight(target.param, keep, beta, 0.0 if self.hard_masks else self.lambda_w)

    def recompute_all(self) -> None:
        """Recompute every mask now (after a pattern change) and update the metadata."""
        self._versions.clear()
        nm = self.current_nm()
        self._set_masks({t.name: nm_keep(t.param, t.layout, nm.n, nm.m) for t in self.targets})

    def target_sparsity(self, step: int | None = None) -> float:
        nm = self.current_nm()
        return 1.0 - nm.n / nm.m

    @torch.no_grad()
    def enter_hard_phase(self, recompute: bool = True) -> None:
        """Freeze ``E`` at the target pattern; zero pruned weights and their optimizer state."""
        self.pattern = self.target_nm
        self.beta = 0.0
        if recompute:
            self.recompute_all()
        self.hard_masks = True
        for t in self.targets:
            keep = self.mask(t)
            t.param.masked_fill_(~keep, 0)
            if self.optimizer is not None:
                mask_state(self.optimizer, t.param, keep)

    # --------------------------------------------------------------- lifecycle hooks
    def attach(self) -> NMMethod:
        self._claim()  # sync_phase may set masks: refuse a conflicting attach before it
        self.sync_phase()
        return super().attach()  # type: ignore[return-value]

    def post_step(self) -> None:
        self.sync_phase()

    def finalize(self) -> None:
        """Write the target N:M ``W * E`` into ``W`` and remove the hooks."""
        if not self.hard_masks and self.recompute_each_forward:
            self.pattern = self.target_nm
            self.recompute_all()
        super().finalize()
        with torch.no_grad():
            for t in self.targets:
                t.param.masked_fill_(~self.mask(t), 0)

    def load_state_dict(self, state: Any) -> None:
        super().load_state_dict(state)
        self._versions.clear()
        self.sync_phase(recompute=False)
