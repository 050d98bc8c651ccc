"""The modules of a SliceGPT-sliced Llama-style model, and rebuilding them from a record.

SliceGPT (Ashkboos et al. 2024, "SliceGPT: Compress Large Language Models by Deleting Rows and
Columns", Sec. 3) relies on *computational invariance*: with RMSNorm scales folded into the next
linear layers, the normalisation x / ||x|| commutes with any orthogonal Q, so every block may
work in its own rotated (and then sliced) basis. The residual stream changes basis between the
two halves of a block, so each residual path carries a small matrix (Eq. 9):

    attention half:  h = x Q_in^T Q_mid + Attn(RMSN(x))      (x in the block's input basis)
    MLP half:        y = h Q_mid^T Q_out + MLP(RMSN(h))

:class:`RMSN` is the scale-free RMSNorm; like the reference implementation it divides the sum
of squares by the *original* hidden size, so a sliced vector keeps the norm the dense one had
(up to the discarded components). :class:`SlicedDecoderLayer` holds the two shortcut matrices as
bias-free ``nn.Linear`` layers (``attn_shortcut`` d_in -> d_mid, ``mlp_shortcut`` d_mid -> d_out).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.oneshot.blockwise import find_blocks

LAYER_PARTS = ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")


class RMSN(nn.Module):
    """x / sqrt(sum(x^2) / mean_dim + eps), no scale (SliceGPT's fused RMSNorm)."""

    def __init__(self, mean_dim: int, eps: float) -> None:
        super().__init__()
        self.mean_dim = int(mean_dim)
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        var = x32.pow(2).sum(-1, keepdim=True) / self.mean_dim
        return (x32 * torch.rsqrt(var + self.eps)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"mean_dim={self.mean_dim}, eps={self.eps}"


class SlicedDecoderLayer(nn.Module):
    """A Llama-style decoder layer whose residual paths go through shortcut matrices."""

    def __init__(self, layer: nn.Module, d_in: int, d_mid: int, d_out: int, hidden: int, eps: float) -> None:
        super().__init__()
        for k, v in vars(layer).items():  # plain attributes the model reads (attention_type, hidden_size, ...)
            if not k.startswith("_") and not isinstance(v, (nn.Module, torch.Tensor)) and k != "training":
                setattr(self, k, v)
        self.input_layernorm = RMSN(hidden, eps)
        self.self_attn = layer.self_attn
        self.post_attention_layernorm = RMSN(hidden, eps)
        self.mlp = layer.mlp
        w = layer.self_attn.o_proj.weight
        self.attn_shortcut = nn.Linear(d_in, d_mid, bias=False, device=w.device, dtype=w.dtype)
        self.mlp_shortcut = nn.Linear(d_mid, d_out, bias=False, device=w.device, dtype=w.dtype)

    def forward(self, hidden_states: torch.Tensor, attention_mask: Any = None, position_ids: Any = None,
                cache: Any = None, use_cache: bool | None = False, position_embeddings: Any = None,
                **kwargs: Any) -> torch.Tensor:
        residual = hidden_states
        h, _ = self.self_attn(hidden_states=self.input_layernorm(hidden_states), attention_mask=attention_mask,
                              position_ids=position_ids, cache=cache, use_cache=use_cache,
                              position_embeddings=position_embeddings, **kwargs)
        h = self.attn_shortcut(residual) + h
        return self.mlp_shortcut(h) + self.mlp(self.post_attention_layernorm(h))


def check_llama_style(model: nn.Module) -> tuple[Any, nn.Module, nn.Module, nn.Module]:
    """(block stack, embedding, final norm, LM head) of a Llama / Mistral / Qwen2-style model."""
    stack = find_blocks(model)
    inner = getattr(model, "model", None)
    emb, norm = getattr(inner, "embed_tokens", None), getattr(inner, "norm", None)
    head = getattr(model, "lm_head", None)
    parts = (("model.embed_tokens", emb), ("model.norm", norm), ("lm_head", head))
    problems = [name for name, mod in parts if mod is None]
    for i, b in enumerate(stack.blocks):
        if isinstance(b, SlicedDecoderLayer):
            problems.append(f"{stack.block_name(i)} (already sliced)")
            break
        missing = [p for p in LAYER_PARTS if not hasattr(b, p)]
        att, mlp = getattr(b, "self_attn", None), getattr(b, "mlp", None)
        missing += [f"self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "o_proj") if not hasattr(att, p)]
        missing += [f"mlp.{p}" for p in ("gate_proj", "up_proj", "down_proj") if not hasattr(mlp, p)]
        if missing:
            problems.append(f"{stack.block_name(i)}: no {', '.join(missing)}")
            break
    if problems:
        raise SparsecraftError(f"slicegpt works on Llama-style models (Llama, Mistral, Qwen2: RMSNorm, q/k/v/o and "
                               f"gate/up/down projections); {type(model).__name__} has {'; '.join(problems)}")
    return stack, emb, norm, head


def hidden_and_eps(model: nn.Module, norm: nn.Module) -> tuple[int, float]:
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))
    return int(model.config.hidden_size), float(eps)


def convert_sliced(model: nn.Module, spec: dict[str, Any]) -> None:
    """Rebuild the sliced modules of a SliceGPT record on a freshly built model (for loading)."""
    stack, _, norm, head = check_llama_style(model)
    dims = spec["layers"]
    if len(dims) != len(stack.blocks):
        raise SparsecraftError(f"the slicegpt record has {len(dims)} layers, the model {len(stack.blocks)}")
    hidden, eps = int(spec["hidden"]), float(spec["eps"])
    for i, (d_in, d_mid, d_out) in enumerate(dims):
        stack.blocks[i] = SlicedDecoderLayer(stack.blocks[i], d_in, d_mid, d_out, hidden, eps)
    if spec.get("final_norm") == "rmsn":
        model.model.norm = RMSN(hidden, eps)
