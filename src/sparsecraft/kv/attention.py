"""The ``"sparsecraft_kv"`` attention: exact per-token KV pruning inside any forward, and the C++
decode kernel on the compressed cache.

Registered in transformers' ``AttentionInterface`` (mask: SDPA's). For keys that do not come from
a :class:`~sparsecraft.kv.cache.SparseKVCache` it is plain SDPA. For a sparse cache it gets the
dense keys/values of tokens ``[c0, T)`` and the compressed store of tokens ``[0, c1)`` and
computes, for the query at absolute position t and key j (Mustafar's rule, applied per token):

    k_j, v_j dense    if t - j < window   (j is one of the newest ``window`` tokens at time t)
    k_j, v_j pruned   otherwise

    out_t = sum_j softmax_j(scale * q_t . k_j + mask_tj) v_j

Both score versions are computed for the tokens that leave the window inside this forward and the
right one is picked per (t, j), so a whole 2048-token window is scored exactly as if it had been
fed one token at a time. One new token on CPU (decode): ``kv_decode_attention`` reads the
bitmaps and packed values directly (``kernels/csrc/kv_kernels.cpp``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sparsecraft.errors import SparsecraftError

ATTN_NAME = "sparsecraft_kv"
QUERY_CHUNK = 256  #: queries scored at a time in the exact path (bounds the score memory)


def _sdpa(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
          attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def register() -> None:
    """Register ``"sparsecraft_kv"`` (attention + SDPA's mask) with transformers (idempotent)."""
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    from transformers.modeling_utils import AttentionInterface

    AttentionInterface.register(ATTN_NAME, sparse_kv_attention)
    AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)


def enable(model: nn.Module) -> Any:
    """Check ``model`` is a supported family and switch its attention to ``"sparsecraft_kv"``
    (SDPA for every other cache). Returns the model's config."""
    from sparsecraft.kv.cache import check_family

    config = getattr(model, "config", None)
    if config is None:
        raise SparsecraftError(f"SparseKVCache(model=...) needs a transformers model with a config, "
                               f"got {type(model).__name__}")
    check_family(config)
    register()
    if getattr(config, "_attn_implementation", None) != ATTN_NAME:
        if hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation(ATTN_NAME)
        if config._attn_implementation != ATTN_NAME:
            config._attn_implementation = ATTN_NAME
    return config


def additive_mask(attention_mask: torch.Tensor | None, n_q: int, total: int, batch: int,
                  device: torch.device) -> torch.Tensor:
    """Float mask ``[B or 1, 1, n_q, total]`` (0 = attend, -inf = not): from HF's bool/float mask
    or, when it is None (plain causal), query i at position ``total - n_q + i`` sees keys <= it."""
    if attention_mask is None:
        q_pos = torch.arange(total - n_q, total, device=device)[:, None]
        allowed = torch.arange(total, device=device)[None, :] <= q_pos
    elif attention_mask.dtype == torch.bool:
        allowed = attention_mask
    else:
        return attention_mask.float()
    zero = torch.zeros((), device=device)
    out = torch.where(allowed, zero, torch.tensor(float("-inf"), device=device))
    return out.reshape(-1, 1, n_q, total) if out.dim() != 4 else out


