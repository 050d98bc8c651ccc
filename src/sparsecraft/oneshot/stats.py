"""Input statistics of the Linear layers of one block, gathered with forward hooks.

* ``sq``: per input feature j, sum over calibration tokens of x_j^2, so ||X_j||_2 = sqrt(sq)
  (Wanda's activation norm).
* ``H``: sum over tokens of x x^T; :meth:`InputStats.hessian` gives SparseGPT's
  H = (2/n) X X^T with n the number of calibration *sequences*, the reference's scale
  (IST-DASLab/sparsegpt ``add_batch`` counts ``inp.shape[0]`` of each (b, L, in) batch, a 2-D
  input as one). The scale matters: dead inputs get H_jj = 1 on that scale (see
  :mod:`sparsecraft.oneshot.sparsegpt`).

Layers fed the *same tensor* (q/k/v of an attention block, gate/up of a gated MLP) share one
:class:`InputStats` object, so each Hessian is accumulated (and later inverted) once. The
sharing is detected by tensor identity during the first forward pass. Accumulation is one
batched float32 matmul per distinct input per batch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class InputStats:
    """Running statistics of one layer input of width ``cols``."""

    def __init__(self, cols: int, hessian: bool, device: torch.device | str = "cpu") -> None:
        self.cols = cols
        self.n = 0  #: calibration tokens seen
        self.samples = 0  #: calibration sequences seen (the reference's ``nsamples``)
        self.sq = torch.zeros(cols, dtype=torch.float32, device=device)
        self.H = torch.zeros(cols, cols, dtype=torch.float32, device=device) if hessian else None
        self.cache: dict[str, Any] = {}  #: derived quantities (e.g. SparseGPT's Hinv), per group

    def add(self, x: torch.Tensor) -> None:
        """Add one batch of layer inputs: (b, L, in) counts b sequences, (tokens, in) one."""
        self.samples += x.shape[0] if x.dim() > 2 else 1
        x = x.reshape(-1, x.shape[-1]).to(torch.float32)
        self.n += x.shape[0]
        self.sq += (x * x).sum(0)
        if self.H is not None:
            self.H.addmm_(x.t(), x)

    @property
    def col_norms(self) -> torch.Tensor:
        """||X_j||_2 over all calibration tokens, per input feature j."""
        return self.sq.sqrt()

    def hessian(self) -> torch.Tensor:
        """H = (2 / samples) sum over tokens of x x^T: SparseGPT's Hessian on the reference's scale."""
        if self.H is None:
            raise RuntimeError("this InputStats was created without a Hessian")
        return self.H * (2.0 / max(self.samples, 1))


class StatsCollector:
    """Context manager: hooks on ``modules`` ({name: module}) that feed :class:`InputStats`.

    Call :meth:`new_pass` before every block forward so that shared inputs are counted once.
    """

    def __init__(self, modules: dict[str, nn.Module], hessian: bool) -> None:
        self.modules = modules
        self.hessian = hessian
        self.stats: dict[str, InputStats] = {}
        self._seen: list[tuple[torch.Tensor, InputStats]] = []
        self._handles: list[Any] = []

    def _hook(self, name: str):
        def hook(module: nn.Module, inp: tuple, out: Any) -> None:
            x = inp[0]
            st = self.stats.get(name)
            if st is None:
                st = next((s for t, s in self._seen if t is x), None)
                if st is None:
                    st = InputStats(x.shape[-1], self.hessian, x.device)
                self.stats[name] = st
            if any(s is st for _, s in self._seen):
                return
            st.add(x.detach())
            self._seen.append((x, st))

        return hook

    def new_pass(self) -> None:
        self._seen = []

    def groups(self) -> list[list[str]]:
        """Names of the layers sharing one statistics object, in first-seen order."""
        out: dict[int, list[str]] = {}
        for name, st in self.stats.items():
            out.setdefault(id(st), []).append(name)
        return list(out.values())

    def __enter__(self) -> StatsCollector:
        for name, mod in self.modules.items():
            self._handles.append(mod.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._seen = []
