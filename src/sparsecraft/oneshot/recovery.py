"""Recovery fine-tuning of a one-shot pruned model, masks kept exact.

SquareHead distillation (Kurtic et al. 2023, "Sparse Fine-tuning for Inference Acceleration of
Large Language Models"): the dense model is the teacher; with s_l / t_l the student / teacher
outputs of block l on the same tokens,

    L = sum_l mean((s_l - t_l)^2) / (mean(t_l^2) + eps)

(each block's error normalised by the teacher's output energy, so every block counts alike).
``loss="lm"`` uses the plain next-token cross-entropy instead. After every optimizer step the
masks are re-applied (:func:`sparsecraft.masks.apply_masks`), so the sparsity is exact at every
step; AdamW moments of pruned weights are zeroed too, so they never push a weight back.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from sparsecraft.errors import SparsecraftError
from sparsecraft.masks import apply_masks, masked_params
from sparsecraft.oneshot.blockwise import find_blocks

LOSSES = ("squarehead", "lm")


def squarehead_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], eps: float = 1e-6) -> torch.Tensor:
    """sum_l mean((s_l - t_l)^2) / (mean(t_l^2) + eps)."""
    if len(student) != len(teacher) or not student:
        raise ValueError("squarehead_loss needs the same, non-zero number of student and teacher blocks")
    total = student[0].new_zeros(())
    for s, t in zip(student, teacher):
        total = total + (s - t).pow(2).mean() / (t.pow(2).mean() + eps)
    return total


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


@dataclass
class RecoveryResult:
    loss: str
    steps: int
    losses: list[float] = field(default_factory=list)
    wall_time_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"loss": self.loss, "steps": self.steps, "first_loss": self.losses[0] if self.losses else None,
                "last_loss": self.losses[-1] if self.losses else None, "wall_time_s": round(self.wall_time_s, 3)}


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
) -> RecoveryResult:
    """Fine-tune ``student`` (pruned, masks attached) on the (n, L) token ``windows``."""
    if loss not in LOSSES:
        raise SparsecraftError(f"unknown recovery loss {loss!r}; allowed: {', '.join(LOSSES)}")
    if loss == "squarehead" and teacher is None:
        raise SparsecraftError("SquareHead distillation needs the dense teacher model")
    if windows.dim() != 2 or len(windows) == 0:
        raise SparsecraftError("recovery needs (n, L) token windows")
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    s_hooks = BlockOutputs(student) if loss == "squarehead" else None
    t_hooks = BlockOutputs(teacher) if loss == "squarehead" else None
    if teacher is not None:
        teacher.eval()
    student.train()
    result = RecoveryResult(loss, steps)
    t0 = time.perf_counter()
    device = next(student.parameters()).device
    try:
        for step in tqdm(range(steps), desc=f"recovery ({loss})", file=sys.stderr, disable=not progress, leave=False):
            start = (step * batch_size) % len(windows)
            ids = windows[start : start + batch_size].to(device)
            if loss == "squarehead":
                with torch.no_grad():
                    teacher(input_ids=ids, use_cache=False)
                student(input_ids=ids, use_cache=False)
                value = squarehead_loss(s_hooks.take(), [t.detach() for t in t_hooks.take()])
            else:
                value = student(input_ids=ids, labels=ids, use_cache=False).loss
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            _zero_pruned_state(opt, student)
            apply_masks(student)
            result.losses.append(float(value.detach()))
    finally:
        for h in (s_hooks, t_hooks):
            if h is not None:
                h.close()
        student.eval()
    result.wall_time_s = time.perf_counter() - t0
    return result
