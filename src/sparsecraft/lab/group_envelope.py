"""Group envelope (WGSEF) regularisation vs group lasso: neuron sparsity vs accuracy on Fashion-MNIST.

Paper: Refael, Arbel & Huleihel, "Learning k-Level Structured Sparse Neural Networks Using Group
Envelope Regularization" (papers.txt). The regulariser and its prox live in
:mod:`sparsecraft.methods.group_envelope` (method ``"group-envelope"``); the baseline is
:mod:`sparsecraft.methods.group_lasso` (``"group-lasso"``). Both train an MLP with proximal steps on
the output neurons (channel groups) of its hidden layers, then prune the zero groups plus the
lowest-norm ones up to the target neuron sparsity and fine-tune with the masks fixed (library
method ``"static"`` with ``from_model=True``). A plain run (no regulariser, the same prune by
neuron norm, the same fine-tuning) is the reference. Reported per target sparsity: the fraction
of neurons the regulariser had already zeroed when the prune came, the accuracy right after the
prune and after fine-tuning.
"""

from __future__ import annotations

import torch
from torch import nn

import sparsecraft
from sparsecraft.errors import SparsecraftError
from sparsecraft.lab.base import EXPERIMENTS, Experiment, LabResult, LabTable, check_float, check_int, fmt
from sparsecraft.lab.fashion import fashion_random, train_classifier
from sparsecraft.models.vision import mlp
from sparsecraft.training.loop import evaluate

HIDDEN_TARGETS = ["^1$", "^3$"]  # the two hidden Linear layers of models.vision.mlp (classifier stays)


def run_regularised(data: tuple[torch.Tensor, ...], hidden: tuple[int, ...], method: str, lam: float,
                    sparsity: float, epochs: int, finetune_epochs: int, lr: float, seed: int,
                    progress: bool = False) -> dict[str, float]:
    """Train ``method`` ("group-lasso", "group-envelope" or "none") with ``lam``, prune neurons to
    ``sparsity`` at the end, fine-tune; returns zero-group fraction, accuracies, kept neurons."""
    torch.manual_seed(seed)
    model = mlp(hidden=hidden)
    x, y, xt, yt = data
    reg = "group-lasso" if method == "none" else method
    lam_used = 0.0 if method == "none" else lam

    def attach_reg(m: nn.Module, opt: torch.optim.Optimizer, total: int):  # noqa: ANN202
        return sparsecraft.attach(m, opt, method=reg, groups="channel", lam=lam_used, sparsity=sparsity,
                                  total_steps=total, finetune_steps=0, targets=HIDDEN_TARGETS)

    _, reg_method = train_classifier(model, x, y, xt, yt, epochs=epochs, lr=lr, seed=seed, method_fn=attach_reg,
                                     progress=progress)
    assert reg_method is not None
    n_groups = sum(t.layout.rows for t in reg_method.targets)
    zero_frac = sum(reg_method.zero_groups.values()) / n_groups if reg_method.zero_groups else 0.0
    pruned_acc = evaluate(model, xt, yt)[1]
    kept = sum(int(reg_method.mask(t)[:, 0].sum()) for t in reg_method.targets)

    def attach_fixed(m: nn.Module, opt: torch.optim.Optimizer, total: int):  # noqa: ANN202
        return sparsecraft.attach(m, opt, method="static", from_model=True, sparsity=0.0, total_steps=total,
                                  targets=HIDDEN_TARGETS)

    final_acc, _ = train_classifier(model, x, y, xt, yt, epochs=finetune_epochs, lr=lr, seed=seed + 1,
                                    method_fn=attach_fixed, progress=progress)
    return {"zero_frac": zero_frac, "pruned_acc": pruned_acc, "final_acc": final_acc,
            "kept": kept, "groups": n_groups}


