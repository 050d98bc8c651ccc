"""Searching sparse architectures: random search as the baseline, and a DASS-style differentiable search.

Papers (papers.txt): "Random Search as a Baseline for Sparse Neural Network Architecture Search"
(Dhanraj 2024): random search finds sparse subnetworks that, after training, are *not* better than
random configurations at the same sparsity, so it is a neutral baseline any sparsity-search method
must beat. "DASS: Differentiable Architecture Search for Sparse neural networks" (Mousavi et al.
2022): parametric sparse operations in the search space, mixed DARTS-style with softmax
architecture weights, and a search objective that accounts for the sparsity of the chosen ops.

Here the search space is the per-layer allocation of one global budget: a Fashion-MNIST MLP with
``K = (1 - S) * sum(n_l)`` kept weights, ``k_l`` in layer l. Every allocation is evaluated the same
way: a random mask with exactly ``k_l`` ones per layer (:func:`random_masks`), trained from scratch
with the mask fixed. Baselines: uniform (``k_l = (1-S) n_l``), ERK
(:func:`sparsecraft.distributions.erk_densities`). **Random search** (:func:`random_allocation`):
Dirichlet(1) shares of K (uniformly random over the simplex), rounded exactly by
:func:`~sparsecraft.distributions.exact_counts`; candidates are scored by validation accuracy after
one epoch and the best one is kept. **DASS-style search** (:class:`SparseSearchMLP`): each layer mixes
magnitude-masked copies of its weight, ``W_eff = sum_c softmax(alpha_l)_c (W * top_{d_c}(|W|))`` for
the density choices ``d_c = (1-S) * {1/4, 1/2, 1, 2, 4}`` (capped at 1); weights step on training
batches, alphas on validation batches (first-order bilevel) with the objective
``CE + lam * ((E[kept] - K) / K)^2``, ``E[kept] = sum_l sum_c p_lc d_c n_l``; the argmax choice of
each layer is then rescaled to the budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparsecraft.distributions import erk_densities, exact_counts
from sparsecraft.errors import SparsecraftError
from sparsecraft.lab.base import EXPERIMENTS, Experiment, LabResult, LabTable, check_float, check_int, fmt
from sparsecraft.lab.fashion import Data, accuracy, fashion_balanced, fit, mlp
from sparsecraft.masks import MaskMeta, set_mask
from sparsecraft.training.loop import shuffled_batches

CHOICE_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)


def budget(sizes: Sequence[int], sparsity: float) -> int:
    """K = round((1 - S) * total weights), at least one weight per layer."""
    return max(len(sizes), round((1 - sparsity) * sum(sizes)))


def random_allocation(sizes: Sequence[int], total_keep: int, gen: torch.Generator) -> list[int]:
    """Keep-counts with uniformly random (Dirichlet(1)) shares of ``total_keep``, summing to it exactly."""
    shares = -torch.log(torch.rand(len(sizes), generator=gen, dtype=torch.float64))  # Exp(1) / sum ~ Dirichlet(1)
    shares = shares / shares.sum()
    return exact_counts([float(s) * total_keep / n for s, n in zip(shares, sizes)], sizes, total_keep)


def scaled_allocation(densities: Sequence[float], sizes: Sequence[int], total_keep: int) -> list[int]:
    """Counts proportional to ``densities * sizes`` rescaled to ``total_keep`` (capped per layer, exact total)."""
    mass = sum(d * n for d, n in zip(densities, sizes))
    if mass <= 0:
        raise SparsecraftError("densities must keep at least one weight")
    return exact_counts([d * total_keep / mass for d in densities], sizes, total_keep)


def linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def random_masks(model: nn.Module, counts: Sequence[int], gen: torch.Generator) -> None:
    """Hard random masks with exactly ``counts[l]`` kept weights in the l-th Linear (library masks)."""
    layers = linears(model)
    if len(layers) != len(counts):
        raise SparsecraftError(f"{len(counts)} counts for {len(layers)} Linear layers")
    for layer, k in zip(layers, counts):
        n = layer.weight.numel()
        keep = torch.zeros(n, dtype=torch.bool)
        keep[torch.randperm(n, generator=gen)[:k]] = True
        set_mask(layer, keep.view_as(layer.weight), "weight", MaskMeta(target=1 - k / n, method="random-search"))


def topk_mask(w: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``round(density * n)`` largest |w| (at least one), as a float 0/1 tensor."""
    k = max(1, min(w.numel(), round(density * w.numel())))
    flat = w.detach().abs().reshape(-1)
    thresh = torch.topk(flat, k, sorted=False).values.min()
    return (w.detach().abs() >= thresh).to(w.dtype)


