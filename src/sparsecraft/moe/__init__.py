"""Sparsity beyond weights: experts and memory.

* :class:`MoEFFN` -- mixture-of-experts FFN: fine-grained experts, top-k routing (softmax or
  sigmoid scores), shared experts, f.p load-balancing loss, router z-loss, auxiliary-loss-free bias
  balancing, dropless grouped execution, per-layer load statistics (:func:`expert_load`);
* :class:`TopKSchedule` -- progressive sparsification (Sigma-MoE-Tiny) over steps and layers;
* :class:`Engram` -- hashed 2-/3-gram memory with context-aware gating (DeepSeek's Engram);
* :class:`STEMFFN` -- FFN whose up-projection is a token-indexed table (STEM);
* :class:`SparseLM` -- a small Llama-style LM built from :class:`SparseLMConfig` with any of them;
* :mod:`sparsecraft.moe.expert_pruning` -- router statistics and expert removal for existing MoE
  models (transformers' Qwen2-MoE, Qwen3-MoE, Mixtral, OLMoE, and :class:`SparseLM`).

Weight pruning of fused expert weights goes through :func:`sparsecraft.prune` like any other layer.
Guide: docs/moe.md.
"""

from sparsecraft.moe.attention import ATTENTION
from sparsecraft.moe.engram import Engram
from sparsecraft.moe.experts import FusedExperts
from sparsecraft.moe.ffn import FFN, SwiGLU
from sparsecraft.moe.layer import MoEFFN, fine_grained
from sparsecraft.moe.model import (
    SparseLM,
    SparseLMConfig,
    aux_loss,
    load_lm,
    memory_rows,
    save_lm,
    update_router_biases,
)
from sparsecraft.moe.router import TopKRouter
from sparsecraft.moe.schedule import TopKSchedule, apply_top_k, sigma_moe_tiny
from sparsecraft.moe.stats import ExpertLoad, expert_load, reset_expert_load
from sparsecraft.moe.stem import STEMFFN

__all__ = [
    "ATTENTION", "FFN", "STEMFFN", "Engram", "ExpertLoad", "FusedExperts", "MoEFFN", "SparseLM", "SparseLMConfig",
    "SwiGLU", "TopKRouter", "TopKSchedule", "apply_top_k", "aux_loss", "expert_load", "fine_grained", "load_lm",
    "memory_rows", "reset_expert_load", "save_lm", "sigma_moe_tiny", "update_router_biases",
]
