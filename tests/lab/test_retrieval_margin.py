"""k-sparse relevance matrices, the margin by hand, the explicit construction's exact margin and the
optimiser on cases whose best margin is known."""

import math

import numpy as np
import pytest

from sparsecraft.errors import SparsecraftError
from sparsecraft.lab import EXPERIMENTS
from sparsecraft.lab.retrieval_margin import ksparse_relevance, margin, optimise_margin, symmetric_embeddings


def test_ksparse_relevance_lists_every_subset_once():
    A = ksparse_relevance(4, 2)
    assert A.shape == (6, 4) and (A.sum(axis=1) == 2).all()
    assert len({tuple(r) for r in A}) == 6


def test_margin_by_hand():
    # U = V = identity, A = identity: relevant scores 1, irrelevant 0 -> margin 0
    assert margin(np.eye(2), np.eye(2), np.eye(2)) == 0.0
    # antipodal documents, queries on them: every signed score is 1
    V = np.array([[1.0, 0.0], [-1.0, 0.0]])
    assert margin(V, V, np.eye(2)) == 1.0


@pytest.mark.parametrize("n, k", [(5, 1), (6, 2), (7, 3)])
def test_symmetric_construction_has_margin_one_over_one_plus_two_sqrt_k(n, k):
    A = ksparse_relevance(n, k)
    U, V = symmetric_embeddings(A)
    assert np.allclose(np.linalg.norm(U, axis=1), 1) and np.allclose(np.linalg.norm(V, axis=1), 1)
    scores = U @ V.T
    # every relevant pair at +m, every irrelevant one at -m
    m = 1 / (1 + 2 * math.sqrt(k))
    assert np.allclose(scores[A == 1], m) and np.allclose(scores[A == 0], -m)


def test_optimiser_on_known_cases():
    # d = 1 is exact: 2 documents / 2 one-hot queries is the sign pattern (1,-1)(1,-1)^T -> margin 1;
    # 3 one-hot queries are not rank one -> -1
    assert optimise_margin(ksparse_relevance(2, 1), 1)[0] == 1.0
    assert optimise_margin(ksparse_relevance(3, 1), 1)[0] == -1.0
    # 3 one-hot queries in the plane: the triangle (U = V at 120 degrees) reaches 1/2
    m, U, V = optimise_margin(ksparse_relevance(3, 1), 2, steps=400, restarts=3)
    assert 0.45 < m <= 0.5 + 1e-9
    assert np.allclose(np.linalg.norm(U, axis=1), 1) and margin(U, V, ksparse_relevance(3, 1)) == pytest.approx(m)


def test_experiment_margins_scale_like_one_over_sqrt_k():
    res = EXPERIMENTS.build({"type": "retrieval-margin", "cases": [[8, 1], [8, 2]], "steps": 200,
                             "restarts": 2}).run()
    c1, c2 = res.data["cases"]
    for c in (c1, c2):
        assert c["m_inf"] >= c["m_construction"] and c["d_hit"] is not None and c["d_hit"] <= 9
        assert all(b >= a - 0.05 for a, b in zip(list(c["curve"].values()), list(c["curve"].values())[1:]))
    assert c2["m_inf"] < c1["m_inf"]


@pytest.mark.parametrize("spec, match", [({"cases": [[4, 4]]}, "needs 1 <= k < n"),
                                         ({"cases": [[40, 5]]}, "C\\(n, k\\) <= 5000"),
                                         ({"cases": [3]}, "pairs"), ({"fraction": 0}, "fraction")])
def test_bad_settings_are_one_line_errors(spec, match):
    with pytest.raises(SparsecraftError, match=match):
        EXPERIMENTS.build({"type": "retrieval-margin", **spec})
