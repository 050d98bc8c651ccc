"""MAD task generators: each task's rule checked by an independent walk over the generated tokens."""

import pytest
import torch

from sparsecraft.errors import SparsecraftError
from sparsecraft.lab.mad_tasks import (
    IGNORE,
    TASKS,
    compression,
    fuzzy_recall,
    generate,
    in_context_recall,
    memorisation,
    memorisation_map,
    noisy_recall,
    scored_accuracy,
    selective_copying,
)


def check_recall_rule(inputs: list[int], targets: list[int], n_keys: int, n_words: int) -> int:
    """Pairs ``k v``: a key keeps its value; the scored target at a key is its earlier value, and
    every repeat of a key is scored; noise tokens (>= n_words) never are. Returns the scored count."""
    assert len(inputs) == len(targets) and len(inputs) % 2 == 1
    seq = inputs + [None]  # the shift dropped the last value
    bound: dict[int, int] = {}
    scored = 0
    for t in range(0, len(inputs), 2):
        k, v = seq[t], seq[t + 1]
        if k >= n_words:  # a noise pair: both tokens noise, never scored
            assert v is None or v >= n_words
            assert targets[t] == IGNORE and (t + 1 == len(targets) or targets[t + 1] == IGNORE)
            continue
        assert k < n_keys and (v is None or n_keys <= v < n_words)
        if k in bound:
            assert targets[t] == bound[k]
            assert v is None or v == bound[k]
            scored += 1
        else:
            assert targets[t] == IGNORE
            bound[k] = v
        assert t + 1 == len(targets) or targets[t + 1] == IGNORE
    assert targets[-1] != IGNORE  # the final query is always scored
    return scored


def test_recall_hand_case():
    # keys [0, 4), values [4, 8): the sequence 1 5 2 6 1 5 2 6 minus its last token; the repeated keys
    # 1 (position 4) and 2 (position 6) are scored with the values they had before
    check_recall_rule([1, 5, 2, 6, 1, 5, 2], [IGNORE, IGNORE, IGNORE, IGNORE, 5, IGNORE, 6], n_keys=4, n_words=8)
    data = in_context_recall(50, vocab_size=8, seq_len=8, seed=3)
    assert data.inputs.shape == (50, 7)
    for x, y in zip(data.inputs.tolist(), data.targets.tolist()):
        check_recall_rule(x, y, n_keys=4, n_words=8)
    # the reference walk itself catches a wrong target
    with pytest.raises(AssertionError):
        check_recall_rule([1, 5, 1, 5, 1], [IGNORE, IGNORE, 6, IGNORE, 5], n_keys=4, n_words=8)


def test_recall_rule_on_longer_sequences():
    data = in_context_recall(40, vocab_size=16, seq_len=32, seed=0)
    assert sum(check_recall_rule(x, y, 8, 16) for x, y in zip(data.inputs.tolist(), data.targets.tolist())) > 200


def test_noisy_recall_noise_is_never_scored():
    data = noisy_recall(200, vocab_size=12, seq_len=16, noise_vocab_size=4, frac_noise=0.3, seed=1)
    noise = data.inputs >= 8
    assert not bool((data.targets[noise] != IGNORE).any())
    assert not bool((data.targets[data.targets != IGNORE] >= 8).any())
    pairs = noise[:, 0::2].float().mean()  # noise comes in whole pairs, at about frac_noise of the slots
    assert 0.15 < float(pairs) < 0.35
    for x, y in zip(data.inputs.tolist(), data.targets.tolist()):
        check_recall_rule(x, y, n_keys=4, n_words=8)


def parse_fuzzy(tokens: list[int], n_keys: int, pad: int) -> list[tuple[tuple[int, ...], tuple[int, ...], int]]:
    """Split into (key motif, value motif, start index of the value) by the key / value vocabularies."""
    i = 0
    while tokens[i] == pad:
        i += 1
    units = []
    while i < len(tokens):
        j = i
        while j < len(tokens) and tokens[j] < n_keys:
            j += 1
        m = j
        while m < len(tokens) and tokens[m] >= n_keys:
            m += 1
        units.append((tuple(tokens[i:j]), tuple(tokens[j:m]), j))
        i = m
    return units


@pytest.mark.parametrize("held_out", [False, True])
def test_fuzzy_recall_rule(held_out):
    # vocab 12: pad 11, keys [0, 5), values [5, 11)
    data = fuzzy_recall(60, vocab_size=12, seq_len=24, k_motif=3, v_motif=2, seed=2, held_out=held_out)
    assert data.inputs.shape == (60, 24)
    key_sizes, scored = set(), 0
    for x, y in zip(data.inputs.tolist(), data.targets.tolist()):
        full = x + [None]
        full_t = [IGNORE] + y  # full_t[i] = the score of token i
        units = parse_fuzzy(x, 5, 11)
        bound: dict[tuple[int, ...], tuple[int, ...]] = {}
        for u, (k, v, start) in enumerate(units):
            last = u == len(units) - 1
            assert 1 <= len(k) <= 3 and len(set(k)) == len(k)
            assert (1 <= len(v) <= 2 and len(set(v)) == len(v)) or last
            key_sizes.add(len(k))
            if held_out:
                assert len(k) == 3
            if k in bound:
                expect = bound[k]
                assert v == expect[: len(v)]  # the final value is cut by the shift
                for j, tok in enumerate(expect):
                    assert full_t[start + j] == tok
                    scored += 1
                if last:
                    assert full[start + len(expect) - 1] is None
            else:
                assert not last  # the query repeats a key of the body
                assert all(full_t[start + j] == IGNORE for j in range(len(v)))
                bound[k] = v
            assert all(full_t[start - 1 - j] == IGNORE for j in range(len(k)))
    assert scored > 60
    assert key_sizes == ({3} if held_out else {1, 2, 3})  # keys span several tokens


