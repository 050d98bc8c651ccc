"""Data pruning with the self-supervised prototype metric (beyond power-law scaling).

Paper: Sorscher et al., "Beyond neural scaling laws: beating power law scaling via data pruning"
(papers.txt). The self-supervised metric: embed every training example with a model trained
without labels, run k-means in the embedding space (cosine geometry: embeddings L2-normalised),
and score an example by its distance to the nearest centroid (prototype): far = hard, near =
easy. The pruning rule of the paper's theory: with **abundant** data keep the **hardest**
examples, with **scarce** data keep the **easiest** (:func:`keep_rule`); random pruning is the
baseline whose error follows the usual power law.

Here: the embedding is a PCA of the pixels (label-free; the paper uses SwAV features, which are
not available offline -- a departure), :func:`kmeans` is Lloyd's algorithm with k-means++ seeding,
:func:`prototype_scores` gives the distances, :func:`select` keeps a fraction by score. The
experiment trains the same MLP on each kept subset of a Fashion-MNIST pool for a fixed number of
optimizer steps and reports the test error of random / keep-hard / keep-easy pruning.
"""

from __future__ import annotations

import math

import torch

from sparsecraft.errors import SparsecraftError
from sparsecraft.lab.base import EXPERIMENTS, Experiment, LabResult, LabTable, check_float, check_int, fmt
from sparsecraft.lab.fashion import fashion_random, train_classifier
from sparsecraft.models.vision import mlp

STRATEGIES = ("random", "keep-hard", "keep-easy", "hard-per-cluster", "easy-per-cluster")


