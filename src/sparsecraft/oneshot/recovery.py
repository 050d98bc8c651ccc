"""Recovery fine-tuning of a one-shot pruned model, masks kept exact.

SquareHead distillation (Kurtic et al. 2023, "Sparse Fine-tuning for Inference Acceleration of
Large Language Models", Sec. 3): the dense model is the teacher; with s_l / t_l the student /
teacher outputs of block l on the same tokens, the per-layer normalised feature loss is

    L_feat = sum_l mean((s_l - t_l)^2) / (mean(t_l^2) + eps)

(each block's error normalised by the teacher's output energy, so every block counts alike).
The paper adds it to the task loss; so does ``loss="lm+squarehead"``:

    L = L_task + feature_weight * L_feat + kd_weight * L_kd

with L_task the next-token cross-entropy (mean over the predicted tokens) and the optional
logit distillation L_kd = T^2 * mean over token positions of
KL(softmax(z_t / T) || softmax(z_s / T)) (``kd_temperature`` T). ``loss="squarehead"`` drops
L_task, ``loss="lm"`` drops L_feat; L_kd enters only with ``kd_weight`` > 0. Defaults:
feature_weight 1, kd_weight 0, T = 1. After every optimizer step the masks are re-applied
(:func:`sparsecraft.masks.apply_masks`), so the sparsity is exact at every step; AdamW moments
of pruned weights are zeroed too, so they never push a weight back.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from sparsecraft.errors import SparsecraftError
from sparsecraft.masks import apply_masks, masked_params
from sparsecraft.oneshot.blockwise import find_blocks

LOSSES = ("squarehead", "lm", "lm+squarehead")


def squarehead_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], eps: float = 1e-6) -> torch.Tensor:
    """sum_l mean((s_l - t_l)^2) / (mean(t_l^2) + eps)."""
    if len(student) != len(teacher) or not student:
        raise ValueError("squarehead_loss needs the same, non-zero number of student and teacher blocks")
    total = student[0].new_zeros(())
    for s, t in zip(student, teacher):
        total = total + (s - t).pow(2).mean() / (t.pow(2).mean() + eps)
    return total


def next_token_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting token t + 1 from tokens 1..t (float32)."""
    shift = logits[:, :-1, :].float()
    return F.cross_entropy(shift.reshape(-1, shift.shape[-1]), ids[:, 1:].reshape(-1))


def logit_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """T^2 * mean over token positions of KL(softmax(z_t / T) || softmax(z_s / T))."""
    v = student_logits.shape[-1]
    log_s = F.log_softmax(student_logits.float().reshape(-1, v) / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.float().reshape(-1, v) / temperature, dim=-1)
    return F.kl_div(log_s, log_t, log_target=True, reduction="batchmean") * temperature**2


class BlockOutputs:
    """Forward hooks that record every block's output hidden states."""

    def __init__(self, model: nn.Module) -> None:
        self.outputs: list[torch.Tensor] = []
        self.handles = [b.register_forward_hook(self._hook) for b in find_blocks(model).blocks]

    def _hook(self, module: nn.Module, inp: Any, out: Any) -> None:
        self.outputs.append(out[0] if isinstance(out, (tuple, list)) else out)

    def take(self) -> list[torch.Tensor]:
        out, self.outputs = self.outputs, []
        return out

    def close(self) -> None:
        for h in self.handles:
            h.remove()


