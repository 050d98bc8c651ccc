"""``pgf``: Progressive Gradient Flow for N:M training (Bambhaniya et al., 2024).

"Progressive Gradient Flow for Robust N:M Sparsity Training in Transformers" (ALGORITHMS.md,
"N:M training"). Training runs in three phases over ``total_steps``:

1. **dense** for ``dense_steps`` (forward uses ``W``);
2. **decay**: the flow to pruned weights is restricted progressively, in one of two modes:

   * ``mode="mdgf"`` (mask-decay gradient flow): forward ``W * (E + (1 - E) * beta(t))`` with
     ``beta(t) = max(1 - a t, 0)`` (``decay="linear"``) or ``exp(-a t)`` (``"exponential"``),
     ``t`` = steps since the dense phase ended, ``a = rate`` (paper range 1e-4..2e-4);
     backward is plain STE. ``rate="auto"`` makes the decay fit the run: linear reaches 0 and
     exponential 0.01 exactly when the fine-tune starts (useful for short runs).
   * ``mode="sdgf"`` (structure-decay gradient flow): the N:M pattern tightens in equal
     frames (:func:`frame_schedule`), plain STE within a frame; ``frames="stepwise"``:
     (M-1):M, M/2:M, M/4:M, ... N:M; ``"geometric"``: N*2^(3-i) : M*2^(3-i), i = 0..3.

3. **fine-tune** for ``finetune_steps`` at the target N:M. ``finetune="ste"`` (default, the
   reference's behaviour: ``decay_type`` switches to ``"step"``, i.e. ``StepDecay``): plain
   STE, ``beta = 0``, the mask recomputed from ``|W|`` at every forward, the dense ``W`` still
   trained. ``finetune="frozen"``: the mask is frozen at the fine-tune start, pruned weights
   and their optimizer state are zeroed and kept at zero (hard masks).

Test vector (ALGORITHMS.md): 1:8, 100 epochs, 10 dense, 10 fine-tune -> stepwise
{10: 7:8, 30: 4:8, 50: 2:8, 70: 1:8}, geometric {10: 8:64, 30: 4:32, 50: 2:16, 70: 1:8}.

Against the reference code (github.com/abhibambhaniya/progressive_gradient_flow_nm_sparsity,
``timm/sparse_pruning/sparse_functions.py`` + ``train.py``): SDGF frames are its
``get_decay_config``: "stepwise" = ``"sparsify"`` (``log2(M/N) + 1`` frames, (M-1):M then
M/2^i:M), "geometric" = ``"fine"``; the decay span is cut at ``dense + floor(i * span / F)``
alike. Departures: the frames count optimizer steps, not epochs; when M/N is not a power of
two the reference's M/2^i sequence never reaches N (3:8 trains 7:8, 4:8 and stays at 4:8) --
here the target is always the last frame (7:8, 4:8, 3:8); within SDGF frames ``beta = 0``
(the reference can also combine frames with a linear/exponential decay); ``"densify"`` and
custom frame lists are not offered; the fine-tune starts at step ``total - finetune`` (the
reference tests ``epoch > total - finetune``, one epoch later); and the MDGF decay starts at
the end of the dense phase (the reference's ``train.py`` offsets it by the dense *fraction*
/ 100, a ~100x miscomputed offset, not reproduced).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.methods.base import METHODS, resolve_step
from sparsecraft.methods.nm_common import NMMethod
from sparsecraft.patterns import NM


def decay_beta(t: int, rate: float, kind: str = "linear") -> float:
    """MDGF's forward weight of pruned entries ``t`` steps after the dense phase (1 before)."""
    if t < 0:
        return 1.0
    if kind == "linear":
        return max(1.0 - rate * t, 0.0)
    if kind == "exponential":
        return math.exp(-rate * t)
    raise SparsecraftError(f"unknown PGF decay {kind!r}; allowed: linear, exponential")


def frame_patterns(n: int, m: int, kind: str) -> list[tuple[int, int]]:
    """SDGF's sequence of (N, M) ending at the target (see the module docstring)."""
    if kind == "stepwise":
        seq = [m - 1]
        k = m // 2
        while k > n:
            if k < seq[-1]:
                seq.append(k)
            k //= 2
        if seq[-1] != n:
            seq.append(n)
        return [(k, m) for k in seq]
    if kind == "geometric":
        return [(n * 2 ** (3 - i), m * 2 ** (3 - i)) for i in range(4)]
    raise SparsecraftError(f"unknown SDGF frames {kind!r}; allowed: stepwise, geometric")


