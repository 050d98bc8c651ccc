"""Quantize the token embedding and the LM head (tied or not) by round to nearest.

The embedding of a small language model is a large share of what a token reads: SmolLM2-135M's
tied embedding / LM head is 28M of its 135M weights, read whole by the head at every decoded
token. llama.cpp keeps it in Q8_0 (8-bit, blocks of 32). Here it gets the same group grid as the
linear layers (:mod:`sparsecraft.quant.grid`, round to nearest: a lookup table / output matrix
has no calibration Hessian worth the cost), ``bits`` 8 or 4, groups along the hidden size.
A tied weight is one tensor: quantized once, its buffers live on the embedding module.
"""

from __future__ import annotations

import torch
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.quant.grid import QuantSpec, rtn
from sparsecraft.quant.state import QuantState, get_quant, set_quant


def embedding_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The input embedding and the output head of a Hugging Face model (those that exist)."""
    out = []
    get_in = getattr(model, "get_input_embeddings", None)
    get_out = getattr(model, "get_output_embeddings", None)
    emb = get_in() if callable(get_in) else None
    head = get_out() if callable(get_out) else None
    names = {id(m): n for n, m in model.named_modules()}
    for m in (emb, head):
        if m is not None and isinstance(getattr(m, "weight", None), torch.Tensor) and id(m) in names:
            out.append((names[id(m)], m))
    return out


@torch.no_grad()
def quantize_embeddings(model: nn.Module, spec: QuantSpec, bits: int) -> list[str]:
    """Round-to-nearest quantize the embedding and the (tied or own) LM head weight in place;
    returns the names of the weights quantized. A tied weight is handled once."""
    done: list[str] = []
    seen: set[int] = set()
    for name, module in embedding_modules(model):
        w = module.weight
        if id(w) in seen or get_quant(module) is not None:
            continue
        seen.add(id(w))
        if w.dim() != 2:
            raise SparsecraftError(f"layer {name!r}: cannot quantize a {w.dim()}-D embedding")
        spec.check_layer(w.shape[1], name)
        deq, scale, zero = rtn(w.detach().to(torch.float32), spec, bits)
        w.copy_(deq.to(w.dtype))
        set_quant(module, QuantState(QuantSpec(bits, spec.group, spec.sym), scale, zero))
        done.append(f"{name}.weight")
    return done
