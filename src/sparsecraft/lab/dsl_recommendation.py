"""Dynamic Sparse Learning for recommendation: sparse embedding tables trained from scratch.

Paper: "Dynamic Sparse Learning: A Novel Paradigm for Efficient Recommendation" (Wang et al.
2024, papers.txt). DSL trains a matrix-factorisation / two-tower recommender whose embedding
tables are sparse *from the first step*, with a fixed parameter budget: every Delta T steps the
active weights of smallest magnitude are pruned and as many inactive positions with the largest
gradient magnitude are grown (their new weights start at zero). The claim: at the same parameter
budget this matches or beats a dense model, whose only way to save parameters is a smaller
embedding dimension.

Here the tables are the weights of two bias-free ``nn.Linear(dim, n)`` (row ``u`` of the
``(n, dim)`` weight is the embedding of id ``u``), so the library's training methods prune them
as they would any layer: ``method="rigl"`` (magnitude drop, dense-gradient grow, Evci et al. 2020;
the drop fraction decays with a cosine) is DSL's prune/grow rule, ``method="static"`` (a random
mask that never moves) the sparse-from-scratch baseline without reallocation. Differences from the
paper: the per-table budget is fixed (uniform sparsity), where DSL also moves budget between
tables; the score is a plain dot product (MF), the loss a per-user softmax over all items (the
catalogue is small enough to score whole).

:func:`implicit_feedback` is the synthetic data set with a known structure: users and items fall
in ``clusters`` groups and a user interacts with an item of its own cluster with probability
``p_in``, with any other item with ``p_out``. The expected interaction matrix is then exactly of
rank ``clusters`` (a block matrix plus a constant), and a cluster indicator is a 1-sparse embedding:
a sparse table of dimension >= clusters can represent it with one weight per row, which a dense
table of dimension < clusters cannot. This is the structure where DSL's claim should show, and the
results say so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.lab.base import EXPERIMENTS, Experiment, LabResult, LabTable, check_float, check_int


@dataclass
class Interactions:
    """A synthetic implicit-feedback data set: 0/1 train and test matrices (users x items) and the
    hidden cluster of every user and item."""

    train: np.ndarray
    test: np.ndarray
    user_cluster: np.ndarray
    item_cluster: np.ndarray


def implicit_feedback(n_users: int, n_items: int, clusters: int, p_in: float, p_out: float,
                      test_fraction: float = 0.2, seed: int = 0) -> Interactions:
    """Clustered interactions (see the module doc), split per user: a ``test_fraction`` of every
    user's interactions (at least one when the user has two or more) goes to the test matrix."""
    check_int("clusters", clusters, 1)
    if n_users < clusters or n_items < clusters:
        raise SparsecraftError(f"need at least one user and one item per cluster, got {n_users} users, "
                               f"{n_items} items, {clusters} clusters")
    check_float("p_in", p_in, 0.0, 1.0)
    check_float("p_out", p_out, 0.0, 1.0)
    check_float("test_fraction", test_fraction, 0.0, 1.0)
    rng = np.random.default_rng(seed)
    uc = rng.permutation(np.arange(n_users) % clusters)
    ic = rng.permutation(np.arange(n_items) % clusters)
    prob = np.where(uc[:, None] == ic[None, :], p_in, p_out)
    full = (rng.random((n_users, n_items)) < prob).astype(np.float32)
    train, test = split_per_user(full, test_fraction, rng)
    return Interactions(train, test, uc, ic)


