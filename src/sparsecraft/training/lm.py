"""A small, generic causal-LM training loop: token batches, AdamW with warmup + cosine, evaluation.

Works for any ``nn.Module`` that maps token ids ``[B, L]`` to logits ``[B, L, V]`` (or an output
with ``.logits``), e.g. a transformers ``LlamaForCausalLM`` or a hand-written model.

* :func:`text_tokens` -- a text source (``shakespeare`` or a path) as token ids, by a Hugging Face
  tokenizer or as UTF-8 bytes (vocabulary 256), split 90/10 into train / validation streams the
  way the perplexity protocol splits it (:mod:`sparsecraft.data.text`).
* :func:`random_windows` -- a batch of ``seq_len + 1``-token windows at seeded random offsets.
* :func:`train_lm` -- ``steps`` AdamW steps (linear warmup, cosine decay to ``min_lr_ratio``,
  gradient clipping), the same batches for the same seed whatever the model, periodic validation;
  returns the history and the final validation loss.
* :func:`evaluate_lm` -- mean next-token loss over fixed, non-overlapping validation windows.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from sparsecraft.errors import SparsecraftError


@dataclass
class LMTrainConfig:
    """Settings of :func:`train_lm` (AdamW; lr warmup over ``warmup`` steps then cosine)."""

    steps: int = 600
    batch_size: int = 16
    seq_len: int = 128
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup: int = 50
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_windows: int = 64
    seed: int = 0
    device: str = "cpu"

    def validate(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "eval_every", "eval_windows"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SparsecraftError(f"LMTrainConfig.{name} must be a positive integer, got {v!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise SparsecraftError(f"LMTrainConfig.lr must be a positive number, got {self.lr!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise SparsecraftError(f"LMTrainConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")


@dataclass
class LMTrainResult:
    final_val_loss: float
    history: list[dict[str, float]] = field(default_factory=list)
    tokens_seen: int = 0
    seconds: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)


def text_tokens(source: str = "shakespeare", tokenizer: Any = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(train ids, validation ids, vocabulary size) of a text: ``tokenizer=None`` = UTF-8 bytes."""
    from sparsecraft.data.text import load_text, split_pools, tokenize

    text = load_text(source)
    if tokenizer is None:
        ids, vocab = torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long(), 256
    else:
        ids, vocab = tokenize(text, tokenizer), len(tokenizer)
    train, val = split_pools(ids)
    return train, val, vocab


def random_windows(tokens: torch.Tensor, batch_size: int, seq_len: int, gen: torch.Generator) -> torch.Tensor:
    """``[batch_size, seq_len + 1]`` windows of ``tokens`` at random offsets drawn from ``gen``."""
    if tokens.numel() < seq_len + 2:
        raise SparsecraftError(f"{tokens.numel()} tokens are too few for windows of {seq_len + 1}")
    starts = torch.randint(0, tokens.numel() - seq_len - 1, (batch_size,), generator=gen)
    return torch.stack([tokens[s : s + seq_len + 1] for s in starts.tolist()])


def logits_of(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    out = model(ids)
    return out.logits if hasattr(out, "logits") else (out[0] if isinstance(out, tuple) else out)


def lm_loss(model: nn.Module, windows: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross entropy of ``windows [B, L + 1]`` (inputs ``[:, :-1]``, targets ``[:, 1:]``)."""
    logits = logits_of(model, windows[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), windows[:, 1:].reshape(-1))


@torch.no_grad()
def evaluate_lm(model: nn.Module, tokens: torch.Tensor, seq_len: int, n_windows: int = 64,
                batch_size: int = 16) -> float:
    """Mean next-token loss over the first ``n_windows`` non-overlapping windows of ``tokens``."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    n = min(n_windows, (tokens.numel() - 1) // seq_len)
    if n < 1:
        raise SparsecraftError(f"{tokens.numel()} validation tokens are too few for one window of {seq_len + 1}")
    wins = torch.stack([tokens[i * seq_len : i * seq_len + seq_len + 1] for i in range(n)])
    total = 0.0
    for i in range(0, n, batch_size):
        w = wins[i : i + batch_size].to(device)
        total += float(lm_loss(model, w)) * w.shape[0]
    model.train(was)
    return total / n


def lr_factor(step: int, cfg: LMTrainConfig) -> float:
    """Multiplier of ``cfg.lr`` at ``step``: linear warmup, then cosine from 1 to ``min_lr_ratio``."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def train_lm(model: nn.Module, train_tokens: torch.Tensor, val_tokens: torch.Tensor,
             cfg: LMTrainConfig | None = None, progress: bool = False) -> LMTrainResult:
    """Train ``model`` for ``cfg.steps`` AdamW steps on random windows of ``train_tokens``.

    Batches depend only on ``cfg.seed`` (not on the model), so two models trained with the same
    config see the same tokens. Weight decay applies to matrices only (not norms, biases, gates'
    vectors). Returns the validation-loss history (every ``eval_every`` steps) and final loss."""
    cfg = cfg or LMTrainConfig()
    cfg.validate()
    device = torch.device(cfg.device)
    model.to(device).train()
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=cfg.betas)
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    for step in tqdm(range(cfg.steps), desc="train lm", file=sys.stderr, disable=not progress, leave=False):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(step, cfg)
        batch = random_windows(train_tokens, cfg.batch_size, cfg.seq_len, gen).to(device)
        loss = lm_loss(model, batch)
        if not torch.isfinite(loss):
            raise SparsecraftError(f"training diverged at step {step}: loss {float(loss)} (lower the lr {cfg.lr})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            val = evaluate_lm(model, val_tokens, cfg.seq_len, cfg.eval_windows)
            history.append({"step": step + 1, "train_loss": float(loss.detach()), "val_loss": val})
    model.eval()
    return LMTrainResult(final_val_loss=history[-1]["val_loss"], history=history,
                         tokens_seen=cfg.steps * cfg.batch_size * cfg.seq_len,
                         seconds=time.perf_counter() - t0, config=asdict(cfg))
