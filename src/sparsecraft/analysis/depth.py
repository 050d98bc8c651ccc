"""Depth utilisation: how much each block of a transformer contributes ("When Does Sparsity
Mitigate the Curse of Depth in LLMs", arXiv 2025; the curse of depth: Sun et al., 2025).

Two measurements, for any model whose block stack :func:`~sparsecraft.oneshot.blockwise.find_blocks`
finds (Llama/Mistral/Qwen2, OPT, GPT-2, BERT):

* **output variance** -- the variance of the residual stream after every block, over all tokens
  and features of the given windows (``Var(h_l) = E[h^2] - E[h]^2``, float64 sums), and its growth
  ``Var(h_l) / Var(h_{l-1})`` (``h_{-1}`` = the block stack's input). Under Pre-LayerNorm the variance
  grows with depth, which pushes deep blocks towards the identity.
* **layer effectiveness** -- the perplexity with one block skipped (its output replaced by its
  input), for every block: ``effectiveness_l = ppl_without_l / ppl - 1``. A block whose removal
  costs nothing is not being used.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from sparsecraft.evaluation.perplexity import perplexity
from sparsecraft.oneshot.blockwise import find_blocks


@dataclass
class DepthReport:
    """Per-block variance, its growth and the perplexity change when the block is skipped."""

    input_variance: float
    variance: list[float]
    growth: list[float]
    ppl: float
    skip_ppl: list[float]
    effectiveness: list[float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Moments:
    def __init__(self) -> None:
        self.n, self.s, self.s2 = 0, 0.0, 0.0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().double()
        self.n += x.numel()
        self.s += float(x.sum())
        self.s2 += float((x * x).sum())

    def variance(self) -> float:
        mean = self.s / self.n
        return self.s2 / self.n - mean * mean


def _hidden(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _block_input(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


@torch.no_grad()
def output_variance(model: nn.Module, windows: torch.Tensor, batch_size: int = 1) -> tuple[float, list[float]]:
    """(variance of the block stack's input, [variance of block l's output for every l])."""
    blocks = list(find_blocks(model).blocks)
    first, outs = _Moments(), [_Moments() for _ in blocks]
    hooks = [blocks[0].register_forward_pre_hook(lambda m, a, k: first.add(_block_input(a, k)), with_kwargs=True)]
    for blk, mom in zip(blocks, outs):
        hooks.append(blk.register_forward_hook(lambda m, a, o, mom=mom: mom.add(_hidden(o))))
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    try:
        for i in range(0, windows.shape[0], batch_size):
            model(windows[i : i + batch_size].to(device), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return first.variance(), [m.variance() for m in outs]


@contextmanager
def skip_block(block: nn.Module) -> Iterator[None]:
    """Inside the block, ``block`` returns its input hidden states unchanged (same output type)."""

    def hook(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
        h = _block_input(args, kwargs)
        return (h, *out[1:]) if isinstance(out, tuple) else h

    handle = block.register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def layer_effectiveness(model: nn.Module, windows: torch.Tensor, batch_size: int = 1,
                        progress: bool = False) -> tuple[float, list[float]]:
    """(perplexity of the full model, [perplexity with block l skipped for every l])."""
    blocks = list(find_blocks(model).blocks)
    base = perplexity(model, windows, batch_size=batch_size, progress=False)
    skipped = []
    for blk in tqdm(blocks, desc="skip block", file=sys.stderr, disable=not progress, leave=False):
        with skip_block(blk):
            skipped.append(perplexity(model, windows, batch_size=batch_size, progress=False))
    return base, skipped


def depth_report(model: nn.Module, windows: torch.Tensor, batch_size: int = 1, progress: bool = False) -> DepthReport:
    """Variance growth and layer effectiveness of ``model`` on token ``windows [n, L]``."""
    v_in, var = output_variance(model, windows, batch_size)
    prev = [v_in, *var[:-1]]
    ppl, skip = layer_effectiveness(model, windows, batch_size, progress)
    return DepthReport(
        input_variance=v_in,
        variance=var,
        growth=[v / p if p > 0 else math.inf for v, p in zip(var, prev)],
        ppl=ppl,
        skip_ppl=skip,
        effectiveness=[s / ppl - 1.0 for s in skip],
    )