class SparseSearchMLP(nn.Module):
    """The DASS-style supernet: each Linear mixes its weight under several magnitude masks."""

    def __init__(self, sizes: Sequence[int], densities: Sequence[float], seed: int) -> None:
        super().__init__()
        self.net = mlp(sizes, seed)
        self.densities = list(densities)
        self.alpha = nn.Parameter(torch.zeros(len(sizes) - 1, len(self.densities)))

    def probs(self) -> torch.Tensor:
        return torch.softmax(self.alpha, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.probs()
        layers = linears(self.net)
        for i, layer in enumerate(layers):
            w = sum(p[i, c] * layer.weight * topk_mask(layer.weight, d) for c, d in enumerate(self.densities))
            x = F.linear(x, w, layer.bias)
            if i < len(layers) - 1:
                x = F.relu(x)
        return x

    def expected_kept(self) -> torch.Tensor:
        sizes = torch.tensor([float(m.weight.numel()) for m in linears(self.net)])
        return (self.probs() * torch.tensor(self.densities)).sum(1) @ sizes

    def choice(self) -> list[float]:
        return [self.densities[int(i)] for i in self.alpha.argmax(1)]


def dass_search(sizes: Sequence[int], sparsity: float, train: tuple[torch.Tensor, torch.Tensor],
                val: tuple[torch.Tensor, torch.Tensor], *, epochs: int, lr: float, alpha_lr: float, lam: float,
                seed: int, batch_size: int = 64) -> tuple[list[int], SparseSearchMLP]:
    """First-order bilevel search; returns the budget-exact allocation of the argmax choices."""
    d = 1 - sparsity
    model = SparseSearchMLP(sizes, sorted({min(1.0, f * d) for f in CHOICE_FACTORS}), seed)
    w_opt = torch.optim.Adam(model.net.parameters(), lr=lr)
    a_opt = torch.optim.Adam([model.alpha], lr=alpha_lr)
    layer_sizes = [a * b for a, b in zip(sizes[:-1], sizes[1:])]
    K = budget(layer_sizes, sparsity)
    vx, vy = val
    for epoch in range(epochs):
        for step, idx in enumerate(shuffled_batches(len(train[0]), batch_size, seed, epoch)):
            w_opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(train[0][idx]), train[1][idx]).backward()
            w_opt.step()
            vidx = shuffled_batches(len(vx), batch_size, seed + 1, epoch * 100_000 + step)[0]
            a_opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(vx[vidx]), vy[vidx]) + lam * ((model.expected_kept() - K) / K) ** 2
            loss.backward()
            a_opt.step()
    return scaled_allocation(model.choice(), layer_sizes, K), model


def train_allocation(sizes: Sequence[int], counts: Sequence[int], train: tuple[torch.Tensor, torch.Tensor], *,
                     epochs: int, lr: float, seed: int, val: tuple[torch.Tensor, torch.Tensor] | None = None
                     ) -> tuple[nn.Module, float | None]:
    """Train the MLP from scratch under random masks with these counts; also the validation
    accuracy after the first epoch (the random-search proxy) when ``val`` is given."""
    model = mlp(sizes, seed)
    random_masks(model, counts, torch.Generator().manual_seed(seed))
    fit(model, *train, epochs=1, lr=lr, seed=seed)
    proxy = accuracy(model, *val) if val is not None else None
    if epochs > 1:
        fit(model, *train, epochs=epochs - 1, lr=lr, seed=seed + 1)
    return model, proxy


