"""Prototype metric on a tiny hand-made set (centroids and distances by hand), k-means against
brute force over every 2-clustering, PCA, the selection strategies and the paper's rule."""

from itertools import product

import pytest
import torch

from sparsecraft.errors import SparsecraftError
from sparsecraft.lab import EXPERIMENTS
from sparsecraft.lab.data_pruning import keep_rule, kmeans, pca_embedding, prototype_scores, select

# two blobs: three points around the origin, three around (10, 10), and one far point (13, 13)
POINTS = torch.tensor([[0.0, 0.0], [0.0, 3.0], [3.0, 0.0], [10.0, 10.0], [10.0, 13.0], [13.0, 10.0], [13.0, 13.0]])


def test_kmeans_and_prototype_distances_by_hand():
    cent, labels = kmeans(POINTS, 2, seed=0)
    # centroids (1, 1) and (11.5, 11.5); labels split the blobs
    got = sorted(cent.tolist())
    assert got[0] == pytest.approx([1.0, 1.0]) and got[1] == pytest.approx([11.5, 11.5])
    assert len(set(labels[:3].tolist())) == 1 and len(set(labels[3:].tolist())) == 1 and labels[0] != labels[3]
    d = prototype_scores(POINTS, 2, normalize=False, seed=0)
    # blob 1: |(0,0)-(1,1)| = sqrt 2, |(0,3)-(1,1)| = |(3,0)-(1,1)| = sqrt 5; blob 2: every corner of the
    # 3 x 3 square is 1.5 sqrt 2 from its centre
    expected = [2**0.5, 5**0.5, 5**0.5] + [1.5 * 2**0.5] * 4
    assert d.tolist() == pytest.approx(expected, rel=1e-6)
    # hardest = farthest from its prototype; easiest = nearest (ties broken by index)
    assert select(d, 3 / 7, "keep-easy").tolist() == [0, 3, 4]
    assert set(select(d, 2 / 7, "keep-hard").tolist()) == {1, 2}


def test_per_cluster_selection_keeps_the_fraction_of_every_cluster():
    scores = torch.tensor([5.0, 1.0, 3.0, 2.0, 9.0, 8.0, 7.0, 6.0])
    clusters = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    # global keep-hard at 50% takes all of cluster 1; per cluster: the top 2 of each
    assert select(scores, 0.5, "keep-hard").sort().values.tolist() == [4, 5, 6, 7]
    assert select(scores, 0.5, "hard-per-cluster", clusters=clusters).tolist() == [0, 2, 4, 5]
    assert select(scores, 0.5, "easy-per-cluster", clusters=clusters).tolist() == [1, 3, 6, 7]
    with pytest.raises(SparsecraftError, match="needs one cluster index per example"):
        select(scores, 0.5, "easy-per-cluster")


def test_kmeans_reaches_the_best_2_clustering_of_a_tiny_set():
    pts = torch.tensor([[0.0], [1.0], [2.0], [7.0], [8.0], [20.0]])
    _, labels = kmeans(pts, 2, seed=3)

    def cost(assign):
        total = 0.0
        for j in (0, 1):
            member = pts[[i for i, a in enumerate(assign) if a == j]]
            if len(member):
                total += float((member - member.mean(0)).pow(2).sum())
        return total

    best = min(cost(a) for a in product((0, 1), repeat=len(pts)))
    assert cost(labels.tolist()) == pytest.approx(best)


def test_normalised_metric_uses_directions_only():
    # scaling a point does not move it in cosine geometry
    z = torch.tensor([[1.0, 0.0], [5.0, 0.0], [0.0, 1.0], [0.0, 2.0]])
    assert prototype_scores(z, 2, seed=0).tolist() == pytest.approx([0.0] * 4, abs=1e-6)


def test_pca_embedding_keeps_the_leading_direction():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(200, 1, generator=g)
    x = torch.cat([3 * t, 0.01 * torch.randn(200, 2, generator=g)], 1)
    e = pca_embedding(x, 1)
    assert abs(torch.corrcoef(torch.cat([e, t], 1).T)[0, 1]) > 0.999


def test_select_sizes_and_rule():
    s = torch.arange(10.0)
    assert select(s, 0.3, "keep-hard").tolist() == [9, 8, 7] and select(s, 0.3, "keep-easy").tolist() == [0, 1, 2]
    r = select(s, 0.5, "random", seed=1)
    assert len(r) == 5 and len(set(r.tolist())) == 5
    assert keep_rule(100, 1000) == "keep-easy" and keep_rule(5000, 1000) == "keep-hard"
    with pytest.raises(SparsecraftError, match="unknown strategy 'mid'"):
        select(s, 0.5, "mid")
    with pytest.raises(SparsecraftError, match="1 <= k <= number of points"):
        kmeans(POINTS, 9)


def test_tiny_experiment(monkeypatch):
    import sparsecraft.lab.data_pruning as mod

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(200, 784, generator=g), torch.randint(0, 10, (200,), generator=g)
    monkeypatch.setattr(mod, "fashion_random", lambda n, nt, seed: (x, y, x[:50], y[:50]))
    res = EXPERIMENTS.build({"type": "data-pruning", "fractions": [0.5, 1.0], "pool": 200, "clusters": 4,
                             "embed_dim": 8, "hidden": 8, "steps": 4}).run()
    err = res.data["err"]
    assert err["keep-hard", 1.0] == err["random", 1.0] and len(err) == 10
    assert 0.0 <= min(res.data["share"].values()) <= 0.1
    assert [r[1] for r in res.tables[0].rows] == ["100", "200"]


@pytest.mark.parametrize("spec, match", [({"fractions": [0]}, "fractions entry"), ({"clusters": 0}, "clusters")])
def test_bad_settings_are_one_line_errors(spec, match):
    with pytest.raises(SparsecraftError, match=match):
        EXPERIMENTS.build({"type": "data-pruning", **spec})
