"""Sparse Iso-FLOP Transformations (Sparse-IFT) of an MLP, trained with static random masks.

Paper: Thangarasa et al., "Sparse-IFT: Sparse Iso-FLOP Transformations for Maximizing Training
Efficiency" (papers.txt); rule in ALGORITHMS.md "Iso-FLOP layers". Each dense layer ``f_in -> f_out``
is replaced by a family at sparsity ``s`` whose non-zero multiply-accumulates (MACs, = non-zero
weights) equal the dense layer's, with ``k = round(1 / (1 - s))``:

* **Sparse Wide**: every hidden width times ``sqrt(k)`` (rounded), each layer at sparsity
  ``1 - f_in f_out / (f_in' f_out')`` (= ``s`` for hidden-to-hidden layers up to the rounding);
* **Sparse Parallel**: ``k`` parallel ``f_in -> f_out`` branches at sparsity ``s``, summed;
* **Sparse Factorized**: ``U (f_in -> d)``, ReLU, ``V (d -> f_out)``, both at sparsity ``s``,
  ``d = ceil(f_in f_out / ((1 - s)(f_in + f_out)))`` (the conv-3x3 formula with kernel size 1);
* **Sparse Doped**: the layer at sparsity ``s`` plus a dense low-rank path ``V U`` of rank
  ``r = floor(s f_in f_out / (f_in + f_out))``.

Masks come from the library's static sparse training (:mod:`sparsecraft.methods.static`: random
masks, fixed from initialisation) with an explicit per-layer sparsity map, so the non-zero
counts are exact; the dense low-rank path of Doped is left out of the targets. Departures: the
transformation covers every layer but the classifier (the paper keeps stem and head dense; in a
784-input MLP the first layer holds most of the FLOPs, so leaving it dense would hide the
transformation). Sparse Wide widens the classifier's input too; that layer (and the first
layer, whose input is fixed) gets the sparsity that keeps its non-zeros at the dense count.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

import sparsecraft
from sparsecraft.errors import SparsecraftError
from sparsecraft.lab.base import EXPERIMENTS, Experiment, LabResult, LabTable, check_float, check_int, fmt
from sparsecraft.lab.fashion import fashion_random, train_classifier
from sparsecraft.masks import MASK_SUFFIX

TRANSFORMS = ("wide", "parallel", "factorized", "doped")


def iso_flop_k(s: float) -> int:
    """``k = round(1 / (1 - s))``: the FLOP budget multiplier a sparsity ``s`` frees up."""
    if not 0.0 <= s < 1.0:
        raise SparsecraftError(f"sparsity must be in [0, 1), got {s!r}")
    return round(1.0 / (1.0 - s))


def factorized_width(f_in: int, f_out: int, s: float) -> int:
    """Inner width d of Sparse Factorized: ``ceil(f_in f_out / ((1 - s)(f_in + f_out)))``."""
    return math.ceil(f_in * f_out / ((1.0 - s) * (f_in + f_out)) - 1e-9)


def doped_rank(f_in: int, f_out: int, s: float) -> int:
    """Rank r of Sparse Doped's dense low-rank path: ``floor(s f_in f_out / (f_in + f_out))``."""
    return math.floor(s * f_in * f_out / (f_in + f_out) + 1e-9)


