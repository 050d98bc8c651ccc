"""The bioS-style generator (seeded, independent uniform attributes, the rendered layout by hand),
the bits estimator (perfect / uniform / hand-computed cases, the name term), a tiny model that
memorises a tiny population, and one-line errors for bad input."""

import math

import numpy as np
import pytest
import torch

from sparsecraft.errors import SparsecraftError
from sparsecraft.lab import EXPERIMENTS
from sparsecraft.lab.biographies import generate_population, render
from sparsecraft.lab.knowledge_capacity import (
    attribute_bits,
    bits_stored,
    capacity_model,
    max_bits,
    measure_bits,
    name_bits,
    train_capacity,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_generator_is_seeded():
    a, b, c = (generate_population(50, seed=s) for s in (3, 3, 4))
    assert np.array_equal(a.first, b.first) and np.array_equal(a.last, b.last)
    assert all(np.array_equal(a.values[k], b.values[k]) for k in a.values)
    assert not all(np.array_equal(a.values[k], c.values[k]) for k in a.values)
    assert torch.equal(render(a).tokens, render(b).tokens)


def test_attributes_are_uniform_and_independent_and_names_distinct():
    n = 6000
    pop = generate_population(n, {"x": 4, "y": 3}, n_first=100, n_last=100, seed=0)
    assert len(set(zip(pop.first.tolist(), pop.last.tolist()))) == n  # distinct names
    assert pop.first.max() < 100 and pop.last.max() < 100
    fx = np.bincount(pop.values["x"], minlength=4) / n
    fy = np.bincount(pop.values["y"], minlength=3) / n
    assert np.abs(fx - 1 / 4).max() < 0.02 and np.abs(fy - 1 / 3).max() < 0.02
    joint = np.zeros((4, 3))
    np.add.at(joint, (pop.values["x"], pop.values["y"]), 1 / n)
    assert np.abs(joint - 1 / 12).max() < 0.015  # P(x, y) = P(x) P(y)


def test_rendered_biography_by_hand():
    pop = generate_population(2, {"birth_city": 3, "hobby": 2}, n_first=2, n_last=2, seed=1)
    r = render(pop)
    words = {i: w for w, i in r.vocab.items()}
    f, la = f"first:{pop.first[0]}", f"last:{pop.last[0]}"
    city, hobby = f"birth_city:{pop.values['birth_city'][0]}", f"hobby:{pop.values['hobby'][0]}"
    assert [words[int(t)] for t in r.tokens[0]] == [
        "<bos>", f, la, "was", "born", "in", city, ".", f, la, "has", "hobby", hobby, "."]
    assert r.positions == {"first": 1, "last": 2, "birth_city": 6, "hobby": 12}
    assert len(r.vocab) == 1 + 6 + 2 + 2 + 3 + 2  # bos, words (was born in . has hobby), names, values


def test_perfect_predictor_stores_every_bit_and_uniform_guess_none():
    sizes = {"a": 12, "b": 5, "c": 1}
    n = 7
    perfect = bits_stored({k: np.zeros(n) for k in sizes}, sizes)
    assert perfect["attributes"] == pytest.approx(n * (math.log2(12) + math.log2(5) + 0.0), abs=1e-9)
    uniform = bits_stored({k: np.full(n, math.log(s)) for k, s in sizes.items()}, sizes)
    assert uniform["attributes"] == pytest.approx(0.0, abs=1e-9)
    worse = attribute_bits(4, np.full(n, 3.0))  # worse than guessing: nothing stored, not negative
    assert worse == 0.0


def test_two_people_two_attributes_by_hand():
    # |V_a| = 4, |V_b| = 2; person 1 puts 1/2 on its a-value and is sure of b, person 2 guesses a
    # uniformly (1/4) and gives b 1/2: bits_a = 2 log2 4 - (1 + 2) = 1, bits_b = 2 log2 2 - (0 + 1) = 1
    losses = {"a": [math.log(2), math.log(4)], "b": [0.0, math.log(2)]}
    bits = bits_stored(losses, {"a": 4, "b": 2})
    assert bits["a"] == pytest.approx(1.0) and bits["b"] == pytest.approx(1.0)
    assert bits["total"] == pytest.approx(2.0) and bits["name"] == 0.0
    # names: N = 2 of N0 = 10; losses ln 2 and ln 4 -> 2 log2 8 - 3 = 3 bits
    assert name_bits(10, [math.log(2), math.log(4)]) == pytest.approx(3.0)
    assert bits_stored(losses, {"a": 4, "b": 2}, [math.log(2), math.log(4)], 10)["total"] == pytest.approx(5.0)


def test_max_bits_of_a_population():
    pop = generate_population(10, {"a": 8, "b": 4}, n_first=5, n_last=8)
    ceiling = max_bits(pop)
    assert ceiling["attributes"] == pytest.approx(10 * 5.0)
    assert ceiling["name"] == pytest.approx(10 * math.log2(30 / 10))


class _Oracle(torch.nn.Module):
    """Predicts the value tokens of known biographies with certainty (found by the name at columns
    1-2), uniform everywhere else; the value columns are given by hand, not by ``render``."""

    def __init__(self, tokens, value_columns, vocab_size):
        super().__init__()
        self.table, self.cols, self.v = tokens, value_columns, vocab_size

    def forward(self, input_ids):
        logits = torch.zeros(*input_ids.shape, self.v)
        for b, row in enumerate(input_ids):
            person = int(((self.table[:, 1] == row[1]) & (self.table[:, 2] == row[2])).nonzero()[0])
            for c in self.cols:  # token c is predicted at position c - 1
                logits[b, c - 1, self.table[person, c]] = 60.0
        return type("Out", (), {"logits": logits})()


def test_measure_bits_reads_the_value_positions():
    pop = generate_population(6, {"birth_city": 5, "hobby": 3}, n_first=4, n_last=4, seed=2)
    r = render(pop)
    oracle = _Oracle(r.tokens, [6, 12], len(r.vocab))  # birth_city at 6, hobby at 12 (see the layout test)
    bits = measure_bits(oracle, pop, r)
    assert bits["attributes"] == pytest.approx(6 * (math.log2(5) + math.log2(3)), abs=1e-6)
    assert bits["name"] == 0.0  # uniform over the whole vocabulary is worse than over the N0 - N names
    off = _Oracle(r.tokens, [7, 13], len(r.vocab))  # shifted by one: the values are then guessed uniformly
    assert measure_bits(off, pop, r)["attributes"] == 0.0


def test_a_tiny_model_memorises_a_tiny_population():
    pop = generate_population(8, {"birth_city": 4, "major": 4}, n_first=4, n_last=4, seed=0)
    r = render(pop)
    model = capacity_model(len(r.vocab), r.tokens.shape[1], 16, n_layers=1, seed=0)
    train_capacity(model, r.tokens, exposures=150, batch_size=8, lr=3e-2)
    bits = measure_bits(model, pop, r)
    assert bits["attributes"] >= 0.9 * max_bits(pop)["attributes"]  # 8 x (2 + 2) = 32 bits


def test_experiment_runs_end_to_end_on_a_toy_setting():
    exp = EXPERIMENTS.build({"type": "knowledge-capacity", "n_people": 6, "sizes": {"a": 3}, "n_first": 3,
                             "n_last": 3, "d_models": [8], "moe_d_model": 8, "n_experts": 2, "top_ks": [1],
                             "exposures": 2, "batch_size": 6})
    res = exp.run()
    assert [r["d_model"] for r in res.data["dense"]] == [8] and res.data["moe"][0]["n_experts"] == 2
    moe, dense = res.data["moe"][0], res.data["dense"][0]
    assert moe["params"] > dense["params"] and moe["active"] < moe["params"]  # total counts every expert
    assert "bits / parameter" in res.to_markdown()


@pytest.mark.parametrize("call, match", [
    (lambda: generate_population(0), "n >= 1 people"),
    (lambda: generate_population(3, {"a": 0}), "at least 1 value"),
    (lambda: generate_population(3, {}), "at least one attribute"),
    (lambda: generate_population(5, {"a": 2}, n_first=2, n_last=2), "distinct names"),
    (lambda: attribute_bits(0, [0.0]), "at least 1 value"),
    (lambda: attribute_bits(3, []), "N = 1"),
    (lambda: attribute_bits(3, [-0.5]), "finite cross-entropies"),
    (lambda: bits_stored({"a": [0.0]}, {"a": 2, "b": 2}), "no losses for attribute"),
    (lambda: name_bits(2, [0.1, 0.2]), "N0 > N"),
    (lambda: EXPERIMENTS.build({"type": "knowledge-capacity", "n_people": 0}), "n_people"),
    (lambda: EXPERIMENTS.build({"type": "knowledge-capacity", "sizes": {"a": 0}}), "at least 1 value"),
    (lambda: EXPERIMENTS.build({"type": "knowledge-capacity", "top_ks": [5]}), "top_k"),
])
def test_bad_input_is_a_one_line_error(call, match):
    with pytest.raises(SparsecraftError, match=match) as err:
        call()
    assert "\n" not in str(err.value)
