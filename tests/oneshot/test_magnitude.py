import torch

from sparsecraft.oneshot.magnitude import Magnitude
from sparsecraft.patterns import NM, Unstructured


def test_magnitude_per_matrix_exact_count():
    w = torch.tensor([[0.1, -5.0, 0.2], [3.0, -0.05, 4.0]])
    new_w, keep = Magnitude().prune(w, None, Unstructured(), 0.5)
    assert new_w is None
    assert keep.tolist() == [[False, True, False], [True, False, True]]


def test_magnitude_nm():
    torch.manual_seed(0)
    w = torch.randn(3, 8)
    _, keep = Magnitude().prune(w, None, NM(4, 8), 0.0)
    assert (keep.sum(1) == 4).all()
    a = w.abs()
    for r in range(3):
        assert a[r][keep[r]].min() >= a[r][~keep[r]].max()