class SparseParallel(nn.Module):
    """``k`` parallel linear branches whose outputs are summed."""

    def __init__(self, f_in: int, f_out: int, k: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList(nn.Linear(f_in, f_out) for _ in range(k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(b(x) for b in self.branches)  # type: ignore[return-value]


class SparseFactorized(nn.Module):
    """``V(relu(U x))`` with ``U: f_in -> d``, ``V: d -> f_out``."""

    def __init__(self, f_in: int, f_out: int, d: int) -> None:
        super().__init__()
        self.u, self.v = nn.Linear(f_in, d), nn.Linear(d, f_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.v(torch.relu(self.u(x)))


class SparseDoped(nn.Module):
    """A (sparse) layer plus a dense rank-``r`` path: ``W_s x + V (U x)``."""

    def __init__(self, f_in: int, f_out: int, r: int) -> None:
        super().__init__()
        self.sparse = nn.Linear(f_in, f_out)
        self.low_u = nn.Linear(f_in, r, bias=False)
        self.low_v = nn.Linear(r, f_out, bias=False)
        nn.init.zeros_(self.low_v.weight)  # starts as the plain sparse layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sparse(x) + self.low_v(self.low_u(x))


def build_mlp(widths: tuple[int, ...], transform: str = "dense",
              s: float = 0.0) -> tuple[nn.Sequential, dict[str, float]]:
    """MLP ``widths[0] -> ... -> widths[-1]`` (ReLU between layers), every layer but the last
    transformed by ``transform``; returns (model, {weight name: sparsity}) for the masks."""
    if transform != "dense" and transform not in TRANSFORMS:
        raise SparsecraftError(f"unknown transform {transform!r}; allowed: dense, {', '.join(TRANSFORMS)}")
    if len(widths) < 2 or any(int(w) < 1 for w in widths):
        raise SparsecraftError(f"widths need >= 2 positive sizes, got {widths!r}")
    k = iso_flop_k(s) if transform != "dense" else 1
    dims = list(widths)
    if transform == "wide":
        dims = [widths[0]] + [round(w * math.sqrt(k)) for w in widths[1:-1]] + [widths[-1]]
    layers: list[nn.Module] = []
    sparsities: dict[str, float] = {}
    n = len(widths) - 1
    for i in range(n):
        f_in, f_out, name = dims[i], dims[i + 1], str(len(layers))
        dense_macs = widths[i] * widths[i + 1]
        if transform == "wide":
            layer: nn.Module = nn.Linear(f_in, f_out)
            sparsities[f"{name}.weight"] = 1.0 - dense_macs / (f_in * f_out)
        elif i == n - 1 or transform == "dense":
            layer = nn.Linear(f_in, f_out)
        elif transform == "parallel":
            layer = SparseParallel(f_in, f_out, k)
            sparsities.update({f"{name}.branches.{b}.weight": s for b in range(k)})
        elif transform == "factorized":
            layer = SparseFactorized(f_in, f_out, factorized_width(f_in, f_out, s))
            sparsities.update({f"{name}.u.weight": s, f"{name}.v.weight": s})
        else:
            layer = SparseDoped(f_in, f_out, doped_rank(f_in, f_out, s))
            sparsities[f"{name}.sparse.weight"] = s
        layers.append(layer)
        if i < n - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers), {k_: v for k_, v in sparsities.items() if v > 0}


def attach_static(model: nn.Module, sparsities: dict[str, float], optimizer: torch.optim.Optimizer | None,
                  total_steps: int = 1, seed: int = 0, rescale: bool = True):  # noqa: ANN201
    """Static random masks at exactly the given per-weight sparsities (library method "static").
    ``rescale`` multiplies the surviving weights by ``1 / sqrt(density)`` so a unit's pre-activation
    variance matches the dense initialisation (sparse-aware init, Evci et al. 2022)."""
    names = ["^" + re.escape(n) + "$" for n in sparsities]
    method = sparsecraft.attach(model, optimizer, method="static", sparsity=0.0, total_steps=total_steps,
                                distribution={"type": "explicit", "sparsities": dict(zip(names, sparsities.values()))},
                                targets=names, seed=seed)
    if rescale:
        with torch.no_grad():
            for t in method.targets:
                t.param.mul_(1.0 / math.sqrt(1.0 - sparsities[t.name]))
    return method


def nonzero_macs(model: nn.Module) -> int:
    """Multiply-accumulates per example of every Linear on a sparse kernel: the mask's kept count
    for a masked weight, all entries for a dense one."""
    total = 0
    for m in model.modules():
        if isinstance(m, nn.Linear):
            mask = getattr(m, "weight" + MASK_SUFFIX, None)
            total += int(mask.sum()) if mask is not None else m.weight.numel()
    return total


@EXPERIMENTS.register("sparse-ift")
class SparseIFTExperiment(Experiment):
    """Fashion-MNIST accuracy of dense vs Sparse Wide / Parallel / Factorized / Doped MLPs at equal
    non-zero FLOPs, for several sparsities (static random masks)."""

    paper = "Sparse-IFT: Sparse Iso-FLOP Transformations for Maximizing Training Efficiency"
    claim = ("replacing dense layers by sparse families with the same FLOPs (wider, parallel, factorized "
             "or low-rank-doped layers at sparsity s) improves accuracy over the dense model, more so as s "
             "grows; Sparse Wide is the strongest member.")

    def __init__(self, sparsities: tuple[float, ...] = (0.5, 0.75, 0.9), widths: tuple[int, ...] = (784, 96, 96, 10),
                 transforms: tuple[str, ...] = TRANSFORMS, n_train: int = 30_000, n_test: int = 10_000,
                 epochs: int = 10, lr: float = 1e-3, seed: int = 0) -> None:
        self.sparsities = tuple(check_float("sparsities entry", s, 0.0, 0.95) for s in sparsities)
        for t in transforms:
            if t not in TRANSFORMS:
                raise SparsecraftError(f"unknown transform {t!r}; allowed: {', '.join(TRANSFORMS)}")
        self.transforms = tuple(transforms)
        self.widths = tuple(check_int("widths entry", w, 1) for w in widths)
        if self.widths[0] != 784 or self.widths[-1] != 10 or len(self.widths) < 3:
            raise SparsecraftError(f"widths must start at 784, end at 10 and have a hidden layer, got {widths!r}")
        self.n_train = check_int("n_train", n_train, 10, 60_000)
        self.n_test = check_int("n_test", n_test, 10, 10_000)
        self.epochs = check_int("epochs", epochs, 1)
        self.lr = check_float("lr", lr, 0.0, 1.0, open_low=True)
        self.seed = check_int("seed", seed, 0)

    def _run_one(self, data: tuple[torch.Tensor, ...], transform: str, s: float,
                 progress: bool) -> tuple[float, int, int]:
        torch.manual_seed(self.seed)
        model, sp = build_mlp(self.widths, transform, s)

        def method_fn(m: nn.Module, opt: torch.optim.Optimizer, total: int):  # noqa: ANN202
            return attach_static(m, sp, opt, total, self.seed) if sp else None

        acc, _ = train_classifier(model, *data, epochs=self.epochs, lr=self.lr, seed=self.seed,
                                  method_fn=method_fn, progress=progress)
        dense_params = sum(p.numel() for n, p in model.named_parameters() if n.endswith("weight"))
        return acc, nonzero_macs(model), dense_params

    def run(self, progress: bool = False) -> LabResult:
        data = fashion_random(self.n_train, self.n_test, self.seed)
        dense_acc, dense_macs, _ = self._run_one(data, "dense", 0.0, progress)
        rows = [["dense", "-", "-", str(dense_macs), "1.00", "-", fmt(100 * dense_acc)]]
        acc: dict[tuple[str, float], float] = {}
        macs: dict[tuple[str, float], int] = {}
        for s in self.sparsities:
            for t in self.transforms:
                a, m, total = self._run_one(data, t, s, progress)
                acc[t, s], macs[t, s] = a, m
                rows.append([t, f"{s:.0%}", str(iso_flop_k(s)), str(m), fmt(m / dense_macs, 3), str(total),
                             fmt(100 * a)])
        table = LabTable(
            f"Fashion-MNIST test accuracy (%), MLP {'-'.join(map(str, self.widths))}, every layer but the "
            f"classifier transformed; {self.n_train} training images, {self.epochs} epochs of Adam (lr {self.lr}, "
            f"cosine), static random masks, test on {self.n_test} images, seed {self.seed}. MACs = non-zero "
            "weights after masking (per example); 'weights' = all weight entries incl. masked ones",
            ["transform", "s", "k", "non-zero MACs", "MACs / dense", "weights (dense storage)", "accuracy"], rows)
        best = max(acc, key=acc.get) if acc else None
        wins = sum(a > dense_acc for a in acc.values())
        per_s = "; ".join(f"s={s:.0%}: " + ", ".join(f"{t} {100 * acc[t, s]:.2f}" for t in self.transforms)
                          for s in self.sparsities)
        finding = (f"dense {100 * dense_acc:.2f}%; {per_s}. {wins} of {len(acc)} transformed models beat the dense "
                   f"one at the same non-zero MACs (ratios {min(m / dense_macs for m in macs.values()):.3f}-"
                   f"{max(m / dense_macs for m in macs.values()):.3f})"
                   + (f"; best: {best[0]} at s={best[1]:.0%} ({100 * acc[best]:.2f}%)." if best else "."))
        return LabResult(self.name, self.claim, [table], finding,
                         {"dense_acc": dense_acc, "dense_macs": dense_macs, "acc": acc, "macs": macs})
