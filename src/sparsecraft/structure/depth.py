"""Depth pruning: score the blocks of a transformer on calibration data and remove whole blocks.

Block importance is ShortGPT's *Block Influence* (Men et al. 2024, "ShortGPT: Layers in Large
Language Models are More Redundant Than You Expect", Eq. 1):

    BI_l = 1 - E_t [ x_l,t . x_l+1,t / (||x_l,t|| ||x_l+1,t||) ]

the mean over calibration tokens of one minus the cosine similarity of a block's input and output
hidden states, measured on the dense model in one forward pass per batch. The blocks with the
lowest BI change their input least and go first. Removing a block deletes it from the block list,
renumbers the ``layer_idx`` attributes of the blocks after it (the KV cache indexes layers by
them) and shortens the config (``num_hidden_layers`` and every per-layer list such as
``layer_types``), so ``from_pretrained`` loads the shorter model directly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.oneshot.blockwise import BlockStack, find_blocks, model_inputs


@torch.no_grad()
def block_influence(model: nn.Module, batches: Iterable[Any], stack: BlockStack | None = None) -> list[float]:
    """BI of every block (see the module docstring) over the calibration ``batches``."""
    stack = stack or find_blocks(model)
    sums = [0.0] * len(stack.blocks)
    counts = [0] * len(stack.blocks)

    def hook(i: int):
        def fn(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            x = args[0] if args else kwargs["hidden_states"]
            y = out[0] if isinstance(out, (tuple, list)) else out
            cos = torch.nn.functional.cosine_similarity(x.float().flatten(0, -2), y.float().flatten(0, -2), dim=-1)
            sums[i] += float(cos.sum())
            counts[i] += cos.numel()
        return fn

    handles = [b.register_forward_hook(hook(i), with_kwargs=True) for i, b in enumerate(stack.blocks)]
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            model(**model_inputs(model, batch))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if not any(counts):
        raise SparsecraftError("block importance needs calibration data: no batch reached the blocks")
    return [1.0 - s / c for s, c in zip(sums, counts)]


def remove_blocks(model: nn.Module, indices: Sequence[int], stack: BlockStack | None = None) -> list[int]:
    """Delete the blocks at ``indices``; returns the kept original indices."""
    stack = stack or find_blocks(model)
    n = len(stack.blocks)
    drop = sorted({int(i) for i in indices})
    bad = [i for i in drop if not 0 <= i < n]
    if bad or any(isinstance(i, bool) or int(i) != i for i in indices):
        raise SparsecraftError(f"block indices {bad or list(indices)} are out of range for the {n} blocks of "
                               f"{stack.prefix}")
    if len(drop) >= n:
        raise SparsecraftError(f"removing {len(drop)} of the {n} blocks of {stack.prefix} would leave none; "
                               "keep at least one")
    keep = [i for i in range(n) if i not in drop]
    for i in reversed(drop):
        del stack.blocks[i]
    for new, block in enumerate(stack.blocks):
        for sub in block.modules():
            if isinstance(getattr(sub, "layer_idx", None), int):
                sub.layer_idx = new
    cfg = getattr(model, "config", None)
    if cfg is not None:
        for attr in ("num_hidden_layers", "n_layer", "num_layers"):
            if getattr(cfg, attr, None) == n:
                setattr(cfg, attr, len(keep))
        for attr, value in list(vars(cfg).items()):
            if isinstance(value, list) and len(value) == n and "layer" in attr and not attr.startswith("_"):
                setattr(cfg, attr, [value[i] for i in keep])
    return keep
