"""Causal language-model training on one token stream, as a caller of the library's one loop
(:func:`sparsecraft.training.loop.train_steps`): deterministic batches, warmup + cosine learning
rate, AdamW, gradient clipping, router auxiliary losses and bias updates, validation loss.

Everything that decides a step is a pure function of (seed, step): the batch is ``batch_size``
windows of ``seq_len + 1`` tokens at offsets drawn from a generator seeded with
``seed * 1_000_003 + step``, the learning rate is :func:`lm_lr` (:func:`~sparsecraft.training.loop.lr_at`
with warmup and a floor), and a top-k schedule (:mod:`sparsecraft.moe.schedule`) is applied from
the step too. Resuming from a checkpoint that holds the model (with its buffers: router biases)
and the optimizer therefore continues bit for bit.

Step t: ``lr = lm_lr(t)``; ``loss = CE(model(x), y) + sum of router aux losses`` (:func:`lm_loss`);
backward; clip the global gradient norm to ``grad_clip``; AdamW step (weight decay on >= 2-D
weights only); auxiliary-loss-free bias update of every router
(:func:`sparsecraft.moe.model.update_router_biases`). Works for any ``nn.Module`` mapping token
ids to logits (or an output with ``.logits``): a :class:`sparsecraft.moe.SparseLM`, a
transformers ``LlamaForCausalLM``, ... (no routers = no auxiliary loss, no bias update).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.evaluation.perplexity import window_nll
from sparsecraft.moe.model import aux_loss, routers, update_router_biases
from sparsecraft.training.loop import StepRun, lr_at, train_steps


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
    return lr_at(step, s.steps, s.lr, warmup=s.warmup_steps, min_ratio=s.min_lr_ratio)


BYTE = "byte"  #: the tokenizer name of UTF-8 bytes (vocabulary 256)


def text_tokens(source: str = "shakespeare", tokenizer: str = BYTE) -> tuple[torch.Tensor, int, Any]:
    """(token ids of the whole text, vocabulary size, tokenizer or None for bytes) of a text source
    (:func:`sparsecraft.data.text.load_text`: a built-in name, a file or a folder), tokenized once
    without special tokens by ``tokenizer`` = ``byte`` or a model name / folder."""
    from sparsecraft.data.text import load_text, tokenize

    text = load_text(source)
    if tokenizer == BYTE:
        return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long(), 256, None
    from sparsecraft.models.sources import require_transformers, resolve_model_dir

    require_transformers()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(resolve_model_dir(tokenizer)))
    return tokenize(text, tok), len(tok), tok


def split_tokens(tokens: torch.Tensor, val_fraction: float, seq_len: int,
                 n_windows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(training tokens = the first ``1 - val_fraction``, validation windows = the first
    ``n_windows`` non-overlapping ``seq_len`` windows of the rest, shape (n, seq_len))."""
    cut = int(tokens.numel() * (1 - val_fraction))
    train, val = tokens[:cut], tokens[cut:]
    n = min(n_windows, val.numel() // seq_len)
    if n < 1:
        raise SparsecraftError(f"the validation part has {val.numel()} tokens, less than one window of {seq_len}")
    return train, val[: n * seq_len].reshape(n, seq_len)


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


def lm_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
    """The loop's loss: next-token cross-entropy of ``batch = (x, y)`` plus the routers' auxiliary
    losses; logs the cross-entropy (``loss``), ``aux_loss`` and ``tokens``."""
    x, y = batch
    out = model(input_ids=x)
    logits = out.logits if hasattr(out, "logits") else (out[0] if isinstance(out, tuple) else out)
    lm = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))
    aux = aux_loss(model)
    aux_v = aux.item() if isinstance(aux, torch.Tensor) else float(aux)
    return lm + aux, {"loss": lm.item(), "aux_loss": aux_v, "tokens": x.numel()}


def train_lm(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_tokens: torch.Tensor,
    s: LMTrainSettings,
    *,
    evaluate: Callable[[int], dict[str, Any]] | None = None,
    eval_every: int = 0,
    run: StepRun | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 0,
    settings: dict[str, Any] | None = None,
    stop_after: int | None = None,
    before_step: Callable[[int], Any] | None = None,
    progress: bool = False,
    desc: str = "lm-train",
) -> StepRun:
    """Train ``model`` (on its device) for ``s.steps`` steps of :func:`lm_batch` batches, :func:`lm_lr`
    and :func:`lm_loss` on the library's loop (:func:`sparsecraft.training.loop.train_steps`, which
    documents evaluation, checkpoints, ``stop_after`` and ``run`` = a resumed run), clipping at
    ``s.grad_clip`` and updating router biases after every optimizer step. The batches depend on
    ``s.seed`` and the step only, so every model trained with ``s`` sees the same tokens."""
    device = next(model.parameters()).device

    def batch_at(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = lm_batch(train_tokens, step, s)
        return x.to(device), y.to(device)

    return train_steps(model, optimizer, batch_at, lm_loss, steps=s.steps, lr_fn=lambda t: lm_lr(t, s), run=run,
                       evaluate=evaluate, eval_every=eval_every, checkpoint=checkpoint,
                       checkpoint_every=checkpoint_every, settings=settings, stop_after=stop_after,
                       grad_clip=s.grad_clip, before_step=before_step,
                       after_update=lambda: update_router_biases(model), progress=progress, desc=desc)  # fmt: skip


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
