"""Top-k routers of mixture-of-experts layers, with the three balancing tools of the literature.

For a token x (row of the (T, d_model) input) and router weight W (E, d_model):

* logits z = W x; scores s = softmax(z) (Switch, Mixtral, Qwen-MoE, OLMoE) or s_i = sigmoid(z_i)
  (DeepSeek-V3);
* selection: the ``top_k`` largest of s_i + b_i, with b the per-expert bias of auxiliary-loss-free
  balancing (all zero unless ``bias_update_rate > 0``); the gate weights are the selected s_i
  *without* the bias, divided by their sum when ``normalize`` is set;
* load-balancing loss (the "f . p" form; Fedus et al. 2022, Switch Transformer, Eq. 4-6; Megatron's
  ``switch_load_balancing_loss_func``): ``aux_loss_coef * E * sum_i f_i P_i`` with f_i the fraction
  of the T * k token-to-expert assignments that went to expert i and P_i the mean over tokens of
  p_i, p = s for softmax and s / sum(s) for sigmoid scores. It equals ``aux_loss_coef`` when the
  load is uniform;
* router z-loss (Zoph et al. 2022, ST-MoE, Eq. 5): ``z_loss_coef * mean_t (logsumexp_i z_ti)^2``;
* auxiliary-loss-free balancing (Wang et al. 2024; DeepSeek-V3): during training the router counts
  the tokens c_i each expert received; :meth:`TopKRouter.update_bias` (call it after every
  optimizer step) moves b_i by ``bias_update_rate * sign(mean(c) - c_i)`` and clears the counts.

The auxiliary losses of the last training forward are in ``router.aux_loss`` (``None`` in eval or
with both coefficients 0); :func:`sparsecraft.moe.model.aux_loss` sums them over a model.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from sparsecraft.errors import SparsecraftError

SCORES = ("softmax", "sigmoid")


class RouterOutput(NamedTuple):
    indices: torch.Tensor  #: (T, k) chosen experts, int64
    weights: torch.Tensor  #: (T, k) gate weights of the chosen experts
    counts: torch.Tensor  #: (E,) how many of the T tokens chose each expert


def check_n_experts(n_experts: Any) -> int:
    if isinstance(n_experts, bool) or not isinstance(n_experts, int) or n_experts < 1:
        raise SparsecraftError(f"n_experts must be an integer >= 1 (an MoE layer needs an expert), got {n_experts!r}")
    return n_experts


def check_top_k(k: Any, n_experts: int) -> int:
    """``k`` as an int in [1, n_experts], else a one-line error naming both."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n_experts:
        raise SparsecraftError(f"top_k must be an integer in [1, n_experts={n_experts}], got {k!r}")
    return k


def _check_coef(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise SparsecraftError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def load_balancing_loss(probs: torch.Tensor, counts: torch.Tensor, top_k: int) -> torch.Tensor:
    """E * sum_i f_i P_i with f = counts / (T * top_k) and P = probs.mean(0) (Switch Eq. 4)."""
    t, e = probs.shape
    f = counts.to(probs.dtype) / max(t * top_k, 1)
    return e * torch.sum(f * probs.mean(0))


def z_loss(logits: torch.Tensor) -> torch.Tensor:
    """mean over tokens of logsumexp(logits)^2 (ST-MoE Eq. 5)."""
    return torch.logsumexp(logits, dim=-1).pow(2).mean()


class TopKRouter(nn.Module):
    """Linear router choosing ``top_k`` of ``n_experts`` per token (see the module docstring)."""

    def __init__(
        self,
        d_model: int,
        n_experts: int,
        top_k: int = 1,
        score: str = "softmax",
        normalize: bool = False,
        aux_loss_coef: float = 0.0,
        z_loss_coef: float = 0.0,
        bias_update_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.n_experts = check_n_experts(n_experts)
        self.top_k = check_top_k(top_k, n_experts)
        if score not in SCORES:
            raise SparsecraftError(f"router score must be one of {', '.join(SCORES)}, got {score!r}")
        self.score = score
        self.normalize = bool(normalize)
        self.aux_loss_coef = _check_coef("aux_loss_coef", aux_loss_coef)
        self.z_loss_coef = _check_coef("z_loss_coef", z_loss_coef)
        self.bias_update_rate = _check_coef("bias_update_rate", bias_update_rate)
        self.weight = nn.Parameter(torch.empty(n_experts, d_model))
        nn.init.normal_(self.weight, std=0.02)
        self.register_buffer("expert_bias", torch.zeros(n_experts))
        self.register_buffer("pending_counts", torch.zeros(n_experts), persistent=False)
        self.aux_loss: torch.Tensor | None = None
        self.last_losses: dict[str, torch.Tensor] = {}

    def set_top_k(self, k: int) -> None:
        """Change the number of experts per token (progressive sparsification)."""
        self.top_k = check_top_k(k, self.n_experts)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(-1) if self.score == "softmax" else logits.sigmoid()

    def forward(self, x: torch.Tensor) -> RouterOutput:
        logits = F.linear(x, self.weight).float()
        s = self.scores(logits)
        choice = s + self.expert_bias
        if self.top_k == 1:
            indices = choice.argmax(-1, keepdim=True)
        else:
            _, indices = torch.topk(choice, self.top_k, dim=-1)
        weights = s.gather(-1, indices)
        if self.normalize:
            weights = weights / weights.sum(-1, keepdim=True).clamp_min(1e-20)
        counts = torch.bincount(indices.reshape(-1), minlength=self.n_experts)
        self.aux_loss, self.last_losses = None, {}
        if self.training and torch.is_grad_enabled():
            self._auxiliary(logits, s, counts)
            if self.bias_update_rate > 0:
                self.pending_counts += counts
        return RouterOutput(indices, weights.to(x.dtype), counts)

    def _auxiliary(self, logits: torch.Tensor, s: torch.Tensor, counts: torch.Tensor) -> None:
        total = None
        if self.aux_loss_coef > 0:
            p = s if self.score == "softmax" else s / s.sum(-1, keepdim=True).clamp_min(1e-20)
            lb = load_balancing_loss(p, counts, self.top_k)
            self.last_losses["load_balancing"] = lb.detach()
            total = self.aux_loss_coef * lb
        if self.z_loss_coef > 0:
            zl = z_loss(logits)
            self.last_losses["z"] = zl.detach()
            total = self.z_loss_coef * zl if total is None else total + self.z_loss_coef * zl
        self.aux_loss = total

    @torch.no_grad()
    def update_bias(self) -> None:
        """Auxiliary-loss-free balancing step: b_i += rate * sign(mean(c) - c_i); clears c."""
        if self.bias_update_rate > 0 and bool(self.pending_counts.any()):
            c = self.pending_counts
            self.expert_bias += self.bias_update_rate * torch.sign(c.mean() - c)
            c.zero_()

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[1]} -> {self.n_experts} experts, top_k={self.top_k}, score={self.score}, "
                f"normalize={self.normalize}")