def test_selective_copying_targets_are_the_data_tokens_in_order():
    data = selective_copying(100, vocab_size=8, seq_len=16, n_copy=4, seed=4)
    blank, copy = 6, 7
    for x, y in zip(data.inputs.tolist(), data.targets.tolist()):
        assert x[11] == copy and x[12:] == [blank] * 4
        body = x[:11]
        assert body[-1] != blank  # a blank always goes before a data token
        assert y[:12] == [IGNORE] * 12 and y[12:] == [t for t in body if t != blank]
        assert sum(t != blank for t in body) == 4


def test_compression_targets_are_the_sequence():
    data = compression(20, vocab_size=5, seq_len=6, seed=0)
    assert bool((data.inputs[:, -1] == 4).all()) and bool((data.inputs[:, :-1] < 4).all())
    assert torch.equal(data.targets[:, :-1], data.inputs[:, :-1]) and bool((data.targets[:, -1] == IGNORE).all())


def test_memorisation_map_is_fixed_across_sequences():
    table = memorisation_map(11)  # keys [0, 5), values [5, 10), insert token 10
    assert sorted(table) == [0, 1, 2, 3, 4] and sorted(table.values()) == [5, 6, 7, 8, 9]
    seen: dict[int, int] = {}
    for seed in (0, 1, 2):
        data = memorisation(30, vocab_size=11, seq_len=8, seed=seed)
        x, y = data.inputs, data.targets
        assert bool((x[:, 1::2] == 10).all()) and bool((y[:, 0::2] == IGNORE).all())
        for k, v in zip(x[:, 0::2].flatten().tolist(), y[:, 1::2].flatten().tolist()):
            assert seen.setdefault(k, v) == v == table[k]
    assert len(seen) == 5
    assert memorisation_map(41, map_seed=1) != memorisation_map(41, map_seed=2)


@pytest.mark.parametrize("task", list(TASKS))
def test_deterministic_per_seed(task):
    a, b, c = generate(task, 8, seed=5), generate(task, 8, seed=5), generate(task, 8, seed=6)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.inputs, c.inputs)
    assert bool((a.targets != IGNORE).any())


@pytest.mark.parametrize(("fn", "kwargs", "match"), [
    (in_context_recall, {"vocab_size": 1}, "vocab_size - noise_vocab_size >= 2"),
    (in_context_recall, {"seq_len": 2}, "even seq_len >= 4"),
    (in_context_recall, {"seq_len": 9}, "even seq_len >= 4"),
    (noisy_recall, {"vocab_size": 9, "noise_vocab_size": 8}, "vocab_size - noise_vocab_size >= 2"),
    (in_context_recall, {"frac_noise": 0.3}, "needs noise_vocab_size >= 1"),
    (fuzzy_recall, {"vocab_size": 6, "k_motif": 3}, "k_motif"),
    (fuzzy_recall, {"seq_len": 10}, r"seq_len >= 3 \* \(k_motif \+ v_motif\) = 12"),
    (selective_copying, {"vocab_size": 2}, "vocab_size >= 3"),
    (selective_copying, {"seq_len": 9, "n_copy": 4}, r"seq_len > 2 \* n_copy \+ 1 = 9"),
    (compression, {"seq_len": 1}, "seq_len >= 2"),
    (memorisation, {"vocab_size": 2}, "vocab_size >= 3"),
    (memorisation, {"seq_len": 7}, "even seq_len"),
])
def test_bad_input_is_one_line_error(fn, kwargs, match):
    with pytest.raises(SparsecraftError, match=match) as e:
        fn(4, **kwargs)
    assert "\n" not in str(e.value)


def test_generate_rejects_unknown_task_and_option():
    with pytest.raises(SparsecraftError, match="unknown MAD task 'nope'; allowed: in-context-recall"):
        generate("nope", 1, seed=0)
    with pytest.raises(SparsecraftError, match="bad options for MAD task 'compression'"):
        generate("compression", 1, seed=0, k_motif=2)


def test_scored_accuracy_counts_only_scored_positions():
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 1] = logits[0, 1, 2] = logits[0, 2, 3] = 1.0  # predictions 1, 2, 3
    assert scored_accuracy(logits, torch.tensor([[1, IGNORE, 0]])) == 0.5
    assert scored_accuracy(logits, torch.tensor([[IGNORE, 2, 3]])) == 1.0
