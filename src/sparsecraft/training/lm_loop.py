"""Causal language-model training on one token stream: deterministic batches, warmup + cosine
learning rate, AdamW, gradient clipping, router auxiliary losses and bias updates, validation loss.

Everything that decides a step is a pure function of (seed, step): the batch is ``batch_size``
windows of ``seq_len + 1`` tokens at offsets drawn from a generator seeded with
``seed * 1_000_003 + step``, the learning rate is :func:`lm_lr` of the step, and a top-k schedule
(:mod:`sparsecraft.moe.schedule`) is applied from the step too. Resuming from a checkpoint that
holds the model (with its buffers: router biases) and the optimizer therefore continues bit for bit.

Step t: ``lr = lm_lr(t)``; ``loss = CE(model(x), y) + sum of router aux losses``; backward; clip
the global gradient norm to ``grad_clip``; AdamW step (weight decay on >= 2-D weights only);
auxiliary-loss-free bias update of every router (:func:`sparsecraft.moe.model.update_router_biases`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.evaluation.perplexity import window_nll
from sparsecraft.moe.model import aux_loss, routers, update_router_biases


@dataclass
class LMTrainSettings:
    steps: int
    batch_size: int = 16
    seq_len: int = 128
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  #: the cosine ends at lr * min_lr_ratio
    warmup_steps: int = 0
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  #: 0 = no clipping
    seed: int = 0


def lm_lr(step: int, s: LMTrainSettings) -> float:
    """Linear warmup over ``warmup_steps`` to ``lr``, then cosine to ``lr * min_lr_ratio`` at ``steps``."""
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    span = max(1, s.steps - s.warmup_steps)
    p = min(1.0, (step - s.warmup_steps) / span)
    floor = s.lr * s.min_lr_ratio
    return floor + (s.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * p))


def lm_batch(tokens: torch.Tensor, step: int, s: LMTrainSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, next-token targets), both (batch_size, seq_len), for ``step`` (a pure function of it)."""
    n = tokens.numel() - s.seq_len - 1
    if n < 1:
        raise SparsecraftError(f"the training text has {tokens.numel()} tokens; windows of {s.seq_len} + 1 need more")
    gen = torch.Generator().manual_seed(int(s.seed) * 1_000_003 + int(step))
    starts = torch.randint(0, n + 1, (s.batch_size,), generator=gen)
    w = tokens[starts[:, None] + torch.arange(s.seq_len + 1)]
    return w[:, :-1], w[:, 1:]


def make_lm_optimizer(model: nn.Module, s: LMTrainSettings) -> torch.optim.AdamW:
    """AdamW with weight decay on the >= 2-D parameters (matrices, embeddings, expert weights)."""
    decay, plain = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else plain).append(p)
    groups = [{"params": decay, "weight_decay": s.weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=s.lr, betas=(s.beta1, s.beta2))


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, lr: float,
               grad_clip: float) -> dict[str, float]:
    """One optimizer step; returns the LM loss, the summed auxiliary loss and the gradient norm."""
    model.train()
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    logits = model(input_ids=x).logits
    lm = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))
    aux = aux_loss(model)
    (lm + aux).backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip) if grad_clip > 0 else torch.tensor(0.0)
    opt.step()
    update_router_biases(model)
    aux_v = aux.item() if isinstance(aux, torch.Tensor) else float(aux)
    return {"loss": lm.item(), "aux_loss": aux_v, "grad_norm": float(norm)}


@torch.no_grad()
def evaluate_lm(model: nn.Module, windows: torch.Tensor, batch_size: int = 8) -> float:
    """Mean next-token cross-entropy over the (n, L) validation windows (L - 1 predictions each)."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    try:
        for i in range(0, windows.shape[0], batch_size):
            ids = windows[i:i + batch_size].to(device)
            total += float(window_nll(model, ids).sum())
            count += ids.shape[0] * (ids.shape[1] - 1)
    finally:
        model.train(was)
    return total / max(count, 1)


def router_losses(model: nn.Module) -> dict[str, float]:
    """Mean over routers of the last step's unscaled balancing and z losses (for logs)."""
    out: dict[str, list[float]] = {}
    for r in routers(model):
        for k, v in r.last_losses.items():
            out.setdefault(k, []).append(float(v))
    return {k: sum(v) / len(v) for k, v in out.items()}


def count_parameters(model: nn.Module, seq_len: int | None = None) -> dict[str, Any]:
    """Total parameters (tied ones once) and active parameters per token: a MoE layer counts its
    router, shared experts and top-k routed experts; an Engram or STEM table counts the rows one
    token reads; the token embedding counts one row (the tied LM head is a full matmul).

    With ``seq_len``, also ``flops_per_token`` = 2 x (active parameters used in matrix products:
    no table rows, no norm scales) + 4 x d_model x (seq_len + 1) / 2 per attention layer (scores
    and weighted values over the mean causal context), the usual 2N + attention estimate."""
    from sparsecraft.moe.engram import Engram
    from sparsecraft.moe.layer import MoEFFN
    from sparsecraft.moe.stem import STEMFFN

    total = sum(p.numel() for p in model.parameters())
    inactive = lookups = 0
    for m in model.modules():
        if isinstance(m, MoEFFN):
            per = m.experts.gate_up_proj[0].numel() + m.experts.down_proj[0].numel()
            inactive += (m.n_experts - m.top_k) * per
        elif isinstance(m, Engram):
            inactive += m.table.weight.numel() - len(m.primes) * m.table.weight.shape[1]
            lookups += len(m.primes) * m.table.weight.shape[1]
        elif isinstance(m, STEMFFN):
            inactive += m.up_table.weight.numel() - m.up_table.weight.shape[1]
            lookups += m.up_table.weight.shape[1]
        elif isinstance(m, nn.RMSNorm) and m.weight is not None:
            lookups += m.weight.numel()
    emb = getattr(model, "embed_tokens", None)
    if isinstance(emb, nn.Embedding):
        tied = getattr(getattr(model, "lm_head", None), "weight", None) is emb.weight
        if not tied:
            inactive += emb.weight.numel() - emb.weight.shape[1]
            lookups += emb.weight.shape[1]
    out: dict[str, Any] = {"total": total, "active": total - inactive}
    if seq_len is not None:
        cfg = getattr(model, "config", None)
        attn = 4 * cfg.d_model * (seq_len + 1) / 2 * cfg.n_layers if cfg is not None else 0.0
        out["flops_per_token"] = 2 * (total - inactive - lookups) + attn
    return out
