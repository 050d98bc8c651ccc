"""Exact-match accuracy of a causal LM on long-context samples (:mod:`sparsecraft.data.long_context`).

Each sample is prefilled in one forward, then answered by greedy decoding one token at a time with
the same cache, which lets a caller swap the cache (a sparse KV cache) or the attention of either
phase (sparse prefill vs sparse decode, :mod:`sparsecraft.attention`).
"""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from sparsecraft.data.long_context import Sample, score


@torch.no_grad()
def prefill(model: nn.Module, ids: torch.Tensor, cache: Any = None) -> tuple[torch.Tensor, Any]:
    """(logits of the last position [1, V], the filled cache) for the 1-D prompt ``ids``."""
    kw: dict[str, Any] = {"use_cache": True}
    if cache is not None:
        kw["cache"] = cache
    out = model(ids.view(1, -1), **kw)
    return out.logits[:, -1], out.cache


@torch.no_grad()
def greedy_continue(model: nn.Module, logits: torch.Tensor, cache: Any, n: int,
                    stop_ids: Sequence[int] = ()) -> list[int]:
    """``n`` greedy tokens from the last ``logits`` and the filled ``cache`` (stops at a stop id)."""
    out: list[int] = []
    for _ in range(n):
        tok = int(logits.argmax(-1))
        out.append(tok)
        if tok in stop_ids or len(out) == n:
            break
        res = model(torch.tensor([[tok]]), cache=cache, use_cache=True)
        logits, cache = res.logits[:, -1], res.cache
    return out


def answer(model: nn.Module, tokenizer: Any, sample: Sample, cache: Any = None,
           decode_hook: Callable[[], Any] | None = None) -> str:
    """The greedy answer text of ``model`` to ``sample``; ``decode_hook`` (a context-manager
    factory) wraps the decoding phase only."""
    logits, cache = prefill(model, sample.ids, cache)
    stops = [i for i in (tokenizer.eos_token_id,) if i is not None]
    if decode_hook is None:
        toks = greedy_continue(model, logits, cache, sample.max_new_tokens, stops)
    else:
        with decode_hook():
            toks = greedy_continue(model, logits, cache, sample.max_new_tokens, stops)
    return tokenizer.decode(toks)


def accuracy(model: nn.Module, tokenizer: Any, samples: Sequence[Sample],
             make_cache: Callable[[], Any] | None = None, progress: bool = False,
             desc: str = "long-context") -> dict[str, Any]:
    """Exact-match accuracy overall, per task and per depth; ``make_cache()`` gives each sample a
    fresh cache (None: the model's default)."""
    per_task: dict[str, list[float]] = defaultdict(list)
    per_depth: dict[float, list[float]] = defaultdict(list)
    answers = []
    for s in tqdm(samples, desc=desc, file=sys.stderr, disable=not progress, leave=False):
        text = answer(model, tokenizer, s, make_cache() if make_cache else None)
        ok = score(s, text)
        per_task[s.task].append(ok)
        per_depth[s.depth].append(ok)
        answers.append(text)
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    return {
        "accuracy": mean([x for v in per_task.values() for x in v]),
        "tasks": {k: mean(v) for k, v in per_task.items()},
        "depths": {k: mean(v) for k, v in sorted(per_depth.items())},
        "answers": answers,
    }