@EXPERIMENTS.register("group-envelope")
class GroupEnvelopeExperiment(Experiment):
    """Neuron (channel) sparsity vs Fashion-MNIST accuracy: WGSEF vs group lasso vs prune-only."""

    paper = "Learning k-Level Structured Sparse Neural Networks Using Group Envelope Regularization"
    claim = ("the weighted group sparse envelope function, trained with proximal gradient steps, selects "
             "groups (neurons, filters) so that a sparsity level fixed in advance is reached at convergence, "
             "with negligible accuracy loss, better than other structured-sparsity regularisers.")

    def __init__(self, sparsities: tuple[float, ...] = (0.5, 0.75, 0.9), hidden: tuple[int, ...] = (256, 128),
                 lams_envelope: tuple[float, ...] = (20.0,), lams_lasso: tuple[float, ...] = (3.0, 10.0),
                 n_train: int = 10_000, n_test: int = 10_000,
                 epochs: int = 4, finetune_epochs: int = 1, lr: float = 1e-3, seed: int = 0) -> None:
        self.sparsities = tuple(check_float("sparsities entry", s, 0.0, 0.99) for s in sparsities)
        self.hidden = tuple(check_int("hidden entry", h, 1) for h in hidden)
        if len(self.hidden) != 2:
            raise SparsecraftError(f"hidden must be two widths (the regularised layers), got {hidden!r}")
        self.lams_envelope = tuple(check_float("lams_envelope entry", v, 0.0, 1e6, open_low=True)
                                   for v in lams_envelope)
        self.lams_lasso = tuple(check_float("lams_lasso entry", v, 0.0, 1e6, open_low=True) for v in lams_lasso)
        self.n_train = check_int("n_train", n_train, 10, 60_000)
        self.n_test = check_int("n_test", n_test, 10, 10_000)
        self.epochs = check_int("epochs", epochs, 1)
        self.finetune_epochs = check_int("finetune_epochs", finetune_epochs, 1)
        self.lr = check_float("lr", lr, 0.0, 1.0, open_low=True)
        self.seed = check_int("seed", seed, 0)

    def run(self, progress: bool = False) -> LabResult:
        data = fashion_random(self.n_train, self.n_test, self.seed)
        runs = [("none", 0.0)] + [("group-lasso", v) for v in self.lams_lasso] + [
            ("group-envelope", v) for v in self.lams_envelope]
        results: dict[tuple[str, float, float], dict[str, float]] = {}
        rows = []
        for s in self.sparsities:
            for method, lam in runs:
                r = run_regularised(data, self.hidden, method, lam, s, self.epochs, self.finetune_epochs, self.lr,
                                    self.seed, progress)
                results[method, lam, s] = r
                rows.append([f"{s:.0%}", method, "-" if method == "none" else f"{lam:g}",
                             f"{int(r['kept'])}/{int(r['groups'])}", fmt(100 * r["zero_frac"], 1),
                             fmt(100 * r["pruned_acc"]), fmt(100 * r["final_acc"])])
        table = LabTable(
            f"Fashion-MNIST, MLP 784-{self.hidden[0]}-{self.hidden[1]}-10, groups = output neurons of the two hidden "
            f"layers; {self.n_train} training images, {self.epochs} epochs of Adam (lr {self.lr}, cosine) with the "
            f"proximal step after every step, prune to the target neuron sparsity, {self.finetune_epochs} epochs of "
            f"fine-tuning (lr {self.lr:g}, cosine); test on {self.n_test} images, seed {self.seed}",
            ["neuron sparsity", "regulariser", "lambda", "neurons kept", "zeroed by the prox (%)",
             "accuracy after prune (%)", "after fine-tuning (%)"], rows)
        def best(method: str, s: float, key: str) -> float:
            return max(r[key] for (m, _, s_), r in results.items() if m == method and s_ == s)

        targets = ", ".join(f"{s:.0%}" for s in self.sparsities)
        zeroed = {m: ", ".join(f"{best(m, s, 'zero_frac'):.0%}" for s in self.sparsities)
                  for m in ("group-envelope", "group-lasso")}

        def compare(key: str, digits: int) -> str:
            return "; ".join(f"{s:.0%}: " + " / ".join(f"{100 * best(m, s, key):.{digits}f}"
                                                     for m in ("group-envelope", "group-lasso", "none"))
                             for s in self.sparsities)

        finding = (f"neurons zeroed by the regulariser itself before the prune at targets {targets}: WGSEF "
                   f"{zeroed['group-envelope']}, group lasso (largest over its lambdas) {zeroed['group-lasso']}. "
                   f"Best accuracy right after the prune, WGSEF / group lasso / prune-only: {compare('pruned_acc', 1)}"
                   f". After fine-tuning: {compare('final_acc', 2)}.")
        return LabResult(self.name, self.claim, [table], finding, {"results": results})
