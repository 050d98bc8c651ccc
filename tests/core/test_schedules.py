import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sparsecraft.errors import SparsecraftError
from sparsecraft.schedules import SCHEDULES, UpdateRule, make_schedule

RAMPS = ["linear", "polynomial", "cosine"]


@pytest.mark.parametrize("kind", RAMPS)
def test_ramp_end_points_and_monotonicity(kind):
    s = make_schedule({"type": kind, "initial": 0.0, "final": 0.9, "start": 10, "end": 110})
    assert s(0) == 0.0 and s(10) == 0.0
    assert s(110) == pytest.approx(0.9) and s(10_000) == pytest.approx(0.9)
    values = [s(t) for t in range(0, 200)]
    assert all(b >= a - 1e-12 for a, b in zip(values, values[1:]))


def test_polynomial_is_zhu_gupta_cubic():
    s = make_schedule({"type": "polynomial", "final": 0.9, "start": 0, "end": 100})
    p = 0.3
    assert s(30) == pytest.approx(0.9 * (1 - (1 - p) ** 3))


def test_cosine_drop_fraction_matches_rigl():
    alpha, T = 0.3, 1000
    f = make_schedule({"type": "cosine", "initial": alpha, "final": 0.0, "end": T})
    for t in (0, 250, 500, 999, 1500):
        assert f(t) == pytest.approx(alpha / 2 * (1 + math.cos(math.pi * min(t, T) / T)))


def test_exponential_end_points_and_rate_form():
    s = make_schedule({"type": "exponential", "initial": 1.0, "final": 0.01, "start": 0, "end": 10})
    assert s(0) == pytest.approx(1.0) and s(10) == pytest.approx(0.01) and s(5) == pytest.approx(0.1)
    r = make_schedule({"type": "exponential", "initial": 1.0, "final": 0.0, "rate": 0.5, "end": 100})
    assert r(4) == pytest.approx(math.exp(-2))


def test_number_list_and_dict_specs():
    assert make_schedule(0.5)(123) == 0.5
    step = make_schedule([[0, 0.0], [100, 0.5], [200, 0.8]])
    assert [step(50), step(100), step(250)] == [0.0, 0.5, 0.8]
    seg = make_schedule(
        [{"type": "linear", "final": 0.5, "start": 0, "end": 10}, {"type": "constant", "value": 0.9, "start": 20}]
    )
    assert seg(5) == pytest.approx(0.25) and seg(15) == 0.5 and seg(25) == 0.9
    assert make_schedule({"type": "one_shot", "value": 0.7, "start": 3})(2) == 0.0


def test_schedule_errors_are_clear():
    with pytest.raises(SparsecraftError, match="needs a 'type'"):
        make_schedule({"final": 1})
    with pytest.raises(SparsecraftError, match="unknown schedule"):
        make_schedule({"type": "zigzag"})
    with pytest.raises(SparsecraftError, match="bad arguments"):
        make_schedule({"type": "linear", "finale": 1})


@given(st.integers(1, 20), st.integers(0, 50), st.integers(0, 200))
def test_update_rule(every, start, step):
    rule = UpdateRule(every=every, start=start, stop=start + 100)
    expected = start <= step < start + 100 and (step - start) % every == 0
    assert rule.should_update(step) == expected


def test_registry_has_all_kinds():
    assert set(SCHEDULES.names()) >= {"constant", "one_shot", "linear", "polynomial", "cosine", "exponential"}
