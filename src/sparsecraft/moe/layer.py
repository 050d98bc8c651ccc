"""The mixture-of-experts feed-forward block (registered FFN ``moe``).

``MoEFFN`` = :class:`~sparsecraft.moe.router.TopKRouter` + :class:`~sparsecraft.moe.experts.FusedExperts`
(dropless) + optional shared experts, with per-layer expert-load counters.

* Fine-grained expert segmentation (Dai et al. 2024, DeepSeekMoE, Sec. 3.1): ``n_experts`` experts
  of width ``expert_dim`` each; splitting every expert of a coarse layer into m narrower ones
  multiplies ``n_experts`` and ``top_k`` by m and divides ``expert_dim`` by m at equal active
  parameters (:func:`fine_grained`). Sigma-MoE-Tiny uses up to 96 such experts with top-1.
* Shared experts (DeepSeekMoE Sec. 3.2): ``n_shared`` experts every token goes through, fused
  into one dense SwiGLU of width ``n_shared * expert_dim``, added to the routed output without a gate.
* Load statistics: every forward adds the tokens each expert received to ``load_counts``
  (a float64 buffer, not saved); :mod:`sparsecraft.moe.stats` turns them into fractions, the
  coefficient of variation, min/max load and dead experts.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.moe.experts import FusedExperts
from sparsecraft.moe.ffn import FFN, SwiGLU, check_positive
from sparsecraft.moe.router import TopKRouter

#: the MoE options of :class:`MoEFFN` a model config may set (``SparseLMConfig.moe``)
MOE_OPTIONS = ("n_experts", "expert_dim", "top_k", "n_shared", "score", "normalize", "aux_loss_coef",
               "z_loss_coef", "bias_update_rate")


def fine_grained(d_ff: int, n_experts: int, top_k: int, granularity: int) -> dict[str, int]:
    """Expert segmentation: ``n_experts`` experts of width ``d_ff`` with top-``top_k`` become
    ``n_experts * m`` experts of width ``d_ff / m`` with top-``top_k * m`` (same active and total
    parameters; DeepSeekMoE Sec. 3.1)."""
    m = check_positive("granularity", granularity)
    if d_ff % m:
        raise SparsecraftError(f"granularity {m} must divide the expert width {d_ff}")
    return {"n_experts": n_experts * m, "expert_dim": d_ff // m, "top_k": top_k * m}


def moe_options(opts: Any) -> dict[str, Any]:
    """The ``moe`` section of a model config, checked (one-line errors) without building a layer."""
    if not isinstance(opts, dict):
        raise SparsecraftError(f"moe must be a mapping of options, got {opts!r}")
    unknown = sorted(set(opts) - set(MOE_OPTIONS))
    if unknown:
        raise SparsecraftError(f"unknown moe option(s) {', '.join(unknown)}; allowed: {', '.join(MOE_OPTIONS)}")
    for key in ("n_experts", "expert_dim"):
        if key not in opts:
            raise SparsecraftError(f"ffn 'moe' needs moe.{key}")
    check_positive("expert_dim", opts["expert_dim"])
    check_positive("n_shared", opts.get("n_shared", 0), allow_zero=True)
    router = {k: v for k, v in opts.items() if k not in ("expert_dim", "n_shared")}
    TopKRouter(1, **router)  # validates n_experts, top_k, score and the coefficients (a 1 x E weight)
    return dict(opts)


@FFN.register("moe")
class MoEFFN(nn.Module):
    """Routed experts (top-k, dropless) plus optional shared experts; see the module docstring."""

    def __init__(
        self,
        d_model: int,
        n_experts: int,
        expert_dim: int,
        top_k: int = 1,
        n_shared: int = 0,
        score: str = "softmax",
        normalize: bool = False,
        aux_loss_coef: float = 0.01,
        z_loss_coef: float = 0.0,
        bias_update_rate: float = 0.0,
    ) -> None:
        super().__init__()
        check_positive("d_model", d_model)
        check_positive("n_shared", n_shared, allow_zero=True)
        self.router = TopKRouter(d_model, n_experts, top_k, score, normalize, aux_loss_coef, z_loss_coef,
                                 bias_update_rate)
        self.experts = FusedExperts(n_experts, d_model, expert_dim)
        self.shared = SwiGLU(d_model, n_shared * expert_dim) if n_shared else None
        self.register_buffer("load_counts", torch.zeros(n_experts, dtype=torch.float64), persistent=False)

    @classmethod
    def from_config(cls, config: Any, layer: int) -> MoEFFN:
        return cls(config.d_model, **moe_options(config.moe))

    @property
    def n_experts(self) -> int:
        return self.router.n_experts

    @property
    def top_k(self) -> int:
        return self.router.top_k

    def forward(self, x: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        routed = self.router(flat)
        with torch.no_grad():
            self.load_counts += routed.counts.to(self.load_counts.dtype)
        y = self.experts(flat, routed.indices, routed.weights)
        if self.shared is not None:
            y = y + self.shared(flat)
        return y.reshape(x.shape)

    def reset_load(self) -> None:
        self.load_counts.zero_()