@EXPERIMENTS.register("sparse-search")
class SparseSearchExperiment(Experiment):
    """Per-layer sparsity allocation of a Fashion-MNIST MLP at a fixed global budget: uniform, ERK,
    random search (best of N by a one-epoch proxy) and a DASS-style differentiable search."""

    paper = ("Random Search as a Baseline for Sparse Neural Network Architecture Search; "
             "DASS: Differentiable Architecture Search for Sparse neural networks")
    claim = ("networks found by random search perform no better after training than random configurations at "
             "the same sparsity (a neutral baseline); a differentiable, sparsity-aware search (DASS) finds better "
             "sparse architectures.")

    def __init__(self, sparsities: Sequence[float] = (0.9, 0.98), sizes: Sequence[int] = (784, 300, 100, 10),
                 candidates: int = 8, train_per_class: int = 600, val_per_class: int = 100,
                 test_per_class: int = 300, epochs: int = 3, search_epochs: int = 2, lr: float = 1e-3,
                 alpha_lr: float = 1e-2, lam: float = 10.0, train_seeds: Sequence[int] = (0, 1),
                 data: Data | None = None) -> None:
        self.sparsities = [check_float("sparsity", s, 0.0, 0.999) for s in sparsities]
        if len(sizes) < 2:
            raise SparsecraftError(f"sizes must list at least an input and an output width, got {sizes!r}")
        self.sizes = [check_int("sizes", v, 1) for v in sizes]
        self.candidates = check_int("candidates", candidates, 2)
        self.train_per_class = check_int("train_per_class", train_per_class, 2, 6000)
        self.val_per_class = check_int("val_per_class", val_per_class, 1, self.train_per_class - 1)
        self.test_per_class = check_int("test_per_class", test_per_class, 1, 1000)
        self.epochs, self.search_epochs = check_int("epochs", epochs, 1), check_int("search_epochs", search_epochs, 1)
        self.lr, self.alpha_lr = check_float("lr", lr, 0, 1, open_low=True), check_float("alpha_lr", alpha_lr, 0, 1)
        self.lam = check_float("lam", lam, 0, 1e6)
        self.train_seeds = [check_int("train_seeds", v, 0) for v in train_seeds]
        if not (self.sparsities and self.train_seeds):
            raise SparsecraftError("sparsities and train_seeds must each list at least one value")
        self.data = data

    def _split(self) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor],
                              tuple[torch.Tensor, torch.Tensor]]:
        x, y, xt, yt = self.data or fashion_balanced(self.train_per_class, self.test_per_class, seed=0)
        n_val = round(len(x) * self.val_per_class / self.train_per_class)
        return (x[n_val:], y[n_val:]), (x[:n_val], y[:n_val]), (xt, yt)

    def run(self, progress: bool = False) -> LabResult:
        train, val, test = self._split()
        layer_sizes = [a * b for a, b in zip(self.sizes[:-1], self.sizes[1:])]
        shapes = [(b, a) for a, b in zip(self.sizes[:-1], self.sizes[1:])]
        rows, results = [], []
        for s in self.sparsities:
            K = budget(layer_sizes, s)
            entry: dict[str, Any] = {"sparsity": s, "budget": K}

            def fixed(counts: list[int]) -> dict[str, Any]:
                accs = [accuracy(train_allocation(self.sizes, counts, train, epochs=self.epochs, lr=self.lr,
                                                  seed=seed)[0], *test) for seed in self.train_seeds]
                return {"counts": counts, "acc": sum(accs) / len(accs), "accs": accs}

            entry["uniform"] = fixed(exact_counts([1 - s] * len(layer_sizes), layer_sizes, K))
            entry["erk"] = fixed(scaled_allocation(erk_densities(shapes, 1 - s, kernel=False), layer_sizes, K))
            cands = []
            for i in range(self.candidates):
                counts = random_allocation(layer_sizes, K, torch.Generator().manual_seed(1000 + i))
                model, proxy = train_allocation(self.sizes, counts, train, epochs=self.epochs, lr=self.lr,
                                                seed=1000 + i, val=val)
                cands.append({"counts": counts, "proxy": proxy, "acc": accuracy(model, *test)})
            entry["candidates"] = cands
            pick = max(cands, key=lambda c: c["proxy"])
            entry["random-search"] = pick
            counts, supernet = dass_search(self.sizes, s, train, val, epochs=self.search_epochs, lr=self.lr,
                                           alpha_lr=self.alpha_lr, lam=self.lam, seed=0)
            entry["dass"] = {**fixed(counts), "probs": supernet.probs().detach().tolist(),
                             "supernet_acc": accuracy(supernet, *test)}
            accs = [c["acc"] for c in cands]
            mean = sum(accs) / len(accs)
            std = (sum((a - mean) ** 2 for a in accs) / max(1, len(accs) - 1)) ** 0.5
            entry["random"] = {"mean": mean, "std": std, "best": max(accs)}

            def dens(counts: list[int]) -> str:
                return " / ".join(f"{100 * k / n:.1f}" for k, n in zip(counts, layer_sizes))

            nseeds = f"mean of {len(self.train_seeds)} seeds"
            rows += [[f"{s:.0%}", "uniform", dens(entry["uniform"]["counts"]), fmt(100 * entry["uniform"]["acc"]),
                      nseeds],
                     [f"{s:.0%}", "ERK", dens(entry["erk"]["counts"]), fmt(100 * entry["erk"]["acc"]), nseeds],
                     [f"{s:.0%}", f"random allocations (N = {self.candidates})", "Dirichlet(1)",
                      f"{100 * mean:.2f} +- {100 * std:.2f} (best {100 * max(accs):.2f})", "one seed each"],
                     [f"{s:.0%}", "random search (best 1-epoch val acc)", dens(pick["counts"]),
                      fmt(100 * pick["acc"]), f"its own run; proxy {100 * pick['proxy']:.1f}"],
                     [f"{s:.0%}", "DASS-style search", dens(entry["dass"]["counts"]), fmt(100 * entry["dass"]["acc"]),
                      f"{nseeds}; supernet {100 * entry['dass']['supernet_acc']:.1f}"]]
            results.append(entry)
        arch = "-".join(map(str, self.sizes))
        table = LabTable(f"Test accuracy (%) of MLP {arch} trained {self.epochs} epochs (Adam) from scratch under a "
                         f"random mask with the given per-layer densities (%, layer by layer), equal global budget; "
                         f"{len(train[0])} training / {len(val[0])} validation images, {len(test[0])} test images; "
                         f"DASS-style search {self.search_epochs} epochs, lambda {self.lam:g}",
                         ["sparsity", "allocation", "densities (%)", "test acc", "note"], rows)
        return LabResult(self.name, self.claim, [table], self._finding(results), {"results": results})

    @staticmethod
    def _finding(results: list[dict[str, Any]]) -> str:
        parts = []
        for e in results:
            r = e["random"]
            z = (e["random-search"]["acc"] - r["mean"]) / r["std"] if r["std"] > 0 else 0.0
            parts.append(f"at {e['sparsity']:.0%} the random-search pick scores {100 * e['random-search']['acc']:.2f} "
                         f"against {100 * r['mean']:.2f} +- {100 * r['std']:.2f} for random allocations ({z:+.1f} sd); "
                         f"DASS-style {100 * e['dass']['acc']:.2f}, uniform {100 * e['uniform']['acc']:.2f}, "
                         f"ERK {100 * e['erk']['acc']:.2f}")
        return "; ".join(parts) + "."
