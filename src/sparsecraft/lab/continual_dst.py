"""Continual learning with dynamic sparse training: one sparse subnetwork per task.

Paper: "Continual Learning with Dynamic Sparse Training: Exploring Algorithms for Effective Model
Updates" (Yildirim et al. 2023, papers.txt). Task-incremental learning by parameter isolation:
every task trains its own sparse set of new connections in a shared backbone, found by dynamic
sparse training (DST: SET or RigL drop/grow, :mod:`sparsecraft.methods.dynamic`), while the
connections of earlier tasks stay frozen and are reused (forward transfer); each task has its
own classifier head (multi-head). The paper's finding on the DST components: at low sparsity the
Erdos-Renyi-Kernel (ERK) initial distribution uses the backbone better, at high sparsity the
uniform one is more reliable.

Here: :class:`SharedLinear` holds the frozen weights of finished tasks (``values``, ``owner`` =
task id, 0 = free) and a trainable ``weight`` for the task being learned; the forward weight is
``weight + values * [1 <= owner <= visible]``. :func:`isolated_method` builds the library's SET /
RigL (same update, schedule and distribution code) restricted to the free positions: the initial
mask draws each layer's budget (from the ERK or uniform distribution at the task sparsity) at
random among the free positions and growth never picks an owned one. After a task its kept
weights are written into ``values`` with their owner; evaluating task j shows the weights of
tasks 1..j only, so its accuracy never changes afterwards (no forgetting by construction).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.lab.base import EXPERIMENTS, Experiment, LabResult, LabTable, check_float, check_int, fmt
from sparsecraft.lab.fashion import Data, accuracy, fashion_balanced
from sparsecraft.methods.base import METHODS, SparseMethod
from sparsecraft.training.loop import shuffled_batches

DST_METHODS = ("set", "rigl")
DISTRIBUTIONS = ("erk", "uniform")


class SharedLinear(nn.Linear):
    """A bias-free Linear shared by tasks: frozen weights of finished tasks + this task's ``weight``."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__(n_in, n_out, bias=False)
        self.register_buffer("values", torch.zeros(n_out, n_in))
        self.register_buffer("owner", torch.zeros(n_out, n_in, dtype=torch.int16))
        self.visible = 0  #: tasks 1..visible contribute their frozen weights
        self._frozen = self.values

    def show(self, visible: int) -> None:
        """Let the frozen weights of tasks ``1..visible`` into the forward weight."""
        self.visible = visible
        self._frozen = self.values * ((self.owner > 0) & (self.owner <= visible))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight + self._frozen)

    @torch.no_grad()
    def commit(self, task: int, keep: torch.Tensor) -> int:
        """Freeze this task's kept connections (must be free); returns how many it owns."""
        if bool((self.owner[keep] != 0).any()):
            raise SparsecraftError(f"task {task} kept connections that an earlier task owns")
        self.values[keep] = self.weight[keep]
        self.owner[keep] = task
        self.weight.zero_()
        self.show(self.visible)
        return int(keep.sum())


