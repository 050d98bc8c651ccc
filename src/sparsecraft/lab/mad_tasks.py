"""The MAD synthetic token-manipulation tasks: seeded generators of (inputs, targets).

Paper: "Mechanistic Design and Scaling of Hybrid Architectures" (Poli et al. 2024, papers.txt),
Sec. 3 and App. B: small "capability unit tests" whose accuracy ranks architectures the way their
compute-optimal perplexity does. The rules follow the paper's reference generators (mad-lab,
``mad/data/instances.py``, benchmark settings with ``multi_query=True``); this is an independent
implementation. Every generator returns :class:`MADData`: ``inputs`` (n, L) token ids and
``targets`` (n, L) with :data:`IGNORE` (-100, the ``ignore_index`` of ``F.cross_entropy``) at every
unscored position; accuracy = argmax hits over the scored positions.

* **in-context recall** -- ``k v k v ...``: keys from ``[0, K)``, values from ``[K, 2K)``
  (``K = (vocab - noise) // 2``), each key bound to one value for the whole sequence; the last pair
  repeats a key seen before. Built as ``seq_len`` tokens and shifted by one (``inputs = seq[:-1]``,
  scored target at a key = the value that follows it, only if the key occurred before in the same
  sequence), so inputs have ``seq_len - 1`` tokens.
* **noisy recall** -- the same with each pair slot replaced, with probability ``frac_noise``, by two
  tokens of a separate noise vocabulary ``[vocab - noise, vocab)`` that are never scored.
* **fuzzy recall** -- keys are 1..``k_motif`` distinct key tokens, values 1..``v_motif`` distinct
  value tokens (motif sizes drawn per pair; held-out keys always have ``k_motif`` tokens); a probe
  pair sits at a random pair slot and is repeated at the end; every value token of a key seen before
  is scored. Left-padded with ``vocab - 1`` to ``seq_len + 1`` tokens, then shifted (``seq_len`` inputs).
* **selective copying** -- ``n_copy`` data tokens from ``[0, vocab - 2)`` with ``seq_len - 2 n_copy - 1``
  blanks (``vocab - 2``) scattered among them (each blank goes right before a uniformly drawn data
  token), then the copy token ``vocab - 1`` and ``n_copy`` blanks whose targets are the data tokens
  in order.
* **compression** -- ``seq_len - 1`` random tokens from ``[0, vocab - 1)`` and the compression token
  ``vocab - 1``; the target is the sequence itself (a model must rebuild it from the last position;
  MAD also scores the constant compression token, here it is not scored).
* **memorisation** -- a key -> value map fixed across all sequences (seeded by ``map_seed``; keys
  ``[0, K)``, values ``[K, 2K)``, ``K = (vocab - 1) // 2``, both shuffled and zipped); sequences are
  ``k I k I ...`` with the insert token ``I = vocab - 1`` and the target at ``I`` = the map's value of
  the key before it: facts that can only be stored in the weights.

Departures from mad-lab (so that every rule holds): the probe pair of fuzzy recall is always placed
in the body (mad-lab can miss it and then scores an unseen value); selective copying draws its blank
positions from the seeded generator (mad-lab uses the global one); noise is implemented for the
recall tasks only (MAD's benchmark uses it there only).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch

from sparsecraft.errors import SparsecraftError
from sparsecraft.lab.base import check_float, check_int

IGNORE = -100


class MADData(NamedTuple):
    """``inputs`` (n, L) long token ids and ``targets`` (n, L) long, :data:`IGNORE` where unscored."""

    inputs: torch.Tensor
    targets: torch.Tensor


def _stack(rows: list[tuple[list[int], list[int]]]) -> MADData:
    return MADData(torch.tensor([r[0] for r in rows], dtype=torch.long),
                   torch.tensor([r[1] for r in rows], dtype=torch.long))


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise SparsecraftError(message)


def in_context_recall(n: int, *, vocab_size: int = 16, seq_len: int = 32, seed: int = 0,
                      noise_vocab_size: int = 0, frac_noise: float = 0.0) -> MADData:
    """Multi-query associative recall (see the module docstring); inputs have ``seq_len - 1`` tokens."""
    check_int("n", n, 1)
    check_int("vocab_size", vocab_size, 1)
    check_int("noise_vocab_size", noise_vocab_size, 0)
    check_float("frac_noise", frac_noise, 0.0, 0.95)
    n_words = vocab_size - noise_vocab_size
    _need(n_words >= 2, f"in-context recall needs vocab_size - noise_vocab_size >= 2 (one key and one value "
                        f"token), got {vocab_size} - {noise_vocab_size}")
    _need(frac_noise == 0 or noise_vocab_size > 0, "frac_noise > 0 needs noise_vocab_size >= 1")
    _need(check_int("seq_len", seq_len, 1) >= 4 and seq_len % 2 == 0,
          f"in-context recall needs an even seq_len >= 4 (a pair and the query pair), got {seq_len}")
    n_keys = n_words // 2
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        pairs = seq_len // 2
        clean = int(rng.integers(pairs - 1))  # one body slot is always a real pair
        binding: dict[int, int] = {}
        seq, tgt = [], []
        for i in range(pairs - 1):
            if frac_noise > 0 and i != clean and rng.random() < frac_noise:
                seq += [n_words + int(t) for t in rng.integers(noise_vocab_size, size=2)]
                tgt += [IGNORE, IGNORE]
                continue
            k = int(rng.integers(n_keys))
            seen = k in binding
            v = binding.setdefault(k, n_keys + int(rng.integers(n_words - n_keys)))
            seq += [k, v]
            tgt += [IGNORE, v if seen else IGNORE]
        k = sorted(binding)[int(rng.integers(len(binding)))]
        seq += [k, binding[k]]
        tgt += [IGNORE, binding[k]]
        rows.append((seq[:-1], tgt[1:]))
    return _stack(rows)


def noisy_recall(n: int, *, vocab_size: int = 24, seq_len: int = 32, seed: int = 0, noise_vocab_size: int = 8,
                 frac_noise: float = 0.2) -> MADData:
    """In-context recall with noise pairs (MAD's noisy in-context recall)."""
    return in_context_recall(n, vocab_size=vocab_size, seq_len=seq_len, seed=seed,
                             noise_vocab_size=noise_vocab_size, frac_noise=frac_noise)


def fuzzy_recall(n: int, *, vocab_size: int = 16, seq_len: int = 48, seed: int = 0, k_motif: int = 2,
                 v_motif: int = 2, held_out: bool = False) -> MADData:
    """Recall with multi-token keys and values (see the module docstring); ``held_out`` = MAD's
    test instances (every key has ``k_motif`` tokens)."""
    check_int("n", n, 1)
    check_int("k_motif", k_motif, 1)
    check_int("v_motif", v_motif, 1)
    n_words = check_int("vocab_size", vocab_size, 1) - 1  # the last token pads
    n_keys = n_words // 2
    _need(n_keys >= k_motif and n_words - n_keys >= v_motif,
          f"fuzzy recall needs (vocab_size - 1) // 2 >= k_motif and the rest >= v_motif (motifs use distinct "
          f"tokens), got vocab_size={vocab_size}, k_motif={k_motif}, v_motif={v_motif}")
    longest = k_motif + v_motif
    _need(check_int("seq_len", seq_len, 1) >= 3 * longest,
          f"fuzzy recall needs seq_len >= 3 * (k_motif + v_motif) = {3 * longest} (a body pair, the probe "
          f"and its query), got {seq_len}")
    rng = np.random.default_rng(seed)

    def motif(low: int, high: int, size: int) -> tuple[int, ...]:
        return tuple(low + int(t) for t in rng.choice(high - low, size=size, replace=False))

    def sizes() -> tuple[int, int]:
        ks = k_motif if held_out else 1 + int(rng.integers(k_motif))
        return ks, 1 + int(rng.integers(v_motif))

    rows = []
    for _ in range(n):
        pk, pv = sizes()
        probe = (motif(0, n_keys, pk), motif(n_keys, n_words, pv))
        binding = {probe[0]: probe[1]}
        units: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        used, room = 0, seq_len - 2 * (pk + pv)  # the body (probe included once) plus the final query fit
        while True:
            ks, vs = sizes()
            k = motif(0, n_keys, ks)
            v = binding.get(k) or motif(n_keys, n_words, vs)  # a key keeps its value in a sequence
            if used + len(k) + len(v) > room:
                break
            units.append((k, binding.setdefault(k, v)))
            used += len(k) + len(v)
        units.insert(int(rng.integers(len(units) + 1)), probe)
        seq, tgt, seen = [], [], set()
        for k, v in [*units, probe]:
            seq += [*k, *v]
            tgt += [IGNORE] * len(k) + (list(v) if k in seen else [IGNORE] * len(v))
            seen.add(k)
        pad = seq_len + 1 - len(seq)
        seq, tgt = [n_words] * pad + seq, [IGNORE] * pad + tgt
        rows.append((seq[:-1], tgt[1:]))
    return _stack(rows)


def selective_copying(n: int, *, vocab_size: int = 16, seq_len: int = 32, seed: int = 0, n_copy: int = 4) -> MADData:
    """Copy the ``n_copy`` data tokens scattered among blanks, in order, after the copy token."""
    check_int("n", n, 1)
    _need(check_int("vocab_size", vocab_size, 1) >= 3,
          f"selective copying needs vocab_size >= 3 (data, blank and copy tokens), got {vocab_size}")
    check_int("n_copy", n_copy, 1)
    _need(check_int("seq_len", seq_len, 1) > 2 * n_copy + 1,
          f"selective copying needs seq_len > 2 * n_copy + 1 = {2 * n_copy + 1}, got {seq_len}")
    blank, copy = vocab_size - 2, vocab_size - 1
    n_blank = seq_len - 2 * n_copy - 1
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        data = [int(t) for t in rng.integers(vocab_size - 2, size=n_copy)]
        before = np.bincount(rng.integers(n_copy, size=n_blank), minlength=n_copy)
        seq = [t for d, b in zip(data, before) for t in [blank] * int(b) + [d]] + [copy] + [blank] * n_copy
        rows.append((seq, [IGNORE] * (seq_len - n_copy) + data))
    return _stack(rows)


def compression(n: int, *, vocab_size: int = 16, seq_len: int = 12, seed: int = 0) -> MADData:
    """Random tokens then the compression token; the targets are the tokens themselves."""
    check_int("n", n, 1)
    _need(check_int("vocab_size", vocab_size, 1) >= 2,
          f"compression needs vocab_size >= 2 (data and compression tokens), got {vocab_size}")
    _need(check_int("seq_len", seq_len, 1) >= 2, f"compression needs seq_len >= 2, got {seq_len}")
    rng = np.random.default_rng(seed)
    data = rng.integers(vocab_size - 1, size=(n, seq_len - 1))
    inputs = torch.from_numpy(np.concatenate([data, np.full((n, 1), vocab_size - 1)], 1)).long()
    targets = inputs.clone()
    targets[:, -1] = IGNORE
    return MADData(inputs, targets)


def memorisation_map(vocab_size: int, map_seed: int = 12345) -> dict[int, int]:
    """The fixed key -> value map of memorisation: keys ``[0, K)``, values ``[K, 2K)``,
    ``K = (vocab_size - 1) // 2``, each list shuffled by ``map_seed``, then zipped."""
    n_keys = (vocab_size - 1) // 2
    rng = np.random.default_rng(map_seed)
    keys = rng.permutation(n_keys)
    values = n_keys + rng.permutation(vocab_size - 1 - n_keys)
    return {int(k): int(v) for k, v in zip(keys, values)}


def memorisation(n: int, *, vocab_size: int = 64, seq_len: int = 16, seed: int = 0,
                 map_seed: int = 12345) -> MADData:
    """``k I k I ...`` with the value of each key (a map fixed by ``map_seed``) scored at ``I``."""
    check_int("n", n, 1)
    _need(check_int("vocab_size", vocab_size, 1) >= 3,
          f"memorisation needs vocab_size >= 3 (a key, a value and the insert token), got {vocab_size}")
    _need(check_int("seq_len", seq_len, 1) >= 2 and seq_len % 2 == 0,
          f"memorisation needs an even seq_len >= 2, got {seq_len}")
    table = memorisation_map(vocab_size, map_seed)
    keys = sorted(table)
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        ks = [keys[int(i)] for i in rng.integers(len(keys), size=seq_len // 2)]
        rows.append(([t for k in ks for t in (k, vocab_size - 1)], [t for k in ks for t in (IGNORE, table[k])]))
    return _stack(rows)


#: task name -> generator ``fn(n, seed=..., **options) -> MADData``
TASKS: dict[str, Callable[..., MADData]] = {
    "in-context-recall": in_context_recall,
    "fuzzy-recall": fuzzy_recall,
    "noisy-recall": noisy_recall,
    "selective-copying": selective_copying,
    "compression": compression,
    "memorisation": memorisation,
}


def generate(task: str, n: int, seed: int, **options: Any) -> MADData:
    """``TASKS[task](n, seed=seed, **options)`` with one-line errors for an unknown task or option."""
    if task not in TASKS:
        raise SparsecraftError(f"unknown MAD task {task!r}; allowed: {', '.join(TASKS)}")
    try:
        return TASKS[task](n, seed=seed, **options)
    except TypeError as e:
        raise SparsecraftError(f"bad options for MAD task {task!r}: {e}") from None


def scored_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of the scored positions (``targets != IGNORE``) where ``argmax(logits)`` is the target."""
    scored = targets != IGNORE
    return float((logits.argmax(-1)[scored] == targets[scored]).float().mean()) if bool(scored.any()) else 0.0
