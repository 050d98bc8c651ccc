"""Offline long-context tasks built from Shakespeare text (no download): needle retrieval,
multi-key retrieval and variable tracking, in the spirit of RULER as used by The Sparse Frontier
(Nawrot et al., 2025, arXiv 2504.17768).

Every sample is a token sequence of exactly ``length`` tokens: a span of the plays (the
*haystack*, cut at line boundaries) with planted lines, followed by a question whose answer is a
short string; the model answers by greedy decoding and :func:`score` checks it by exact match.

* ``needle``: one line ``The magic number for <key> is <5 digits>.`` at relative depth ``depth``;
  question ``What is the magic number for <key>? The magic number for <key> is`` -> the digits.
* ``multikey``: ``n_keys`` such lines with different keys at depths spread around ``depth``; the
  question asks for one of them (the others are distractors).
* ``vartrack``: a chain ``VAR A = 12345.``, ``VAR B = VAR A.``, ... (``hops`` links) spread from
  ``depth`` to the end; question: which variables hold the value -> every name of the chain, in
  order. A one-line worked example precedes the text (as RULER's template does).

Samples are reproducible from ``seed``: the haystack offset, keys, values and names come from
``random.Random(seed)``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from sparsecraft.errors import SparsecraftError

TASKS = ("needle", "multikey", "vartrack")
KEYS = ("amber", "badger", "cobalt", "dolphin", "ember", "falcon", "garnet", "harbor", "indigo", "juniper",
        "kestrel", "lantern", "meadow", "nickel", "orchid", "pepper", "quartz", "raven", "saffron", "thistle",
        "umber", "violet", "walnut", "willow", "yarrow", "zephyr", "copper", "heron", "maple", "otter")
NAMES = ("QXT", "BRV", "KLM", "ZPW", "HJD", "WQN", "FTR", "MXC", "PLG", "SDV", "NRK", "YGB", "CVX", "TJM")


@dataclass
class Sample:
    """One long-context prompt: ``ids`` (1-D, ``length`` tokens) and the expected answer(s)."""

    task: str
    ids: torch.Tensor
    answers: list[str]
    depth: float
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def max_new_tokens(self) -> int:
        return int(self.meta.get("max_new_tokens", 8))


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


class Haystack:
    """Shakespeare lines, tokenized once; spans of whole lines with a given token count."""

    def __init__(self, tokenizer: Any, source: str = "shakespeare", max_lines: int = 40000) -> None:
        from sparsecraft.data.text import load_text

        lines = [ln.strip() for ln in load_text(source).splitlines()]
        lines = [ln for ln in lines if ln and not ln.isupper() and len(ln) > 3][:max_lines]
        self.tokenizer = tokenizer
        self.lines = [_encode(tokenizer, "\n" + ln) for ln in lines]

    def span(self, n_tokens: int, rng: random.Random) -> list[list[int]]:
        """Consecutive lines from a random start whose total is at most ``n_tokens`` (the caller
        pads the rest with the next line's tokens cut to fit)."""
        start = rng.randrange(0, max(1, len(self.lines) - 5000))
        out, total, i = [], 0, start
        while total < n_tokens:
            line = self.lines[i % len(self.lines)]
            out.append(line[: n_tokens - total])
            total += len(out[-1])
            i += 1
        return out


def _place(hay: list[list[int]], inserts: Sequence[tuple[float, list[int]]]) -> list[int]:
    """Concatenate the haystack lines with each insert put before the line at its depth."""
    n = len(hay)
    at: dict[int, list[list[int]]] = {}
    for depth, ids in inserts:
        at.setdefault(min(n, int(round(depth * n))), []).append(ids)
    out: list[int] = []
    for i in range(n + 1):
        for ids in at.get(i, []):
            out.extend(ids)
        if i < n:
            out.extend(hay[i])
    return out


def make_sample(task: str, haystack: Haystack, length: int, depth: float, seed: int, n_keys: int = 4,
                hops: int = 3) -> Sample:
    """A ``task`` sample of exactly ``length`` tokens with its planted lines around ``depth``."""
    if task not in TASKS:
        raise SparsecraftError(f"unknown long-context task {task!r}; allowed: {', '.join(TASKS)}")
    if not 0.0 <= depth <= 1.0:
        raise SparsecraftError(f"needle depth must be in [0, 1], got {depth}")
    rng = random.Random(seed)
    enc = lambda s: _encode(haystack.tokenizer, s)  # noqa: E731
    prefix: list[int] = []
    if task in ("needle", "multikey"):
        keys = rng.sample(KEYS, n_keys if task == "multikey" else 1)
        values = [str(rng.randint(10000, 99999)) for _ in keys]
        target = rng.randrange(len(keys))
        spread = [min(1.0, max(0.0, depth + 0.15 * (i - target))) for i in range(len(keys))]
        inserts = [(d, enc(f"\nThe magic number for {k} is {v}.")) for d, k, v in zip(spread, keys, values)]
        question = enc(f"\nWhat is the magic number for {keys[target]}? The magic number for {keys[target]} is")
        answers, meta = [values[target]], {"key": keys[target], "max_new_tokens": 8}
    else:
        names = rng.sample(NAMES, hops + 1)
        value = str(rng.randint(10000, 99999))
        chain = [f"\nVAR {names[0]} = {value}."] + [f"\nVAR {b} = VAR {a}." for a, b in zip(names, names[1:])]
        depths = [depth + (0.95 - depth) * i / max(1, hops) for i in range(hops + 1)]
        inserts = [(d, enc(line)) for d, line in zip(depths, chain)]
        prefix = enc("Example: VAR AAA = 11111. VAR BBB = VAR AAA. Variables with the value 11111: AAA BBB\n")
        question = enc(f"\nVariables with the value {value}:")
        answers, meta = [" ".join(names)], {"names": names, "max_new_tokens": 4 * (hops + 1) + 2}
    fixed = len(prefix) + sum(len(ids) for _, ids in inserts) + len(question)
    if fixed >= length:
        raise SparsecraftError(f"length {length} is too short for a {task} sample ({fixed} fixed tokens)")
    body = _place(haystack.span(length - fixed, rng), inserts)
    ids = torch.tensor(prefix + body + question, dtype=torch.long)
    assert ids.numel() == length, (ids.numel(), length)
    return Sample(task, ids, answers, depth, meta)


def score(sample: Sample, generated: str) -> float:
    """1.0 for an exact match of the answer at the start of the generated text, else 0.0
    (variable tracking: the chain's names in order, separated by spaces)."""
    text = generated.strip()
    if sample.task == "vartrack":
        words = text.replace(",", " ").split()
        names = sample.meta["names"]
        return float(words[: len(names)] == list(names))
    digits = "".join(ch for ch in text.split(".")[0].split()[0] if ch.isdigit()) if text.split() else ""
    return float(digits == sample.answers[0])


def make_tasks(tokenizer: Any, tasks: Sequence[str], length: int, depths: Sequence[float], per_depth: int = 1,
               seed: int = 0, haystack: Haystack | None = None) -> list[Sample]:
    """Samples for every task x depth x repeat, seeds derived from ``seed``."""
    hay = haystack or Haystack(tokenizer)
    out = []
    for ti, task in enumerate(tasks):
        for di, depth in enumerate(depths):
            for r in range(per_depth):
                out.append(make_sample(task, hay, length, depth, seed=seed * 100003 + ti * 1009 + di * 31 + r))
    return out