class MultiHeadNet(nn.Module):
    """Shared sparse body (ReLU between :class:`SharedLinear` layers) and one dense head per task."""

    def __init__(self, sizes: Sequence[int], n_tasks: int, classes_per_task: int, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.ModuleList(SharedLinear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.heads = nn.ModuleList(nn.Linear(sizes[-1], classes_per_task) for _ in range(n_tasks))
        self.task = 0  # 0-based index of the head in use

    def show(self, task: int, own: bool = False) -> None:
        """Use head ``task`` (0-based) and the frozen weights of the earlier tasks (owners ``1..task``),
        with ``own`` also those of ``task`` itself (to evaluate it once it is frozen)."""
        self.task = task
        for layer in self.body:
            layer.show(task + int(own))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.body:
            x = F.relu(layer(x))
        return self.heads[self.task](x)


def isolated_method(name: str, model: MultiHeadNet, optimizer: torch.optim.Optimizer, **config: Any) -> SparseMethod:
    """The library's SET/RigL (``METHODS[name]``) on ``model.body``, confined to free positions."""
    base = METHODS.get(name)

    class Isolated(base):  # type: ignore[valid-type, misc]
        def free(self, target: Any) -> torch.Tensor:
            return target.module.owner == 0

        def initial_masks(self) -> dict[str, torch.Tensor]:
            planned = super().initial_masks()  # per-layer budgets from the distribution
            out = {}
            for t in self.targets:
                free = self.free(t).reshape(-1)
                k = min(int(planned[t.name].sum()), int(free.sum()))
                idx = torch.nonzero(free).flatten()
                pick = idx[torch.randperm(len(idx), generator=self.generator)[:k]]
                keep = torch.zeros_like(free)
                keep[pick] = True
                out[t.name] = keep.view_as(planned[t.name])
            return out

        def grow_scores(self, target: Any) -> torch.Tensor:
            return super().grow_scores(target).float().masked_fill(~self.free(target), float("-inf"))

        def compute_masks(self, step: int) -> dict[str, torch.Tensor]:
            new = super().compute_masks(step)
            return {t.name: new[t.name] & self.free(t) for t in self.targets}

    Isolated.__name__ = f"Isolated{base.__name__}"
    Isolated.registry_name = name  # type: ignore[attr-defined]
    return Isolated(model, optimizer, targets=[r"^body\."], **config).attach()


def train_task(model: MultiHeadNet, task: int, x: torch.Tensor, y: torch.Tensor, *, method: str, sparsity: float,
               distribution: str, epochs: int, lr: float, seed: int, batch_size: int = 32,
               update_every: int = 20) -> dict[str, int]:
    """Learn task ``task`` (0-based) with a fresh sparse subnetwork; freeze it; return connections owned per layer."""
    model.show(task)
    for layer in model.body:
        nn.init.kaiming_uniform_(layer.weight, a=5**0.5)  # nn.Linear's own initialisation, fresh per task
    params = [layer.weight for layer in model.body] + list(model.heads[task].parameters())
    opt = torch.optim.Adam(params, lr=lr)
    total = epochs * -(-len(x) // batch_size)
    dst = isolated_method(method, model, opt, total_steps=total, sparsity=sparsity, distribution=distribution,
                          update={"every": update_every, "stop": 0.75}, seed=seed + task)
    model.train()
    for epoch in range(epochs):
        for idx in shuffled_batches(len(x), batch_size, seed + task, epoch):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    masks = {t.module: dst.mask(t).clone() for t in dst.targets}
    dst.finalize()
    return {f"body.{j}": layer.commit(task + 1, masks[layer]) for j, layer in enumerate(model.body)}


def split_tasks(data: Data, n_tasks: int) -> list[Data]:
    """Task i holds classes 2i and 2i+1, relabelled 0 and 1 (task-incremental split)."""
    x, y, xt, yt = data
    out = []
    for i in range(n_tasks):
        a, b = 2 * i, 2 * i + 1
        m, mt = (y == a) | (y == b), (yt == a) | (yt == b)
        out.append((x[m], (y[m] == b).long(), xt[mt], (yt[mt] == b).long()))
    return out


def run_sequence(tasks: list[Data], *, sizes: Sequence[int], method: str, sparsity: float, distribution: str,
                 epochs: int, lr: float, seed: int) -> dict[str, Any]:
    """Learn the tasks in order; accuracy of every task right after learning it and after the last."""
    model = MultiHeadNet(sizes, len(tasks), 2, seed)
    just, owned = [], []
    for i, (x, y, xt, yt) in enumerate(tasks):
        owned.append(train_task(model, i, x, y, method=method, sparsity=sparsity, distribution=distribution,
                                epochs=epochs, lr=lr, seed=seed))
        model.show(i, own=True)
        just.append(accuracy(model, xt, yt))
    final = []
    for i, (_, _, xt, yt) in enumerate(tasks):
        model.show(i, own=True)
        final.append(accuracy(model, xt, yt))
    sizes_ = [layer.weight.numel() for layer in model.body]
    used = [sum(o[f"body.{j}"] for o in owned) / n for j, n in enumerate(sizes_)]
    return {"just": just, "final": final, "acc": sum(final) / len(final), "owned": owned, "used": used}


@EXPERIMENTS.register("continual-dst")
class ContinualDSTExperiment(Experiment):
    """Task-incremental split Fashion-MNIST (5 two-class tasks, one head each), one SET/RigL
    subnetwork per task in a shared backbone, ERK vs uniform initial distribution, low and high sparsity."""

    paper = "Continual Learning with Dynamic Sparse Training: Exploring Algorithms for Effective Model Updates"
    claim = ("with one DST subnetwork per task (earlier tasks frozen), ERK initialisation uses the backbone "
             "better at low sparsity, uniform initialisation is more reliable at high sparsity.")

    def __init__(self, sparsities: Sequence[float] = (0.8, 0.9, 0.99), methods: Sequence[str] = DST_METHODS,
                 distributions: Sequence[str] = DISTRIBUTIONS, sizes: Sequence[int] = (784, 256, 64),
                 train_per_class: int = 400, test_per_class: int = 500, epochs: int = 2, lr: float = 1e-3,
                 seeds: Sequence[int] = (0, 1), n_tasks: int = 5, data: Data | None = None) -> None:
        self.sparsities = [check_float("sparsity", s, 0.0, 0.999) for s in sparsities]
        for name, given, allowed in (("methods", methods, DST_METHODS), ("distributions", distributions,
                                                                          DISTRIBUTIONS)):
            bad = [v for v in given if v not in allowed]
            if bad or not given:
                raise SparsecraftError(f"{name}: unknown or empty {bad or list(given)}; allowed: {', '.join(allowed)}")
        self.methods, self.distributions = list(methods), list(distributions)
        if len(sizes) < 2:
            raise SparsecraftError(f"sizes must list the input width and at least one hidden width, got {sizes!r}")
        self.sizes = [check_int("sizes", v, 1) for v in sizes]
        self.train_per_class = check_int("train_per_class", train_per_class, 1, 6000)
        self.test_per_class = check_int("test_per_class", test_per_class, 1, 1000)
        self.epochs, self.lr = check_int("epochs", epochs, 1), check_float("lr", lr, 0, 1, open_low=True)
        self.seeds = [check_int("seeds", v, 0) for v in seeds]
        self.n_tasks = check_int("n_tasks", n_tasks, 1, 5)
        if not (self.sparsities and self.seeds):
            raise SparsecraftError("sparsities and seeds must each list at least one value")
        self.data = data

    def run(self, progress: bool = False) -> LabResult:
        data = self.data or fashion_balanced(self.train_per_class, self.test_per_class, seed=0)
        tasks = split_tasks(data, self.n_tasks)
        runs: dict[tuple[float, str, str], list[dict[str, Any]]] = {}
        for s in self.sparsities:
            for dist in self.distributions:
                for m in self.methods:
                    runs[(s, dist, m)] = [run_sequence(tasks, sizes=self.sizes, method=m, sparsity=s,
                                                       distribution=dist, epochs=self.epochs, lr=self.lr, seed=seed)
                                          for seed in self.seeds]
        rows = []
        for (s, dist, m), rs in runs.items():
            accs = [100 * r["acc"] for r in rs]
            task_acc = [100 * sum(r["final"][i] for r in rs) / len(rs) for i in range(self.n_tasks)]
            used = [100 * sum(r["used"][j] for r in rs) / len(rs) for j in range(len(self.sizes) - 1)]
            rows.append([f"{s:.0%}", dist, m, f"{fmt(sum(accs) / len(accs))} ({fmt(min(accs))}-{fmt(max(accs))})",
                         *(fmt(a, 1) for a in task_acc), " / ".join(f"{u:.0f}%" for u in used)])
        table = LabTable(
            f"Average accuracy (%) over {self.n_tasks} two-class tasks after learning all of them, mean of seeds "
            f"{self.seeds}; body {'-'.join(map(str, self.sizes))} (bias-free), one 2-way head per task; "
            f"{self.train_per_class} training images per class, {self.epochs} epochs (Adam) per task, DST update every "
            f"20 steps until 75%; sparsity = of each task's new connections per layer; last column: share of each "
            "body layer owned by some task at the end",
            ["sparsity", "init", "DST", "avg acc (seed range)", *(f"task {i + 1}" for i in range(self.n_tasks)),
             "body used"], rows)
        data_out = {f"{s}/{d}/{m}": rs for (s, d, m), rs in runs.items()}
        return LabResult(self.name, self.claim, [table], self._finding(runs), {"runs": data_out})

    def _finding(self, runs: dict[tuple[float, str, str], list[dict[str, Any]]]) -> str:
        def acc(s: float, d: str) -> float:
            rs = [r for m in self.methods for r in runs[(s, d, m)]]
            return 100 * sum(r["acc"] for r in rs) / len(rs)

        if len(self.distributions) < 2:
            return "only one initial distribution was run."
        parts = []
        for s in self.sparsities:
            e, u = acc(s, "erk"), acc(s, "uniform")
            parts.append(f"{s:.0%}: ERK {e:.2f} vs uniform {u:.2f} ({'ERK' if e > u else 'uniform'} ahead)")
        return ("average accuracy over tasks, seeds and DST methods: " + "; ".join(parts)
                + ". Earlier tasks never lose accuracy (their weights are frozen and later weights are hidden).")
