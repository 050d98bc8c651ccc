import pytest

from sparsecraft.analysis.knee import knee_point, tolerance_point


def test_tolerance_point_lower_is_better():
    s = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    ppl = [10.0, 10.05, 10.09, 10.2, 10.05, 30.0]  # 0.3 breaks 1%; 0.4 is back in but after a break
    assert tolerance_point(s, ppl, 10.0, 0.01) == 0.2
    assert tolerance_point(s, ppl, 10.0, 0.05) == 0.4
    assert tolerance_point([0.5], [20.0], 10.0, 0.01) is None


def test_tolerance_point_higher_is_better_and_unsorted_input():
    s = [0.3, 0.0, 0.2, 0.1]
    sim = [0.95, 1.0, 0.992, 0.999]
    assert tolerance_point(s, sim, 1.0, 0.01, higher_is_better=True) == 0.2


def test_knee_is_where_degradation_turns_fast():
    s = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    ppl = [10, 10.1, 10.2, 10.4, 10.8, 11.5, 13, 20, 60, 400]
    # degradation normalised by 390 stays ~0 until 0.7; x - y peaks at 0.8 (x=0.889, y=0.128)
    assert knee_point(s, ppl, 10.0) == pytest.approx(0.8)
    sim = [1.0, 0.999, 0.998, 0.997, 0.99, 0.98, 0.9, 0.6]
    # x - y: 0.4 -> 0.546, 0.5 -> 0.664, 0.6 -> 0.607
    assert knee_point(s[:8], sim, 1.0) == pytest.approx(0.5)


def test_no_knee_for_linear_or_concave_curves():
    s = [0.0, 0.5, 1.0]
    assert knee_point(s, [0.0, 0.5, 1.0], 0.0) is None
    assert knee_point(s, [0.0, 0.9, 1.0], 0.0) is None
    assert knee_point([0.0, 0.5], [1.0, 2.0], 1.0) is None