def exact_attention(query: torch.Tensor, kp: torch.Tensor, vp: torch.Tensor, kd: torch.Tensor,
                    vd: torch.Tensor, c0: int, window: int, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention of ``query [B, Hq, L, D]`` (the last L of T positions) over pruned tokens
    ``[0, c1)`` (``kp``/``vp``) and dense tokens ``[c0, T)`` (``kd``/``vd``), picking per (t, j) the
    version the rule prescribes. ``mask``: additive ``[B|1, 1, L, T]``. Returns ``[B, L, Hq, D]``."""
    b, hq, n_q, d = query.shape
    hkv, c1_all, total = kd.shape[1], kp.shape[2], c0 + kd.shape[2]
    g = hq // hkv
    kp, vp, kd, vd = kp.float(), vp.float(), kd.float(), vd.float()
    outs = []
    for i0 in range(0, n_q, QUERY_CHUNK):
        i1 = min(n_q, i0 + QUERY_CHUNK)
        lc = i1 - i0
        m = mask[:, :, i0:i1]
        # keys after the chunk's last visible one carry no weight (causal prefill: about half): skip them
        seen = (m > float("-inf")).flatten(0, 2).any(0).nonzero()
        end = min(total, max(c0 + 1, int(seen[-1]) + 1 if seen.numel() else c0 + 1))
        c1 = min(c1_all, end)
        q = query[:, :, i0:i1].float().reshape(b, hkv, g * lc, d)
        t = torch.arange(total - n_q + i0, total - n_q + i1, device=query.device)[:, None]
        j = torch.arange(c0, c1, device=query.device)[None, :]
        dense_mid = (t - j) < window  # [lc, c1 - c0]: middle tokens still dense for this query
        sp = (q @ kp[:, :, :c1].transpose(-1, -2)).reshape(b, hkv, g, lc, c1)
        sd = (q @ kd[:, :, : end - c0].transpose(-1, -2)).reshape(b, hkv, g, lc, end - c0)
        s = torch.cat([sp[..., :c0], torch.where(dense_mid, sd[..., : c1 - c0], sp[..., c0:c1]),
                       sd[..., c1 - c0 :]], dim=-1)
        s = s * scale + m[..., :end].unsqueeze(2)
        a = torch.softmax(s, dim=-1).nan_to_num(0.0)  # fully masked (padding) rows -> 0
        a_p = torch.cat([a[..., :c0], a[..., c0:c1] * ~dense_mid], dim=-1)
        a_d = torch.cat([a[..., c0:c1] * dense_mid, a[..., c1:]], dim=-1)
        o = (a_p.reshape(b, hkv, g * lc, c1) @ vp[:, :, :c1]
             + a_d.reshape(b, hkv, g * lc, end - c0) @ vd[:, :, : end - c0])
        outs.append(o.reshape(b, hq, lc, d))
    return torch.cat(outs, dim=2).transpose(1, 2).to(query.dtype).contiguous()


def kernel_decode(query: torch.Tensor, layer: Any, mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    """One query per row through the C++ kernel: ``[B, Hq, 1, D]`` -> ``[B, 1, Hq, D]``."""
    from sparsecraft.kernels.extension import ops

    add = None
    if mask is not None:
        add = mask.reshape(mask.shape[0], -1)[:, : layer.length].float()
        add = add.expand(query.shape[0], -1).contiguous()
    out = ops().kv_decode_attention(query[:, :, 0].float().contiguous(), layer.kbits, layer.kvals, layer.vbits,
                                    layer.vvals, layer.n_comp, layer.keys, layer.values, add, float(scale))
    return out.unsqueeze(1).to(query.dtype)


def sparse_kv_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, scaling: float | None = None,
                        dropout: float = 0.0, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers attention-interface function (see the module docstring)."""
    view = getattr(key, "_sparsecraft_kv", None)
    if view is None:
        return _sdpa(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    if dropout and module.training:
        raise SparsecraftError("SparseKVCache is an inference cache: attention dropout is not supported")
    layer = view.layer
    scale = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
    n_q, total = query.shape[2], view.total
    mask = None if attention_mask is None else additive_mask(attention_mask, n_q, total, query.shape[0],
                                                             query.device)
    if n_q == 1 and layer.cpp and layer.n_comp == view.c1:
        return kernel_decode(query, layer, mask, scale), None
    if mask is None:
        mask = additive_mask(None, n_q, total, query.shape[0], query.device)
    kp, vp = view.pruned()
    out = exact_attention(query, kp, vp, key, value, view.c0, layer.window, mask, scale)
    return out, None