def pca_embedding(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Project the rows of ``x`` on their ``dim`` leading principal directions (no labels used)."""
    xc = x.double() - x.double().mean(0)
    _, vecs = torch.linalg.eigh(xc.T @ xc)
    return (xc @ vecs[:, -dim:].flip(1)).float()


def kmeans(z: torch.Tensor, k: int, iters: int = 100, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means with k-means++ seeding; returns (centroids (k, d), labels (n,))."""
    n = z.shape[0]
    if not 1 <= k <= n:
        raise SparsecraftError(f"k-means needs 1 <= k <= number of points ({n}), got k={k}")
    g = torch.Generator().manual_seed(seed)
    z = z.double()
    cent = [z[torch.randint(n, (1,), generator=g)].squeeze(0)]
    d2 = (z - cent[0]).pow(2).sum(1)
    for _ in range(1, k):
        probs = d2 / d2.sum() if d2.sum() > 0 else torch.full((n,), 1.0 / n, dtype=z.dtype)
        cent.append(z[torch.multinomial(probs, 1, generator=g)].squeeze(0))
        d2 = torch.minimum(d2, (z - cent[-1]).pow(2).sum(1))
    c = torch.stack(cent)
    labels = torch.full((n,), -1, dtype=torch.long)
    for _ in range(iters):
        new = torch.cdist(z, c).argmin(1)
        if torch.equal(new, labels):
            break
        labels = new
        for j in range(k):
            members = z[labels == j]
            if len(members):
                c[j] = members.mean(0)
    return c.float(), labels


def prototype_metric(z: torch.Tensor, k: int, normalize: bool = True,
                     seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(distance of each embedding to its nearest k-means centroid, that centroid's index): the
    paper's self-supervised prototype metric; ``normalize`` L2-normalises first (cosine geometry)."""
    if normalize:
        z = torch.nn.functional.normalize(z.double(), dim=1)
    cent, _ = kmeans(z, k, seed=seed)
    dist, nearest = torch.cdist(z.double(), cent.double()).min(1)
    return dist.float(), nearest


def prototype_scores(z: torch.Tensor, k: int, normalize: bool = True, seed: int = 0) -> torch.Tensor:
    """The prototype metric alone (see :func:`prototype_metric`)."""
    return prototype_metric(z, k, normalize, seed)[0]


def keep_rule(n_kept: int, abundant_from: int) -> str:
    """The paper's rule: keep the hardest examples when the kept set is large (data abundant),
    the easiest when it is small (scarce); ``abundant_from`` is where abundance starts."""
    return "keep-hard" if n_kept >= abundant_from else "keep-easy"


def select(scores: torch.Tensor, fraction: float, strategy: str, seed: int = 0,
           clusters: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of the examples kept by ``strategy``: ``round(fraction * n)`` of them for random,
    keep-hard (largest scores) and keep-easy (smallest); the per-cluster variants keep the hardest /
    easiest ``round(fraction * n_c)`` of every cluster ``c`` of ``clusters`` (a label-free balance)."""
    n = scores.numel()
    m = max(1, round(fraction * n))
    if strategy not in STRATEGIES:
        raise SparsecraftError(f"unknown strategy {strategy!r}; allowed: {', '.join(STRATEGIES)}")
    if strategy == "random":
        return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:m]
    hard = strategy in ("keep-hard", "hard-per-cluster")
    if strategy in ("keep-hard", "keep-easy"):
        return scores.argsort(descending=hard, stable=True)[:m]
    if clusters is None or clusters.numel() != n:
        raise SparsecraftError(f"strategy {strategy!r} needs one cluster index per example")
    kept = []
    for c in clusters.unique():
        members = torch.nonzero(clusters == c).flatten()
        order = scores[members].argsort(descending=hard, stable=True)
        kept.append(members[order[: round(fraction * len(members))]])
    return torch.cat(kept).sort().values


@EXPERIMENTS.register("data-pruning")
class DataPruningExperiment(Experiment):
    """Fashion-MNIST test error vs fraction of a training pool kept: random vs prototype-metric
    pruning (keep hard / keep easy), equal optimizer steps per run."""

    paper = "Beyond neural scaling laws: beating power law scaling via data pruning"
    claim = ("with a good pruning metric, test error falls faster than the power law of random pruning as the "
             "kept data grows; the best rule keeps easy examples when data is scarce and hard ones when it is "
             "abundant; a self-supervised prototype metric (k-means distance in an embedding) is a good metric.")

    def __init__(self, fractions: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4, 0.7, 1.0), pool: int = 10_000,
                 clusters: int = 20, embed_dim: int = 32, hidden: int = 128, steps: int = 300, n_test: int = 10_000,
                 lr: float = 1e-3, seed: int = 0) -> None:
        self.fractions = tuple(check_float("fractions entry", f, 0.0, 1.0, open_low=True) for f in fractions)
        self.pool = check_int("pool", pool, 10, 60_000)
        self.clusters = check_int("clusters", clusters, 1, self.pool)
        self.embed_dim = check_int("embed_dim", embed_dim, 1, 784)
        self.hidden = check_int("hidden", hidden, 1)
        self.steps = check_int("steps", steps, 1)
        self.n_test = check_int("n_test", n_test, 10, 10_000)
        self.lr = check_float("lr", lr, 0.0, 1.0, open_low=True)
        self.seed = check_int("seed", seed, 0)

    def run(self, progress: bool = False) -> LabResult:
        x, y, xt, yt = fashion_random(self.pool, self.n_test, self.seed)
        scores, nearest = prototype_metric(pca_embedding(x, self.embed_dim), self.clusters, seed=self.seed)
        err: dict[tuple[str, float], float] = {}
        share: dict[tuple[str, float], float] = {}
        rows = []
        for f in self.fractions:
            row = [f"{f:.0%}", str(max(1, round(f * self.pool)))]
            for strategy in STRATEGIES:
                idx = select(scores, f, strategy, self.seed, nearest)
                share[strategy, f] = float(torch.bincount(y[idx], minlength=10).min()) / len(idx)
                if f == 1.0 and strategy != "random":
                    err[strategy, f] = err["random", f]  # the whole pool: every strategy keeps the same set
                else:
                    epochs = max(1, math.ceil(self.steps * 128 / len(idx)))
                    torch.manual_seed(self.seed)
                    acc, _ = train_classifier(mlp(hidden=(self.hidden,)), x[idx], y[idx], xt, yt, epochs=epochs,
                                              lr=self.lr, seed=self.seed, progress=progress)
                    err[strategy, f] = 1.0 - acc
                row.append(fmt(100 * err[strategy, f]))
            row.append(" / ".join(f"{100 * share[st, f]:.1f}" for st in STRATEGIES))
            rows.append(row)
        table = LabTable(
            f"Fashion-MNIST test error (%) vs fraction of a {self.pool}-image training pool kept; prototype metric = "
            f"distance to the nearest of {self.clusters} k-means centroids of the L2-normalised {self.embed_dim}-dim "
            f"PCA embedding; MLP 784-{self.hidden}-10, about {self.steps} Adam steps of 128 images per run "
            f"(whole epochs, lr {self.lr}, cosine), test on {self.n_test} images, seed {self.seed}",
            ["kept", "images", *(f"{s} error" for s in STRATEGIES),
             "smallest class share of the kept set (%, same order; labels used only here)"], rows)
        best = {f: min(STRATEGIES, key=lambda s: err[s, f]) for f in self.fractions}
        finding = ("best strategy per kept fraction: " + ", ".join(f"{f:.0%} {best[f]}" for f in self.fractions)
                   + f". Error ({' / '.join(STRATEGIES)}): " + "; ".join(
                       f"{f:.0%}: " + " / ".join(f"{100 * err[s, f]:.2f}" for s in STRATEGIES)
                       for f in self.fractions if f < 1.0) + ".")
        return LabResult(self.name, self.claim, [table], finding, {"err": err, "best": best, "share": share})