def frame_schedule(n: int, m: int, total: int, dense: int, finetune: int, kind: str) -> dict[int, tuple[int, int]]:
    """``{start: (N, M)}``: the span ``[dense, total - finetune)`` cut into equal frames
    starting at ``dense + i * span // F`` (any unit: epochs in the test vector, steps here)."""
    frames = frame_patterns(n, m, kind)
    span = total - dense - finetune
    if dense < 0 or finetune < 0 or span < len(frames):
        raise SparsecraftError(
            f"PGF needs total - dense - finetune >= {len(frames)} (one unit per frame); got "
            f"total={total}, dense={dense}, finetune={finetune}"
        )
    return {dense + i * span // len(frames): nm for i, nm in enumerate(frames)}


@METHODS.register("pgf")
class PGF(NMMethod):
    """Progressive gradient flow: dense, then MDGF decay or SDGF frames, then an STE fine-tune
    (mask recomputed every forward; ``finetune="frozen"``: frozen hard mask)."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        mode: str = "mdgf",
        decay: str = "linear",
        rate: float | str = 2e-4,
        frames: str = "stepwise",
        dense_steps: int | float = 0.1,
        finetune_steps: int | float = 0.1,
        lambda_w: float = 0.0,
        finetune: str = "ste",
        **kwargs: Any,
    ) -> None:
        if mode not in ("mdgf", "sdgf"):
            raise SparsecraftError(f"unknown PGF mode {mode!r}; allowed: mdgf, sdgf")
        if finetune not in ("ste", "frozen"):
            raise SparsecraftError(f"unknown PGF finetune {finetune!r}; allowed: ste, frozen")
        self.mode, self.decay, self.frames_kind, self.finetune = mode, decay, frames, finetune
        total = int(kwargs.get("total_steps", 0))
        self.dense_steps = resolve_step(dense_steps, total) or 0
        self.frame_starts: dict[int, tuple[int, int]] = {}
        super().__init__(model, optimizer, finetune_steps=finetune_steps, **kwargs)
        self.lambda_w = float(lambda_w)
        decay_span = max(self.finetune_start - self.dense_steps, 1)
        decay_beta(0, 0.0, decay)  # validates the name
        if rate == "auto":
            rate = 1.0 / decay_span if decay == "linear" else math.log(100.0) / decay_span
        elif isinstance(rate, str):
            raise SparsecraftError(f"PGF rate must be a number or 'auto', got {rate!r}")
        self.rate = float(rate)

    def required_patterns(self) -> list[NM]:
        if self.mode == "mdgf":
            return [self.target_nm]
        t = self.target_nm
        self.frame_starts = frame_schedule(
            t.n,
            t.m,
            self.total_steps,
            self.dense_steps,
            self.total_steps - self.finetune_start,
            self.frames_kind,
        )
        return [NM(n, m) for n, m in self.frame_starts.values()]

    def phase(self, step: int | None = None) -> str:
        s = self.step_count if step is None else step
        if s >= self.finetune_start:
            return "finetune"
        return "dense" if s < self.dense_steps else "decay"

    def sync_phase(self, recompute: bool = True) -> None:
        s = self.step_count
        if s >= self.finetune_start:
            if self.finetune == "frozen":
                super().sync_phase(recompute)
            else:  # plain STE at the target pattern, mask still recomputed every forward
                self.beta = 0.0
                self._use_pattern(self.target_nm, recompute)
            return
        if self.mode == "mdgf":
            self.beta = decay_beta(s - self.dense_steps, self.rate, self.decay)
            return
        if s < self.dense_steps:
            self.beta = 1.0
            return
        self.beta = 0.0
        start = max(k for k in self.frame_starts if k <= s)
        self._use_pattern(NM(*self.frame_starts[start]), recompute)

    def _use_pattern(self, nm: NM, recompute: bool) -> None:
        if nm != self.pattern:
            self.pattern = nm
            if recompute:
                self.recompute_all()
            else:
                self._versions.clear()
