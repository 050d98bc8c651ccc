"""Perplexity of a causal language model on fixed token windows.

The usual protocol (SparseGPT, Wanda): non-overlapping windows of ``seq_len`` tokens, each
scored on its own (no context carried over); inside a window token t+1 is predicted from
tokens 1..t, so a window of L tokens contributes L - 1 predictions. Then

    ppl = exp( mean over all predicted tokens of -log p(token) ).

All windows have the same length, so this equals the reference code's
``exp(sum_w mean_nll_w * L / (n_windows * L))``. Windows are run ``batch_size`` at a time and
the loss is computed from the logits chunk by chunk (log-softmax in float32), so memory stays
at one batch of logits.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm


def window_nll(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Summed NLL (float64) of every window in the batch ``ids`` (b, L): shape (b,)."""
    kw: dict[str, Any] = {"input_ids": ids}
    if getattr(getattr(model, "config", None), "use_cache", None) is not None:
        kw["use_cache"] = False
    out = model(**kw)
    logits = out.logits if hasattr(out, "logits") else (out[0] if isinstance(out, tuple) else out)
    shift = logits[:, :-1, :].float()
    labels = ids[:, 1:]
    nll = F.cross_entropy(shift.reshape(-1, shift.shape[-1]), labels.reshape(-1), reduction="none")
    return nll.reshape(ids.shape[0], -1).double().sum(1)


@torch.no_grad()
def perplexity(
    model: nn.Module,
    windows: torch.Tensor,
    batch_size: int = 4,
    progress: bool = True,
    desc: str = "perplexity",
) -> float:
    """exp(mean token NLL) of ``model`` over the (n, L) windows of token ids."""
    if windows.dim() != 2 or windows.shape[1] < 2:
        raise ValueError(f"windows must be (n, L) with L >= 2, got {tuple(windows.shape)}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    starts = range(0, windows.shape[0], batch_size)
    try:
        for i in tqdm(starts, desc=desc, file=sys.stderr, disable=not progress, leave=False):
            ids = windows[i : i + batch_size].to(device)
            total += float(window_nll(model, ids).sum())
            count += ids.shape[0] * (ids.shape[1] - 1)
    finally:
        model.train(was_training)
    return math.exp(total / count)
