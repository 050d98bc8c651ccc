"""Mask dynamics: dropped/grown counts and Sparse Architecture Divergence by hand."""

import pytest
import torch

from sparsecraft.analysis.mask_dynamics import MaskDynamics, flip_counts, sad, sad_count


def test_sad_by_hand():
    a = torch.tensor([1, 1, 0, 0, 1, 0], dtype=torch.bool)
    b = torch.tensor([1, 0, 1, 0, 1, 0], dtype=torch.bool)
    assert sad_count(a, b) == 2  # one connection moved = two flips
    assert sad(a, b) == pytest.approx(2 / 6)
    assert sad({"x": a, "y": a}, {"x": b, "y": a}) == pytest.approx(2 / 12)
    assert flip_counts(a, b) == {"dropped": 1, "grown": 1, "active": 3, "numel": 6}
    with pytest.raises(ValueError):
        sad_count(a, b[:3])


def test_record_against_previous_and_initial():
    d = MaskDynamics()
    m0 = {"w": torch.tensor([1, 1, 0, 0], dtype=torch.bool)}
    m1 = {"w": torch.tensor([0, 1, 1, 0], dtype=torch.bool)}
    m2 = {"w": torch.tensor([0, 1, 0, 1], dtype=torch.bool)}
    d.start(m0)
    d.record(10, m0, m1)
    e = d.record(20, m1, m2)
    assert e["dropped"] == 1 and e["grown"] == 1 and e["sad"] == 0.5 and e["sad_vs_initial"] == 0.5
    assert d.summary() == {"updates": 2, "dropped_total": 2, "grown_total": 2, "sad_vs_initial": 0.5}
