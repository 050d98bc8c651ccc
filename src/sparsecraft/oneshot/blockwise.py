"""The calibration runner: walk a transformer stack block by block (the sequential protocol).

SparseGPT (Frantar & Alistarh 2023) and Wanda (Sun et al. 2024) prune one block at a time:
collect the inputs of every Linear of block ``l`` from the calibration data, prune the block,
re-run the *pruned* block on the same inputs and feed its outputs to block ``l + 1``. Only one
block's inputs (n_samples x seq_len x hidden) are held at a time, plus that block's statistics.

Block discovery is generic: the stack is the ``nn.ModuleList`` at one of the known paths
(``model.layers`` for Llama / Mistral / Qwen2, ``decoder.layers`` for OPT, ``transformer.h``
for GPT-2, ``encoder.layer`` for BERT; a ``model.``/``bert.`` prefix is looked through), or
else the longest ModuleList of identical blocks. Block inputs and the keyword arguments the
model passes to its blocks (attention mask, rotary position embeddings, position ids, ...)
are captured by a forward pre-hook on the first block that stops the forward pass.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.targets import Target, find_targets

BLOCK_PATHS = ("model.layers", "model.decoder.layers", "decoder.layers", "layers",
               "transformer.h", "h", "bert.encoder.layer", "encoder.layer", "roberta.encoder.layer")


@dataclass
class BlockStack:
    """The repeated blocks of a model and the dotted name of their ModuleList."""

    prefix: str
    blocks: nn.ModuleList

    def block_name(self, i: int) -> str:
        return f"{self.prefix}.{i}" if self.prefix else str(i)


def find_blocks(model: nn.Module) -> BlockStack:
    """The block stack of a Llama/Mistral/Qwen2, OPT, GPT-2 or BERT-style model."""
    modules = dict(model.named_modules())
    for path in BLOCK_PATHS:
        mod = modules.get(path)
        if isinstance(mod, nn.ModuleList) and len(mod) > 0:
            return BlockStack(path, mod)
    best: tuple[str, nn.ModuleList] | None = None
    for name, mod in modules.items():
        if isinstance(mod, nn.ModuleList) and len(mod) > 1:
            if len({type(m) for m in mod}) == 1 and (best is None or len(mod) > len(best[1])):
                best = (name, mod)
    if best is None:
        raise SparsecraftError(
            f"cannot find the block stack of {type(model).__name__}: no ModuleList at "
            f"{', '.join(BLOCK_PATHS)} and no list of identical blocks"
        )
    return BlockStack(*best)


def block_targets(
    model: nn.Module,
    stack: BlockStack,
    targets: Sequence[str] | None = None,
    ignore: Sequence[str] | None = None,
) -> list[list[Target]]:
    """Per block, the prunable weights inside it that match ``targets`` (regexes; default all)
    and not ``ignore``. A target regex that selects a weight outside the blocks is an error
    (calibrated methods only see the blocks' inputs)."""
    include = list(targets) if targets else [rf"^{re.escape(stack.prefix)}\.\d+\."]
    found = find_targets(model, targets=include, ignore=ignore)
    per_block: list[list[Target]] = [[] for _ in stack.blocks]
    rx = re.compile(rf"^{re.escape(stack.prefix)}\.(\d+)\." if stack.prefix else r"^(\d+)\.")
    outside = []
    for t in found:
        m = rx.match(t.name)
        if m is None:
            outside.append(t.name)
        else:
            per_block[int(m.group(1))].append(t)
    if outside:
        raise SparsecraftError(
            f"targets outside the block stack {stack.prefix!r}: {', '.join(outside[:4])}; "
            "one-shot pruning works on the blocks' Linear layers (add them to ignore)"
        )
    if not any(per_block):
        raise SparsecraftError(f"no prunable Linear matches targets={include} in {stack.prefix!r}")
    return per_block


class _Stop(Exception):
    """Raised by the capture hook to end the forward pass at the first block."""


@dataclass
class BlockInput:
    """One calibration batch as the blocks see it: hidden states + the other arguments."""

    hidden: torch.Tensor
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


def model_inputs(model: nn.Module, batch: Any) -> dict[str, Any]:
    """Keyword inputs of one calibration batch (token ids or a dict), on the model's device."""
    kw = dict(batch) if isinstance(batch, dict) else {"input_ids": batch}
    device = next(model.parameters()).device
    kw = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
    if getattr(getattr(model, "config", None), "use_cache", None) is not None:
        kw.setdefault("use_cache", False)
    return kw


@torch.no_grad()
def capture_inputs(model: nn.Module, stack: BlockStack, batches: Iterable[Any]) -> list[BlockInput]:
    """The first block's inputs for every calibration batch (a pre-hook stops each forward)."""
    store: list[BlockInput] = []

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        kwargs = dict(kwargs)
        if args:
            hidden, rest = args[0], tuple(args[1:])
        else:
            hidden, rest = kwargs.pop("hidden_states"), ()
        kwargs.pop("cache", None)
        kwargs.pop("past_key_values", None)
        kwargs.pop("past_key_value", None)
        store.append(BlockInput(hidden.detach(), rest, kwargs))
        raise _Stop

    handle = stack.blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in batches:
            try:
                model(**model_inputs(model, batch))
            except _Stop:
                pass
    finally:
        handle.remove()
    if not store:
        raise SparsecraftError("no calibration batch reached the first block (empty calibration data?)")
    return store


def block_forward(block: nn.Module, inp: BlockInput, hidden: torch.Tensor | None = None) -> torch.Tensor:
    """Run ``block`` on one captured batch and return its output hidden states."""
    out = block(inp.hidden if hidden is None else hidden, *inp.args, **inp.kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


BlockFn = Callable[[int, nn.Module, list[BlockInput]], None]


@torch.no_grad()
def run_sequential(
    model: nn.Module,
    stack: BlockStack,
    batches: Iterable[Any],
    per_block: BlockFn,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> None:
    """For every block ``l``: ``per_block(l, block, inputs)`` (collect statistics, prune, ...),
    then recompute the block's outputs with its (now pruned) weights and make them the inputs
    of block ``l + 1``."""
    was_training = model.training
    model.eval()
    inputs = capture_inputs(model, stack, batches)
    indices: Iterable[int] = range(len(stack.blocks))
    if progress is not None:
        indices = progress(indices)
    try:
        for i in indices:
            block = stack.blocks[i]
            per_block(i, block, inputs)
            for inp in inputs:
                inp.hidden = block_forward(block, inp)
    finally:
        model.train(was_training)


def batched(windows: torch.Tensor | Sequence[Any], batch_size: int) -> list[Any]:
    """Split an (n, seq_len) id tensor into batches; lists of batches pass through."""
    if isinstance(windows, torch.Tensor):
        if windows.dim() == 1:
            windows = windows[None]
        return [windows[i : i + batch_size] for i in range(0, len(windows), batch_size)]
    return list(windows)