def split_per_user(matrix: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held out): a ``fraction`` of every row's ones (rounded, at least one when the row has
    two or more and ``fraction > 0``) moves to the held-out matrix, chosen with ``rng``."""
    held = np.zeros_like(matrix)
    for u in range(matrix.shape[0]):
        pos = np.flatnonzero(matrix[u])
        n = int(round(fraction * len(pos))) if len(pos) >= 2 else 0
        if len(pos) >= 2 and fraction > 0:
            n = max(1, n)
        held[u, rng.choice(pos, size=n, replace=False)] = 1.0
    return matrix - held, held


def recall_at_k(scores: np.ndarray, train: np.ndarray, test: np.ndarray, k: int) -> float:
    """Mean over users with a test item of |top-k ∩ test| / min(k, |test|), ranking only the items
    the user has not interacted with in training."""
    check_int("k", k, 1)
    s = np.where(train > 0, -np.inf, scores)
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    rows = [u for u in range(test.shape[0]) if test[u].sum() > 0]
    if not rows:
        raise SparsecraftError("recall@k needs at least one user with a test interaction")
    hits = [test[u, top[u]].sum() / min(k, test[u].sum()) for u in rows]
    return float(np.mean(hits))


class MatrixFactorization(nn.Module):
    """score(u, i) = <P_u, Q_i>; the tables are ``nn.Linear`` weights so sparse methods find them."""

    def __init__(self, n_users: int, n_items: int, dim: int, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.users = nn.Linear(dim, n_users, bias=False)
        self.items = nn.Linear(dim, n_items, bias=False)
        with torch.no_grad():
            for table in (self.users, self.items):
                table.weight.copy_(torch.randn(table.weight.shape, generator=gen) * 0.1)

    def forward(self) -> torch.Tensor:
        """The (users, items) score matrix."""
        return self.users.weight @ self.items.weight.T


def nonzero_parameters(model: nn.Module) -> int:
    """Non-zero entries of the embedding tables (the parameter budget a sparse table stores)."""
    return int(sum(int((p != 0).sum()) for p in model.parameters()))


def train_mf(data: Interactions, dim: int, *, sparsity: float = 0.0, method: str = "rigl", steps: int = 600,
             lr: float = 0.05, weight_decay: float = 3e-4, every: int = 10, seed: int = 0) -> MatrixFactorization:
    """Full-batch training of MF with a per-user softmax over items (multinomial likelihood of the
    user's training interactions). ``sparsity > 0`` attaches ``method`` to both tables with a
    uniform per-table sparsity and a mask update every ``every`` steps (stopping at 75%)."""
    torch.manual_seed(seed)
    n_users, n_items = data.train.shape
    model = MatrixFactorization(n_users, n_items, dim, seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    method_obj = None
    if sparsity > 0:
        from sparsecraft.methods.attach import attach

        method_obj = attach(model, opt, method=method, sparsity=sparsity, distribution="uniform",
                            total_steps=steps, update={"every": every, "start": every, "stop": 0.75}, seed=seed)
    target = torch.from_numpy(data.train)
    target = target / target.sum(1, keepdim=True).clamp_min(1)
    for _ in range(steps):
        opt.zero_grad()
        loss = -(F.log_softmax(model(), dim=1) * target).sum(1).mean()
        loss.backward()
        opt.step()
    if method_obj is not None:
        method_obj.finalize()
    return model


@EXPERIMENTS.register("dsl-recommendation")
class DSLRecommendationExperiment(Experiment):
    """Dynamic sparse learning for recommendation: sparse MF tables trained with prune/grow vs a
    static sparse mask vs dense MF with a smaller dimension at the same parameter count."""

    paper = "Dynamic Sparse Learning: A Novel Paradigm for Efficient Recommendation"
    claim = ("a recommender whose embedding tables are sparse from scratch, with periodic magnitude-prune / "
             "gradient-grow reallocation at a fixed budget, matches the recommendation quality of dense models "
             "at a fraction of the parameters.")

    def __init__(self, n_users: int = 600, n_items: int = 480, clusters: int = 24, p_in: float = 0.35,
                 p_out: float = 0.01, dim: int = 32, sparsities: tuple[float, ...] = (0.5, 0.75, 0.875),
                 k: int = 10, steps: int = 600, seeds: int = 2,
                 weight_decays: tuple[float, ...] = (1e-4, 3e-4, 1e-3)) -> None:
        self.n_users, self.n_items = check_int("n_users", n_users, 2), check_int("n_items", n_items, 2)
        self.clusters = check_int("clusters", clusters, 1)
        self.p_in, self.p_out = check_float("p_in", p_in, 0.0, 1.0), check_float("p_out", p_out, 0.0, 1.0)
        self.dim = check_int("dim", dim, 2)
        self.sparsities = tuple(check_float("sparsity", s, 0.0, 1.0, open_low=True) for s in sparsities)
        for s in self.sparsities:
            small = (1 - s) * self.dim
            if s >= 1 or abs(small - round(small)) > 1e-9:
                raise SparsecraftError(f"sparsity {s} needs (1 - sparsity) * dim = {small:g} to be a whole "
                                       "dense dimension (the equal-parameter baseline); pick e.g. 0.5, 0.75")
        self.k, self.steps = check_int("k", k, 1), check_int("steps", steps, 10)
        self.seeds = check_int("seeds", seeds, 1)
        if not weight_decays:
            raise SparsecraftError("weight_decays needs at least one value")
        self.weight_decays = tuple(check_float("weight_decay", w, 0.0, 1.0) for w in weight_decays)

    def _evaluate(self, sets: list[Interactions], **kw: object) -> tuple[float, int, float]:
        """Weight decay chosen on a validation split of the first data set's training interactions,
        then (mean test recall, mean stored parameters, chosen weight decay) over every data set."""
        first = sets[0]
        tr, va = split_per_user(first.train, 0.2, np.random.default_rng(1234))
        val = Interactions(tr, va, first.user_cluster, first.item_cluster)
        scores = {wd: _recall(train_mf(val, weight_decay=wd, steps=self.steps, **kw), val, self.k)
                  for wd in self.weight_decays}
        wd = max(scores, key=lambda w: scores[w])
        recs, params = [], []
        for seed, d in enumerate(sets):
            m = train_mf(d, weight_decay=wd, steps=self.steps, seed=seed, **kw)
            recs.append(_recall(m, d, self.k))
            params.append(nonzero_parameters(m))
        return float(np.mean(recs)), int(np.mean(params)), wd

    def run(self, progress: bool = False) -> LabResult:
        torch.set_num_threads(1)
        sets = [implicit_feedback(self.n_users, self.n_items, self.clusters, self.p_in, self.p_out, seed=s)
                for s in range(self.seeds)]
        oracle = float(np.mean([recall_at_k((d.user_cluster[:, None] == d.item_cluster[None, :]).astype(float),
                                            d.train, d.test, self.k) for d in sets]))
        full, full_params, full_wd = self._evaluate(sets, dim=self.dim)
        rows = [["0 (dense)", str(self.dim), str(full_params), f"{full:.3f} (wd {full_wd:g})", "-", "-"]]
        data = []
        for s in self.sparsities:
            small = int(round((1 - s) * self.dim))
            res: dict = {"sparsity": s, "dense_dim": small}
            for name, kw in (("dense", {"dim": small}),
                             ("static", {"dim": self.dim, "sparsity": s, "method": "static"}),
                             ("dsl", {"dim": self.dim, "sparsity": s, "method": "rigl"})):
                res[name], res[f"{name}_params"], res[f"{name}_wd"] = self._evaluate(sets, **kw)
            data.append(res)
            rows.append([f"{s:.3f}", f"{small} dense / {self.dim} sparse",
                         f"{res['dense_params']} / {res['dsl_params']}"]
                        + [f"{res[n]:.3f} (wd {res[n + '_wd']:g})" for n in ("dense", "static", "dsl")])
        table = LabTable(
            f"Recall@{self.k} on held-out interactions: {self.n_users} users x {self.n_items} items in "
            f"{self.clusters} clusters (p_in={self.p_in}, p_out={self.p_out}), MF trained full-batch for "
            f"{self.steps} Adam steps (lr 0.05, weight decay picked from {list(self.weight_decays)} on a validation "
            f"split), mean of {self.seeds} data seeds; the dense baseline at each sparsity has dimension "
            f"(1 - s) x {self.dim}, so its parameter count equals the sparse tables' non-zeros; DSL updates the "
            f"masks every 10 steps until 75% of training; cluster oracle recall@{self.k} = {oracle:.3f}",
            ["sparsity", "dimension", "parameters (dense / sparse)", "dense (smaller dim)",
             "static sparse (random mask)", "DSL (RigL prune/grow)"], rows)
        best = max(data, key=lambda r: r["dsl"] - r["dense"])
        finding = (f"dense MF at dimension {self.dim} reaches recall@{self.k} {full:.3f} (cluster oracle "
                   f"{oracle:.3f}). At equal parameters " +
                   "; ".join(f"s = {r['sparsity']:.3f}: DSL {r['dsl']:.3f}, static sparse {r['static']:.3f}, dense "
                             f"dim {r['dense_dim']} {r['dense']:.3f}" for r in data) +
                   f". The largest DSL gain over the equal-size dense model is {best['dsl'] - best['dense']:+.3f} at "
                   f"s = {best['sparsity']:.3f}.")
        return LabResult(self.name, self.claim, [table], finding,
                         {"dense_full": full, "oracle": oracle, "rows": data})


def _recall(model: MatrixFactorization, data: Interactions, k: int) -> float:
    with torch.no_grad():
        return recall_at_k(model().numpy(), data.train, data.test, k)
