"""``cast``: CAST-style continuous N:M sparsity-aware training (Huang et al., 2025).

"CAST: Continuous and Differentiable Semi-Structured Sparsity-Aware Training for Large
Language Models" (ALGORITHMS.md, "N:M training", CAST-style). Three ingredients on top of
the dense-weight N:M forward of :mod:`~sparsecraft.methods.nm_common`:

1. **Masks every T1 steps**: ``E`` (the N largest ``|w|`` of every M inputs) is recomputed
   every ``update.every = T1 = 10`` optimizer steps, not at every forward; between updates
   forward uses ``W * E`` and the gradient reaches the dense ``W`` straight through.
2. **AdamS-style decay of the masked-out weights only** -- an L1-like pull that makes them
   shrink smoothly toward 0 so that a mask flip costs little::

       decay_mode="adaptive":   grad <- grad + decay * (1 - E) * W    (before the step: inside
                                Adam the term is normalised by sqrt(v), an adaptive L1-like
                                step of roughly lr * sign(W) once it dominates)
       decay_mode="decoupled":  W <- W - lr * decay * (1 - E) * W     (after the step)

3. **Learnable per-layer scale** ``s_l`` (init 1): forward uses ``s_l * W * E`` so the layer
   can compensate the magnitude lost to the decay; the scales are added to the optimizer as
   their own parameter group (no weight decay) and folded into ``W`` by ``finalize()``.

Optional **distillation** from a frozen dense teacher (``teacher=True``: a copy of the model
when the method is built; or any module): ``regularize(loss, inputs=x, outputs=logits)``
returns ``(1 - kd_weight) * loss + kd_weight * T^2 * KL(softmax(t/T) || softmax(s/T))``, the
KL averaged over every token (all positions of all sequences, as the authors' AST code
``Distill_Model.kl_loss``: sum / number of tokens). ``inputs`` is a tensor (``teacher(x)``) or
a mapping such as a Hugging Face batch (``teacher(**batch)``, ``labels`` left out);
``outputs`` is the student's logits or an output object with ``.logits``.

**Optimizer state at mask refreshes** is left alone: a weight entering ``E`` was trained
densely all along (straight-through), so its Adam moments are current; resetting them (as
RigL does for a weight regrown from zero) makes its next step ``lr * (1-b1)/sqrt(1-b2)`` ~
3.2 lr (defaults 0.9 / 0.999) instead of about ``lr * |E g| / sqrt(E g^2) <= lr``. The AST code
does not touch the optimizer state at mask updates either.

Reference code: CAST's own code was not found public; its predecessor AST (same authors,
github.com/thu-ml/Adaptive-Sparse-Trainer) adds the decay *after* Adam's first moment
(``update = m_t + decay * (1-E) * W``, ``v`` tracks ``update^2``), while ``decay_mode=
"adaptive"`` here adds it to the gradient (it enters ``m`` and ``v``); AST mixes the losses as
``task + kl`` with temperature 2. The exact AdamS constants of the paper are **unverified**;
every one is an argument: ``decay`` (default 1e-2), ``decay_mode``, ``update={"every": 10}``,
``scale``, ``kd_weight`` (0.5), ``kd_temperature`` (1.0).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.methods.base import METHODS
from sparsecraft.methods.nm_common import NMMethod, nm_keep, soft_masked_weight
from sparsecraft.targets import Target


@METHODS.register("cast")
class CAST(NMMethod):
    """N:M masks every T1=10 steps, masked-only decay in the update, learnable layer scales,
    optional self-distillation (constants unverified, all exposed)."""

    default_update = {"every": 10, "start": 0, "stop": None}
    recompute_each_forward = False

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        decay: float = 1e-2,
        decay_mode: str = "adaptive",
        scale: bool = True,
        teacher: nn.Module | bool | None = None,
        kd_weight: float = 0.5,
        kd_temperature: float = 1.0,
        **kwargs: Any,
    ) -> None:
        if decay_mode not in ("adaptive", "decoupled"):
            raise SparsecraftError(f"cast decay_mode {decay_mode!r}; allowed: adaptive, decoupled")
        if decay < 0 or not 0.0 <= kd_weight <= 1.0 or kd_temperature <= 0:
            raise SparsecraftError("cast needs decay >= 0, 0 <= kd_weight <= 1, kd_temperature > 0")
        if teacher is True:
            teacher = copy.deepcopy(model)
        self.teacher: nn.Module | None = teacher or None
        if self.teacher is not None:
            self.teacher.eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        super().__init__(model, optimizer, **kwargs)
        self.decay, self.decay_mode = float(decay), decay_mode
        self.kd_weight, self.kd_temperature = float(kd_weight), float(kd_temperature)
        self.scales: dict[str, nn.Parameter] = {}
        if scale:
            for t in self.targets:
                self.scales[t.name] = nn.Parameter(torch.ones((), device=t.param.device,
                                                              dtype=t.param.dtype))
            if optimizer is not None:
                optimizer.add_param_group({"params": list(self.scales.values()),
                                           "weight_decay": 0.0})

    def compute_masks(self, step: int) -> dict[str, torch.Tensor] | None:
        if self.hard_masks:
            return None
        nm = self.current_nm()
        return {t.name: nm_keep(t.param, t.layout, nm.n, nm.m) for t in self.targets}

    def forward_weight(self, target: Target) -> torch.Tensor:
        w = soft_masked_weight(target.param, self.mask(target))
        s = self.scales.get(target.name)
        return w if s is None else w * s

    @torch.no_grad()
    def modify_gradients(self) -> None:
        if self.decay_mode != "adaptive" or self.hard_masks:
            return
        for t in self.targets:
            if t.param.grad is not None:
                t.param.grad.add_(self.decay * (~self.mask(t)).to(t.param.dtype) * t.param)

    @torch.no_grad()
    def post_step(self) -> None:
        if self.decay_mode == "decoupled" and not self.hard_masks and self.optimizer is not None:
            for t in self.targets:
                lr = next(g["lr"] for g in self.optimizer.param_groups
                          if any(p is t.param for p in g["params"]))
                t.param.sub_(lr * self.decay * (~self.mask(t)).to(t.param.dtype) * t.param)
        super().post_step()

    def regularize(self, loss: torch.Tensor, **context: Any) -> torch.Tensor:
        """Self-distillation: mix the task loss with the per-token KL to the frozen dense teacher."""
        if self.teacher is None or self.kd_weight == 0.0:
            return loss
        if "inputs" not in context or "outputs" not in context:
            raise SparsecraftError("cast distillation needs regularize(loss, inputs=..., outputs=...)")
        inputs = context["inputs"]
        with torch.no_grad():
            if isinstance(inputs, Mapping):
                t_out = self.teacher(**{k: v for k, v in inputs.items() if k != "labels"})
            else:
                t_out = self.teacher(inputs)
        student, teacher = _logits(context["outputs"], "outputs"), _logits(t_out, "the teacher's output")
        if student.shape != teacher.shape:
            raise SparsecraftError(
                f"cast distillation: student logits {tuple(student.shape)} and teacher logits "
                f"{tuple(teacher.shape)} differ; pass the same inputs the student saw"
            )
        tau = self.kd_temperature
        vocab = student.shape[-1]  # batchmean over the flattened tokens = mean KL per token
        kd = F.kl_div(F.log_softmax(student.reshape(-1, vocab) / tau, -1),
                      F.log_softmax(teacher.reshape(-1, vocab).to(student.dtype) / tau, -1),
                      reduction="batchmean", log_target=True) * tau**2  # fmt: skip
        return (1.0 - self.kd_weight) * loss + self.kd_weight * kd

    def finalize(self) -> None:
        """``W <- s * W * E``: plain weights exactly N:M with the scale folded in."""
        super().finalize()
        with torch.no_grad():
            for t in self.targets:
                s = self.scales.get(t.name)
                if s is not None:
                    t.param.mul_(s.detach())

    def extra_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, meta = super().extra_state()
        tensors.update({f"scale.{k}": v.detach().clone() for k, v in self.scales.items()})
        return tensors, meta

    def load_extra_state(self, tensors: Any, meta: Any) -> None:
        super().load_extra_state({k: v for k, v in tensors.items() if not k.startswith("scale.")},
                                 meta)
        with torch.no_grad():
            for k, v in tensors.items():
                if k.startswith("scale.") and k[6:] in self.scales:
                    self.scales[k[6:]].copy_(v)


def _logits(out: Any, what: str) -> torch.Tensor:
    """A logits tensor, or the ``.logits`` / ``["logits"]`` of a model output object."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if logits is None and isinstance(out, Mapping):
        logits = out.get("logits")
    if isinstance(logits, torch.Tensor):
        return logits
    raise SparsecraftError(
        f"cast distillation needs {what} as a logits tensor or an output with .logits, got {type(out).__name__}"
    )