class RecoveryObjective:
    """``with RecoveryObjective(student, teacher, loss, ...) as objective: total, parts = objective(ids)``.

    Hooks record both models' block outputs; the teacher runs without gradients. ``parts``
    holds the unweighted terms (``task``, ``feature``, ``kd``) that entered ``total``."""

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, loss: str = "squarehead",
                 feature_weight: float = 1.0, kd_weight: float = 0.0, kd_temperature: float = 1.0,
                 eps: float = 1e-6) -> None:
        if loss not in LOSSES:
            raise SparsecraftError(f"unknown recovery loss {loss!r}; allowed: {', '.join(LOSSES)}")
        if feature_weight < 0 or kd_weight < 0 or kd_temperature <= 0:
            raise SparsecraftError(f"recovery weights must be >= 0 and the KD temperature > 0, got feature_weight="
                                   f"{feature_weight}, kd_weight={kd_weight}, kd_temperature={kd_temperature}")
        self.task = loss in ("lm", "lm+squarehead")
        self.feature = "squarehead" in loss
        self.kd = kd_weight > 0
        if (self.feature or self.kd) and teacher is None:
            kd = " with logit KD" if self.kd else ""
            raise SparsecraftError(f"recovery loss {loss!r}{kd} needs the dense teacher model")
        self.student, self.teacher = student, teacher
        self.feature_weight, self.kd_weight = feature_weight, kd_weight
        self.kd_temperature, self.eps = kd_temperature, eps
        self._hooks: list[BlockOutputs] = []

    def __enter__(self) -> RecoveryObjective:
        if self.feature:
            self._hooks = [BlockOutputs(self.student), BlockOutputs(self.teacher)]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._hooks:
            h.close()
        self._hooks = []

    def __call__(self, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        t_logits = None
        if self.teacher is not None and (self.feature or self.kd):
            with torch.no_grad():
                t_logits = _logits(self.teacher(input_ids=ids, use_cache=False))
        s_logits = _logits(self.student(input_ids=ids, use_cache=False))
        total = s_logits.new_zeros((), dtype=torch.float32)
        parts: dict[str, float] = {}
        if self.task:
            task = next_token_loss(s_logits, ids)
            total = total + task
            parts["task"] = float(task.detach())
        if self.feature:
            s_hooks, t_hooks = self._hooks
            feat = squarehead_loss(s_hooks.take(), [t.detach() for t in t_hooks.take()], self.eps)
            total = total + self.feature_weight * feat
            parts["feature"] = float(feat.detach())
        if self.kd:
            kd = logit_kd_loss(s_logits, t_logits, self.kd_temperature)
            total = total + self.kd_weight * kd
            parts["kd"] = float(kd.detach())
        return total, parts


def _logits(out: Any) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out[0]


@dataclass
class RecoveryResult:
    loss: str
    steps: int
    losses: list[float] = field(default_factory=list)  #: total loss per step
    parts: list[dict[str, float]] = field(default_factory=list)  #: unweighted terms per step
    wall_time_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"loss": self.loss, "steps": self.steps, "first_loss": self.losses[0] if self.losses else None,
                "last_loss": self.losses[-1] if self.losses else None,
                "first_parts": self.parts[0] if self.parts else None,
                "last_parts": self.parts[-1] if self.parts else None, "wall_time_s": round(self.wall_time_s, 3)}


@torch.no_grad()
def _zero_pruned_state(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    for mp in masked_params(model):
        state = optimizer.state.get(mp.param, {})
        for v in state.values():
            if isinstance(v, torch.Tensor) and v.shape == mp.mask.shape:
                v.masked_fill_(~mp.mask, 0)


def recover(
    student: nn.Module,
    windows: torch.Tensor,
    teacher: nn.Module | None = None,
    loss: str = "squarehead",
    steps: int = 100,
    lr: float = 1e-5,
    batch_size: int = 1,
    weight_decay: float = 0.0,
    progress: bool = True,
    *,
    feature_weight: float = 1.0,
    kd_weight: float = 0.0,
    kd_temperature: float = 1.0,
) -> RecoveryResult:
    """Fine-tune ``student`` (pruned, masks attached) on the (n, L) token ``windows``.

    ``loss``: ``"squarehead"`` (feature distillation), ``"lm"`` (next-token cross-entropy) or
    ``"lm+squarehead"`` (the paper's task + ``feature_weight`` x feature loss); ``kd_weight`` > 0
    adds logit distillation at temperature ``kd_temperature`` to any of them (module docstring)."""
    if windows.dim() != 2 or len(windows) == 0:
        raise SparsecraftError("recovery needs (n, L) token windows")
    objective = RecoveryObjective(student, teacher, loss, feature_weight, kd_weight, kd_temperature)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if teacher is not None:
        teacher.eval()
    student.train()
    result = RecoveryResult(loss, steps)
    t0 = time.perf_counter()
    device = next(student.parameters()).device
    try:
        with objective:
            for step in tqdm(range(steps), desc=f"recovery ({loss})", file=sys.stderr, disable=not progress,
                             leave=False):
                start = (step * batch_size) % len(windows)
                ids = windows[start : start + batch_size].to(device)
                value, parts = objective(ids)
                opt.zero_grad(set_to_none=True)
                value.backward()
                opt.step()
                _zero_pruned_state(opt, student)
                apply_masks(student)
                result.losses.append(float(value.detach()))
                result.parts.append(parts)
    finally:
        student.eval()
    result.wall_time_s = time.perf_counter() - t0
    return result
