"""Prune first, then unlearn: model sparsity and approximate machine unlearning.

Paper: "Model Sparsity Can Simplify Machine Unlearning" (Jia et al. 2023, papers.txt; code
OPTML-Group/Unlearn-Sparse). Exact unlearning of a forget set D_f is retraining from scratch on the
retain set D_r; approximate unlearners start from the trained model instead. The paper's
unlearners, kept here: **FT** (fine-tune on D_r, so D_f is forgotten by catastrophic forgetting),
**GA** (gradient ascent on the cross-entropy of D_f) and its sparsity-aware unlearner
**l1-sparse** (FT with the penalty ``gamma_t ||theta||_1``, gamma_t decaying linearly to 0 over
the unlearning steps, its eq. 4). "Prune first, then unlearn" runs them on a model pruned by
one-shot magnitude pruning (``sparsecraft.prune``, then fine-tuned on the full data with the mask
fixed); the mask stays fixed during unlearning. Metrics (class-wise forgetting, its Sec. 5):
accuracy on the forget set (UA = 1 - that), on the retain set (RA), on the test set without the
class (TA) and on the test images of the class; the gap to retraining is the mean absolute
difference of these four numbers from the retrained model's (the paper's "averaging gap"); the
retrained reference at sparsity s is trained on D_r only and pruned the same way.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.lab.base import EXPERIMENTS, Experiment, LabResult, LabTable, check_float, check_int, fmt
from sparsecraft.lab.fashion import Data, accuracy, fashion_balanced, fit, mlp

UNLEARNERS = ("ft", "ga", "l1-sparse")
METRICS = ("forget", "retain", "test", "test-forget")


def l1_penalty(model: nn.Module) -> torch.Tensor:
    """``||theta||_1`` over the weight matrices (biases excluded, as the reference's l1 term)."""
    return sum((m.weight.abs().sum() for m in model.modules() if isinstance(m, nn.Linear)), torch.zeros(()))


def linear_decay(gamma: float, steps: int) -> list[float]:
    """The l1-sparse schedule: gamma_t = gamma * (1 - t / steps), t = 0..steps-1."""
    return [gamma * (1 - t / steps) for t in range(steps)]


def unlearn(model: nn.Module, rule: str, retain: tuple[torch.Tensor, torch.Tensor],
            forget: tuple[torch.Tensor, torch.Tensor], *, steps: int, lr: float, gamma: float = 0.0,
            seed: int = 0, batch_size: int = 64) -> nn.Module:
    """Apply the approximate unlearner ``rule`` for ``steps`` Adam steps in place (masks stay hard).

    ``ga``: ascend the cross-entropy of the forget set; ``ft``: descend it on the retain set;
    ``l1-sparse``: ``ft`` plus ``gamma_t ||theta||_1`` with gamma_t = :func:`linear_decay`."""
    data = forget if rule == "ga" else retain
    epochs = -(-steps // max(1, -(-len(data[0]) // batch_size)))
    if rule == "ga":
        fit(model, *data, epochs=epochs, lr=lr, seed=seed, sign=-1.0, max_steps=steps, batch_size=batch_size)
    elif rule == "ft":
        fit(model, *data, epochs=epochs, lr=lr, seed=seed, max_steps=steps, batch_size=batch_size)
    elif rule == "l1-sparse":
        schedule, state = linear_decay(gamma, steps), {"t": 0}

        def penalty(m: nn.Module) -> torch.Tensor:
            g = schedule[min(state["t"], steps - 1)]
            state["t"] += 1
            return g * l1_penalty(m)

        fit(model, *data, epochs=epochs, lr=lr, seed=seed, extra_loss=penalty, max_steps=steps,
            batch_size=batch_size)
    else:
        raise SparsecraftError(f"unknown unlearner {rule!r}; allowed: {', '.join(UNLEARNERS)}")
    return model


def unlearning_metrics(model: nn.Module, data: Data, forget_class: int) -> dict[str, float]:
    """Accuracy on the forget set, the retain set, the test set without the class and the class's test images."""
    x, y, xt, yt = data
    f, ft = y == forget_class, yt == forget_class
    return {"forget": accuracy(model, x[f], y[f]), "retain": accuracy(model, x[~f], y[~f]),
            "test": accuracy(model, xt[~ft], yt[~ft]), "test-forget": accuracy(model, xt[ft], yt[ft])}


def gap(metrics: dict[str, float], reference: dict[str, float]) -> float:
    """Mean |metric - retrained metric| over :data:`METRICS` (the paper's averaging gap)."""
    return sum(abs(metrics[k] - reference[k]) for k in METRICS) / len(METRICS)


def train_pruned(model: nn.Module, sparsity: float, x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float,
                 seed: int) -> nn.Module:
    """A pruned copy: one-shot magnitude pruning (uniform per layer, the classifier dense), then
    ``epochs`` of fine-tuning with the mask fixed (the paper's OMP model). Sparsity 0 = a copy."""
    from sparsecraft import prune

    out = copy.deepcopy(model)
    if sparsity > 0:
        last = [n for n, m in out.named_modules() if isinstance(m, nn.Linear)][-1]
        prune(out, sparsity, criterion="magnitude", ignore=[f"^{last}$"], progress=False)
        fit(out, x, y, epochs=epochs, lr=lr, seed=seed)
    return out


@EXPERIMENTS.register("machine-unlearning")
class MachineUnlearningExperiment(Experiment):
    """Prune first, then unlearn: forget one Fashion-MNIST class with FT / GA / l1-sparse from dense
    and magnitude-pruned MLPs, measured against retraining from scratch."""

    paper = "Model Sparsity Can Simplify Machine Unlearning"
    claim = ("pruning the model before approximate unlearning (prune first, then unlearn) closes the gap "
             "between approximate unlearners (fine-tuning, gradient ascent) and exact retraining; "
             "sparsity-aware l1 unlearning helps fine-tuning most.")

    def __init__(self, sparsities: Sequence[float] = (0.0, 0.5, 0.9, 0.95), unlearners: Sequence[str] = UNLEARNERS,
                 forget_class: int = 0, train_per_class: int = 600, test_per_class: int = 200,
                 hidden: int = 256, epochs: int = 8, prune_epochs: int = 2, lr: float = 1e-3,
                 unlearn_lrs: Sequence[float] = (1e-4, 3e-4, 1e-3), ft_steps: Sequence[int] = (10, 30, 100),
                 ga_steps: Sequence[int] = (5, 10, 20), gamma: float = 1e-3, seed: int = 0,
                 data: Data | None = None) -> None:
        self.sparsities = [check_float("sparsity", s, 0.0, 0.99) for s in sparsities]
        if not self.sparsities:
            raise SparsecraftError("sparsities must list at least one value in [0, 0.99]")
        bad = [u for u in unlearners if u not in UNLEARNERS]
        if bad or not unlearners:
            raise SparsecraftError(f"unknown unlearner(s) {bad}; allowed: {', '.join(UNLEARNERS)}")
        self.unlearners = list(unlearners)
        self.forget_class = check_int("forget_class", forget_class, 0, 9)
        self.train_per_class = check_int("train_per_class", train_per_class, 2, 6000)
        self.test_per_class = check_int("test_per_class", test_per_class, 1, 1000)
        self.hidden = check_int("hidden", hidden, 1)
        self.epochs, self.prune_epochs = check_int("epochs", epochs, 1), check_int("prune_epochs", prune_epochs, 0)
        self.lr = check_float("lr", lr, 0, 1, open_low=True)
        self.unlearn_lrs = [check_float("unlearn_lrs", v, 0, 1, open_low=True) for v in unlearn_lrs]
        self.ft_steps = [check_int("ft_steps", v, 1) for v in ft_steps]
        self.ga_steps = [check_int("ga_steps", v, 1) for v in ga_steps]
        if not (self.unlearn_lrs and self.ft_steps and self.ga_steps):
            raise SparsecraftError("unlearn_lrs, ft_steps and ga_steps must each list at least one value")
        self.gamma = check_float("gamma", gamma, 0, 1)
        self.seed = check_int("seed", seed, 0)
        self.data = data

    def settings(self, rule: str) -> list[tuple[float, int]]:
        """The (learning rate, steps) grid an unlearner is run on (the paper tunes each unlearner)."""
        return [(lr, st) for lr in self.unlearn_lrs for st in (self.ga_steps if rule == "ga" else self.ft_steps)]

    def run(self, progress: bool = False) -> LabResult:
        data = self.data or fashion_balanced(self.train_per_class, self.test_per_class, seed=self.seed)
        x, y = data[0], data[1]
        keep = y != self.forget_class
        if int(keep.sum()) in (0, len(y)):
            raise SparsecraftError(f"forget_class {self.forget_class} must be present and not the only class")
        retain, forget = (x[keep], y[keep]), (x[~keep], y[~keep])
        n_classes = int(max(int(y.max()), int(data[3].max()))) + 1
        original = mlp([x.shape[1], self.hidden, self.hidden, n_classes], self.seed)
        retrained = copy.deepcopy(original)  # same initialisation, trained on D_r only
        fit(original, x, y, epochs=self.epochs, lr=self.lr, seed=self.seed)
        fit(retrained, *retain, epochs=self.epochs, lr=self.lr, seed=self.seed)
        best_rows, results = [], []
        for s in self.sparsities:
            model = train_pruned(original, s, x, y, epochs=self.prune_epochs, lr=self.lr, seed=self.seed)
            ref_model = train_pruned(retrained, s, *retain, epochs=self.prune_epochs, lr=self.lr, seed=self.seed)
            ref = unlearning_metrics(ref_model, data, self.forget_class)
            before = unlearning_metrics(model, data, self.forget_class)
            entry: dict = {"sparsity": s, "retrain": ref, "original": before, "unlearned": {}, "best": {}}
            best_rows.append(self._row(s, "retrain (exact)", "-", ref, ref))
            best_rows.append(self._row(s, "original (no unlearning)", "-", before, ref))
            for rule in self.unlearners:
                for lr, steps in self.settings(rule):
                    m = copy.deepcopy(model)
                    unlearn(m, rule, retain, forget, steps=steps, lr=lr, gamma=self.gamma, seed=self.seed)
                    met = unlearning_metrics(m, data, self.forget_class)
                    entry["unlearned"][(rule, lr, steps)] = {**met, "gap": gap(met, ref)}
                lr, steps = min(self.settings(rule), key=lambda k: entry["unlearned"][(rule, *k)]["gap"])
                entry["best"][rule] = (lr, steps)
                best_rows.append(self._row(s, rule, f"{lr:g} x {steps}", entry["unlearned"][(rule, lr, steps)], ref))
            results.append(entry)
        grid_rows = [[rule, f"{lr:g}", str(steps),
                      *(fmt(100 * e["unlearned"][(rule, lr, steps)]["gap"], 1) for e in results)]
                     for rule in self.unlearners for lr, steps in self.settings(rule)]
        setup = (f"Forget Fashion-MNIST class {self.forget_class}: MLP 784-{self.hidden}-{self.hidden}-10 trained "
                 f"{self.epochs} epochs (Adam) on {self.train_per_class} images per class; sparse = magnitude "
                 f"pruning (uniform per layer, classifier dense) + {self.prune_epochs} epochs with the mask fixed; "
                 f"retrain = same recipe on the retain set; {self.test_per_class} test images per class")
        best = LabTable(f"{setup}. Accuracies in %; each unlearner at its best (lr x Adam steps) of the grid "
                        "below", ["sparsity", "unlearner", "lr x steps", "forget acc (UA = 100 - it)", "retain acc",
                                  "test acc (other classes)", "test acc (forgotten class)", "gap to retrain"],
                        best_rows)
        grid = LabTable(f"Gap to retraining (points) for every unlearning setting; l1-sparse gamma = {self.gamma:g} "
                        "decaying linearly to 0", ["unlearner", "lr", "steps",
                                                   *(f"gap at {e['sparsity']:.0%}" for e in results)], grid_rows)
        return LabResult(self.name, self.claim, [best, grid], self._finding(results), {"results": results})

    @staticmethod
    def _row(s: float, name: str, setting: str, met: dict[str, float], ref: dict[str, float]) -> list[str]:
        return [f"{s:.0%}", name, setting, *(fmt(100 * met[k], 1) for k in METRICS), fmt(100 * gap(met, ref), 1)]

    def _finding(self, results: list[dict]) -> str:
        dense, sparsest = results[0], results[-1]
        parts, wins = [], []
        for rule in self.unlearners:
            bests = ", ".join(f"{e['unlearned'][(rule, *e['best'][rule])]['gap'] * 100:.1f} at {e['sparsity']:.0%}"
                              for e in results)
            parts.append(f"{rule} {bests}")
            grid = self.settings(rule)
            n = sum(sparsest["unlearned"][(rule, *k)]["gap"] < dense["unlearned"][(rule, *k)]["gap"] for k in grid)
            wins.append(f"{rule} {n}/{len(grid)}")
        return ("best gap to retraining (mean |difference| of the four accuracies, points): " + "; ".join(parts)
                + f". Settings where {sparsest['sparsity']:.0%} sparsity has the smaller gap than "
                f"{dense['sparsity']:.0%}: " + ", ".join(wins) + ".")
