"""Step Law: the ALGORITHMS.md example."""

import pytest

from sparsecraft.errors import SparsecraftError
from sparsecraft.scaling import step_law


def test_example_from_algorithms_md():
    r = step_law(1e8, 2e9)
    assert r.lr == pytest.approx(2.54e-3, rel=2e-3)
    assert r.batch_tokens == pytest.approx(118.7e3, rel=1e-3)
    assert step_law(1e8, 2e9, seq_len=2048).batch_sequences == pytest.approx(r.batch_tokens / 2048)


def test_formula_exponents():
    a, b = step_law(1e8, 1e9), step_law(2e8, 1e9)
    assert b.lr / a.lr == pytest.approx(2**-0.713)
    assert b.batch_tokens == a.batch_tokens


def test_bad_inputs():
    with pytest.raises(SparsecraftError, match="> 0"):
        step_law(0, 1e9)
    with pytest.raises(SparsecraftError, match="seq_len"):
        step_law(1e8, 1e9, seq_len=0)
