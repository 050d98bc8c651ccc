"""Sentence-embedding similarity: how close a pruned encoder stays to its dense self.

Embeddings are sentence-transformers style: the encoder's last hidden states mean-pooled over
the non-padding tokens (all-MiniLM-L6-v2's pooling). The metric is the mean over the sample of
cos(e_pruned(x), e_dense(x)), 1.0 for the dense model itself (used by the essential-sparsity
sweep of Chen et al. 2023, "The Essential Sparsity of Large Pre-trained Models", on an
encoder without a task head).
"""

from __future__ import annotations

import sys
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm


def encode_batches(tokenizer: Any, texts: list[str], batch_size: int = 32, max_length: int = 128) -> list[dict]:
    """Tokenized, padded batches of ``texts``."""
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i : i + batch_size], padding=True, truncation=True,
                        max_length=max_length, return_tensors="pt")
        out.append({k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")})
    return out


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` (b, L, d) over the positions where ``attention_mask`` is 1."""
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)


@torch.no_grad()
def sentence_embeddings(model: nn.Module, batches: list[dict], progress: bool = False) -> torch.Tensor:
    """(n, d) mean-pooled embeddings of every batch."""
    model.eval()
    device = next(model.parameters()).device
    embs = []
    for b in tqdm(batches, desc="embeddings", file=sys.stderr, disable=not progress, leave=False):
        b = {k: v.to(device) for k, v in b.items()}
        out = model(**b)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        embs.append(mean_pool(hidden, b["attention_mask"]).float())
    return torch.cat(embs)


def embedding_similarity(reference: torch.Tensor, embeddings: torch.Tensor) -> float:
    """Mean cosine similarity of matching rows of two (n, d) embedding matrices."""
    return float(F.cosine_similarity(reference, embeddings, dim=1).mean())
