"""Greedy answering and exact-match accuracy."""

from __future__ import annotations

import types

import torch

from sparsecraft.data.long_context import Sample
from sparsecraft.evaluation.long_context import accuracy, greedy_continue, prefill
from tests.kv.helpers import tiny_llama


def test_greedy_continue_equals_generate():
    model = tiny_llama(seed=2)
    ids = torch.randint(0, 64, (15,), generator=torch.Generator().manual_seed(0))
    logits, cache = prefill(model, ids)
    toks = greedy_continue(model, logits, cache, 6)
    with torch.no_grad():
        ref = model.generate(ids.view(1, -1), max_new_tokens=6, do_sample=False)[0, 15:]
    assert toks == ref.tolist()


class Parrot(torch.nn.Module):
    """Emits the characters of ``script`` one per step (logits one-hot), whatever the input."""

    def __init__(self, script: str) -> None:
        super().__init__()
        self.script, self.i = script, 0

    def forward(self, ids, cache=None, use_cache=True):
        logits = torch.zeros(1, ids.shape[1], 128)
        logits[0, -1, ord(self.script[self.i % len(self.script)])] = 1.0
        self.i += 1
        return types.SimpleNamespace(logits=logits, cache=cache)


class Chars:
    eos_token_id = None

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


def test_accuracy_counts_exact_matches_per_task_and_depth():
    samples = [Sample("needle", torch.zeros(4, dtype=torch.long), ["12345"], 0.5, {"max_new_tokens": 6}),
               Sample("needle", torch.zeros(4, dtype=torch.long), ["99999"], 0.9, {"max_new_tokens": 6})]
    res = accuracy(Parrot(" 12345"), Chars(), samples)
    assert res["answers"] == [" 12345", " 12345"]
    assert res["accuracy"] == 0.5 and res["tasks"] == {"needle": 0.5} and res["depths"] == {0.5: 1.0, 0.9: 0.0}
