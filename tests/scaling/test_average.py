"""Average parameter count over a pruning schedule ("The Journey Matters")."""

import pytest

from sparsecraft.errors import SparsecraftError
from sparsecraft.scaling import average_density, average_param_count
from sparsecraft.scaling.average import gmp_schedule


def test_cubic_25_75_schedule_gives_1_minus_0625_sf():
    # ALGORITHMS.md: average prunable fraction 1 - 0.625 s_f, 0.4375 at s_f = 0.9
    T = 200_000
    assert average_density(gmp_schedule(0.9, T), T) == pytest.approx(0.4375, abs=1e-4)
    for sf in (0.5, 0.8):
        assert average_density(gmp_schedule(sf, T), T) == pytest.approx(1 - 0.625 * sf, abs=1e-4)


def test_other_schedules():
    assert average_density(0.75, 10) == pytest.approx(0.25)
    # one-shot at the midpoint: half dense, half at 20% density
    assert average_density({"type": "one_shot", "value": 0.8, "start": 50}, 100) == pytest.approx(0.6)
    assert average_param_count(0.5, 10, prunable_params=1000, dense_params=100) == pytest.approx(600)


def test_bad_inputs():
    with pytest.raises(SparsecraftError, match="total_steps"):
        average_density(0.5, 0)
    with pytest.raises(SparsecraftError, match="leaves \\[0, 1\\]"):
        average_density(1.5, 10)
    with pytest.raises(SparsecraftError, match=">= 0"):
        average_param_count(0.5, 10, prunable_params=-1)
