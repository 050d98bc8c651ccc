"""PST: parameter-efficient sparse fine-tuning (importance = magnitude + small learned matrices).

Paper: Li et al., "Parameter-Efficient Sparsity for Large Language Models Fine-Tuning" (IJCAI
2022, papers.txt). Movement pruning (Sanh et al. 2020) learns a dense score matrix S next to the
dense weight W (2x the model's parameters trainable); PST observes that the data-driven part of
the importance is low-rank and structured and replaces every large matrix by small ones. For a
(n, k) linear weight W, frozen:

* the weight update is low-rank (LoRA-like): ``W' = W + beta * U V`` with U (n, r), V (r, k);
* the importance is data-free magnitude plus a data-driven part built from small matrices
  (low-rank ``A B``, A (n, r_m), B (r_m, k), and structured row / column vectors R (n), C (k)):
  ``S = |W'| + alpha1 * A B + alpha2 * (R 1^T + 1 C^T)``;
* the mask keeps the top ``(1 - s)`` fraction of S in the matrix, ``M = Top(S)``, and the layer
  computes ``y = x (M * W')^T + b``. The mask's gradient goes straight through to S
  (dL/dS = dL/dM = dL/d(M W') * W', the movement-pruning estimator), so A, B, R, C learn which
  weights matter for the task;
* s follows the cubic schedule of Zhu & Gupta from 0 to the target sparsity between a dense
  warm-up and a final stretch at the target (:func:`cubic_sparsity`).

Trainable per (n, k) layer: ``(n + k)(r + r_m) + n + k`` instead of ``n k`` (fine-tuning) or
``2 n k`` (movement pruning's weights and scores).

Baselines (:class:`MaskedLinear`, mask applied in the forward pass, all weights trainable):
*movement* pruning with the core ``movement`` criterion (scores ``-sum_t W * dL/dW'`` accumulated
from the dense gradient of the masked weight, so pruned weights keep collecting score) and
*magnitude* pruning (core ``magnitude`` criterion, MaP) on the same schedule.

The task (:mod:`sparsecraft.lab.play_lines`): all-MiniLM-L6-v2 with a linear head learns which of
four plays a two-line passage comes from; the 36 linear layers of its 6 encoder layers are sparse.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparsecraft.criteria import Magnitude, Movement
from sparsecraft.errors import SparsecraftError
from sparsecraft.lab.base import EXPERIMENTS, Experiment, LabResult, LabTable, check_float, check_int, fmt
from sparsecraft.lab.play_lines import EncoderClassifier, accuracy, play_task, probe_head
from sparsecraft.patterns import Unstructured
from sparsecraft.schedules import Polynomial
from sparsecraft.targets import Target, find_targets
from sparsecraft.training.loop import lr_at, run_steps, shuffled_batches

METHODS = ("pst", "movement", "magnitude")
ENCODER_LINEARS = r"encoder\.layer\.\d+\..*(query|key|value|dense)$"


def check_sparsity(sparsity: Any) -> float:
    """``sparsity`` as a float in [0, 1) or a one-line error."""
    ok = isinstance(sparsity, (int, float)) and not isinstance(sparsity, bool) and 0.0 <= sparsity < 1.0
    if not ok:
        raise SparsecraftError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    return float(sparsity)


class TopKStraightThrough(torch.autograd.Function):
    """Forward: the keep-mask (1.0 / 0.0) of the top ``(1 - sparsity)`` fraction of ``scores``
    (the core unstructured pattern: exactly ``floor(s n)`` lowest pruned, ties by position).
    Backward: the gradient passes unchanged to the scores (straight-through)."""

    @staticmethod
    def forward(ctx: Any, scores: torch.Tensor, sparsity: float) -> torch.Tensor:
        return Unstructured().mask(scores.detach(), sparsity).to(scores.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def pst_importance(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, r: torch.Tensor, c: torch.Tensor,
                   alpha1: float = 1.0, alpha2: float = 1.0) -> torch.Tensor:
    """PST's importance ``|W| + alpha1 A B + alpha2 (r 1^T + 1 c^T)`` of a (n, k) weight."""
    return weight.abs() + alpha1 * (a @ b) + alpha2 * (r[:, None] + c[None, :])


class PSTLinear(nn.Module):
    """A linear layer under PST: the wrapped weight and bias frozen, U, V (weight update) and
    A, B, R, C (importance) trainable; ``sparsity`` is the current target (set by the schedule).
    U and A start ~ N(0, init_std^2), V, B, R, C at zero, so W' = W and S = |W| at the start."""

    def __init__(self, linear: nn.Linear, rank: int = 8, mask_rank: int = 8, *, beta: float = 1.0,
                 alpha1: float = 1.0, alpha2: float = 1.0, init_std: float = 0.02, seed: int = 0) -> None:
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise SparsecraftError(f"PSTLinear wraps an nn.Linear, got {type(linear).__name__}")
        check_int("rank", rank, 1)
        check_int("mask_rank", mask_rank, 1)
        n, k = linear.weight.shape
        self.weight, self.bias = linear.weight, linear.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        g = torch.Generator().manual_seed(seed)
        dtype = linear.weight.dtype
        self.U = nn.Parameter(torch.randn(n, rank, generator=g, dtype=dtype) * init_std)
        self.V = nn.Parameter(torch.zeros(rank, k, dtype=dtype))
        self.A = nn.Parameter(torch.randn(n, mask_rank, generator=g, dtype=dtype) * init_std)
        self.B = nn.Parameter(torch.zeros(mask_rank, k, dtype=dtype))
        self.R = nn.Parameter(torch.zeros(n, dtype=dtype))
        self.C = nn.Parameter(torch.zeros(k, dtype=dtype))
        self.beta, self.alpha1, self.alpha2 = float(beta), float(alpha1), float(alpha2)
        self.sparsity = 0.0

    def adapted_weight(self) -> torch.Tensor:
        """``W' = W + beta U V``."""
        return self.weight + self.beta * (self.U @ self.V)

    def importance(self, adapted: torch.Tensor | None = None) -> torch.Tensor:
        """``S = |W'| + alpha1 A B + alpha2 (R 1^T + 1 C^T)``."""
        w = self.adapted_weight() if adapted is None else adapted
        return pst_importance(w, self.A, self.B, self.R, self.C, self.alpha1, self.alpha2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.adapted_weight()
        mask = TopKStraightThrough.apply(self.importance(w), self.sparsity)
        return F.linear(x, mask * w, self.bias)

    @torch.no_grad()
    def sparse_weight(self) -> torch.Tensor:
        """The deployable weight ``Top(S) * W'`` (U, V, A, B, R, C merged away)."""
        w = self.adapted_weight()
        return Unstructured().mask(self.importance(w), self.sparsity) * w


class MaskedLinear(nn.Module):
    """Baseline layer: weight and bias trainable, the forward pass uses ``keep * W``. When
    ``on_grad`` is set, it receives the dense gradient dL/d(keep * W) of every backward pass (the
    movement score of pruned weights keeps moving, as in Sanh et al.)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise SparsecraftError(f"MaskedLinear wraps an nn.Linear, got {type(linear).__name__}")
        self.weight, self.bias = linear.weight, linear.bias
        self.register_buffer("keep", torch.ones_like(linear.weight, dtype=torch.bool))
        self.on_grad: Any = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight * self.keep
        if self.on_grad is not None and w.requires_grad:
            w.register_hook(self.on_grad)
        return F.linear(x, w, self.bias)


def wrap_linears(model: nn.Module, make: Any, targets: Sequence[str] | None = None,
                 ignore: Sequence[str] | None = None) -> dict[str, nn.Module]:
    """Replace every ``nn.Linear`` of ``model`` matched by ``targets`` / ``ignore`` (regexes, as
    everywhere) by ``make(linear)``; tied weights stay untouched. Returns name -> wrapper."""
    found = [t for t in find_targets(model, targets, ignore)
             if type(t.module) is nn.Linear and t.param_name == "weight" and not t.aliases]
    if not found:
        raise SparsecraftError(f"no untied nn.Linear layer matches targets={list(targets or [])} "
                               f"ignore={list(ignore or [])}")
    wrapped = {}
    for t in found:
        parent_name, _, child = t.module_name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        wrapped[t.module_name] = make(t.module)
        setattr(parent, child, wrapped[t.module_name])
    return wrapped


def trainable_parameters(model: nn.Module) -> int:
    """Number of parameter entries with ``requires_grad``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def cubic_sparsity(final: float, total_steps: int, warmup: float = 0.1, cooldown: float = 0.3) -> Polynomial:
    """The cubic schedule: 0 for the first ``warmup`` fraction of the steps, then
    ``s_t = final * (1 - (1 - p)^3)``, then ``final`` for the last ``cooldown`` fraction."""
    check_sparsity(final)
    check_int("total_steps", total_steps, 1)
    check_float("warmup", warmup, 0.0, 1.0)
    check_float("cooldown", cooldown, 0.0, 1.0)
    if warmup + cooldown > 1.0:
        raise SparsecraftError(f"warmup + cooldown must be <= 1, got {warmup} + {cooldown}")
    start = round(warmup * total_steps)
    end = max(start, total_steps - round(cooldown * total_steps))
    return Polynomial(final=final, initial=0.0, start=start, end=end)


def sparsify(model: nn.Module, method: str, targets: Sequence[str] | None = None, *,
             ignore: Sequence[str] | None = None, rank: int = 8, mask_rank: int = 8, init_std: float = 0.02,
             trainable: Sequence[str] = ("head",), seed: int = 0) -> dict[str, Any]:
    """Prepare ``model`` for sparse fine-tuning with ``method`` (pst, movement or magnitude).

    pst: every linear matched by ``targets`` / ``ignore`` becomes a :class:`PSTLinear`; all other
    parameters are frozen except those of the modules named in ``trainable`` (e.g. a task head).
    movement / magnitude: :class:`MaskedLinear` layers, every parameter trainable. Returns the
    state :func:`set_sparsity` needs: ``method``, ``layers`` (name -> wrapper), ``targets`` and
    ``criterion`` (baselines)."""
    if method not in METHODS:
        raise SparsecraftError(f"unknown sparse fine-tuning method {method!r}; allowed: {', '.join(METHODS)}")
    modules = dict(model.named_modules())
    missing = [n for n in trainable if n not in modules] if method == "pst" else []
    if missing:
        raise SparsecraftError(f"trainable names modules the model does not have: {missing}")
    if method == "pst":
        check_int("rank", rank, 1)
        check_int("mask_rank", mask_rank, 1)
        check_float("init_std", init_std, 0.0, 10.0)
        count = iter(range(1 << 30))
        layers = wrap_linears(model, lambda lin: PSTLinear(lin, rank, mask_rank, init_std=init_std,
                                                           seed=seed * 1000 + next(count)), targets, ignore)
        for p in model.parameters():
            p.requires_grad_(False)
        for layer in layers.values():
            for p in (layer.U, layer.V, layer.A, layer.B, layer.R, layer.C):
                p.requires_grad_(True)
        for name in trainable:
            for p in modules[name].parameters():
                p.requires_grad_(True)
        return {"method": method, "layers": layers}
    layers = wrap_linears(model, MaskedLinear, targets, ignore)
    for p in model.parameters():
        p.requires_grad_(True)
    tgts = {name: Target(name, layer) for name, layer in layers.items()}
    crit = Movement() if method == "movement" else Magnitude()
    if method == "movement":
        for name, layer in layers.items():
            layer.on_grad = lambda g, t=tgts[name]: crit.observe(t, g)
    return {"method": method, "layers": layers, "targets": tgts, "criterion": crit}


@torch.no_grad()
def set_sparsity(state: dict[str, Any], sparsity: float) -> None:
    """Set every layer's target sparsity: PST layers recompute their mask in each forward pass;
    the baselines' masks are recomputed here from the criterion's current scores."""
    check_sparsity(sparsity)
    for name, layer in state["layers"].items():
        if state["method"] == "pst":
            layer.sparsity = sparsity
        elif sparsity == 0.0:
            layer.keep.fill_(True)
        else:
            layer.keep.copy_(Unstructured().mask(state["criterion"].score(state["targets"][name]), sparsity))


@torch.no_grad()
def measured_sparsity(state: dict[str, Any]) -> float:
    """Fraction of zeros of the weights the sparse layers use (``Top(S) W'`` or ``keep W``)."""
    zeros = total = 0
    for layer in state["layers"].values():
        w = layer.sparse_weight() if state["method"] == "pst" else layer.weight * layer.keep
        zeros += int((w == 0).sum())
        total += w.numel()
    return zeros / total


def fine_tune(model: nn.Module, state: dict[str, Any] | None, train: tuple[torch.Tensor, ...], *, sparsity: float,
              steps: int, batch_size: int, lr: float, warmup: float = 0.1, cooldown: float = 0.3,
              seed: int = 0, progress: bool = False) -> None:
    """AdamW steps of cross-entropy on ``train`` = (ids, attention mask, labels) with the
    library's loop (:func:`sparsecraft.training.loop.run_steps`); the sparsity follows
    :func:`cubic_sparsity` (``state`` None: dense fine-tuning). Learning rate: linear warm-up over
    the first 10% of the steps, then cosine to 10% of ``lr``."""
    ids, attn, labels = train
    schedule = cubic_sparsity(sparsity, steps, warmup, cooldown)
    per_epoch = math.ceil(len(ids) / batch_size)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)

    def batch_at(t: int) -> torch.Tensor:
        return shuffled_batches(len(ids), batch_size, seed, t // per_epoch)[t % per_epoch]

    def loss_of(m: nn.Module, idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        loss = F.cross_entropy(m(ids[idx], attn[idx]), labels[idx])
        return loss, {"loss": float(loss.detach())}

    def before(t: int) -> None:
        if state is not None:
            set_sparsity(state, schedule(t))

    run_steps(model, opt, batch_at, loss_of, start=0, end=steps, before_step=before, progress=progress,
              lr_fn=lambda t: lr_at(t, steps, lr, warmup=max(1, steps // 10), min_ratio=0.1), desc="pst")
    if state is not None:
        set_sparsity(state, schedule(steps))
    model.eval()


@EXPERIMENTS.register("pst")
class PSTExperiment(Experiment):
    """PST vs movement vs magnitude sparse fine-tuning of all-MiniLM-L6-v2 on the play task."""

    paper = "Parameter-Efficient Sparsity for Large Language Models Fine-Tuning"
    claim = ("PST (magnitude + low-rank and structured learned importance, low-rank weight update, frozen W) "
             "matches or beats full-gradient movement pruning and magnitude pruning at 50-90% sparsity while "
             "training ~1.5% of BERT's parameters.")

    def __init__(self, model: str = "all-minilm-l6-v2",
                 plays: tuple[str, ...] = ("julius_caesar", "midsummer_nights_dream", "henry_v", "tempest"),
                 sparsities: tuple[float, ...] = (0.5, 0.7, 0.9), methods: tuple[str, ...] = METHODS,
                 n_train: int = 200, n_test: int = 100, seq_len: int = 32, steps: int = 40, batch_size: int = 16,
                 lr_full: float = 1e-4, lr_pst: float = 5e-3, rank: int = 8, mask_rank: int = 8,
                 init_std: float = 0.02, warmup: float = 0.1, cooldown: float = 0.3,
                 targets: tuple[str, ...] = (ENCODER_LINEARS,), seed: int = 0) -> None:
        if not isinstance(model, str) or not model:
            raise SparsecraftError(f"model must be a model name or path, got {model!r}")
        self.model, self.plays, self.targets = model, tuple(plays), tuple(targets)
        if not sparsities:
            raise SparsecraftError("sparsities needs at least one sparsity")
        self.sparsities = tuple(check_sparsity(s) for s in sparsities)
        bad = [m for m in methods if m not in METHODS]
        if bad or not methods:
            raise SparsecraftError(f"methods must be a non-empty subset of {', '.join(METHODS)}, got {list(methods)}")
        self.methods = tuple(methods)
        self.n_train, self.n_test = check_int("n_train", n_train, 1), check_int("n_test", n_test, 1)
        self.seq_len, self.steps = check_int("seq_len", seq_len, 4), check_int("steps", steps, 1)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.lr_full, self.lr_pst = check_float("lr_full", lr_full, 0, 1, open_low=True), check_float(
            "lr_pst", lr_pst, 0, 1, open_low=True)
        self.rank, self.mask_rank = check_int("rank", rank, 1), check_int("mask_rank", mask_rank, 1)
        self.init_std = check_float("init_std", init_std, 0.0, 10.0)
        cubic_sparsity(self.sparsities[0], self.steps, warmup, cooldown)  # checks warmup and cooldown
        self.warmup, self.cooldown = float(warmup), float(cooldown)
        self.seed = check_int("seed", seed, 0)

    def run(self, progress: bool = False) -> LabResult:
        from sparsecraft.models import load_model

        torch.set_num_threads(1)
        torch.manual_seed(self.seed)
        loaded = load_model(self.model)
        task = play_task(self.plays, self.n_train, self.n_test)

        def encode(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
            enc = loaded.tokenizer(texts, padding="max_length", truncation=True, max_length=self.seq_len,
                                   return_tensors="pt")
            return enc["input_ids"], enc["attention_mask"]

        train = (*encode(task.train_texts), task.train_labels)
        test = (*encode(task.test_texts), task.test_labels)
        base = EncoderClassifier(loaded.model, len(self.plays))
        probe_head(base, *train)
        n_head = sum(p.numel() for p in base.head.parameters())
        rows = [{"method": "linear probe (dense, frozen)", "sparsity": 0.0, "accuracy": accuracy(base, *test),
                 "trainable": n_head, "scores": 0, "measured": 0.0, "seconds": 0.0}]
        n_layers = 0
        runs = [("dense fine-tuning", 0.0)] + [(m, s) for s in self.sparsities for m in self.methods]
        for method, s in runs:
            model = copy.deepcopy(base)
            t0 = time.perf_counter()
            state = None if method == "dense fine-tuning" else sparsify(
                model, method, self.targets, rank=self.rank, mask_rank=self.mask_rank, init_std=self.init_std,
                seed=self.seed)
            n_trainable = trainable_parameters(model)
            n_layers = n_layers if state is None else len(state["layers"])
            n_scores = 0 if method != "movement" else sum(t.numel for t in state["targets"].values())
            fine_tune(model, state, train, sparsity=s, steps=self.steps, batch_size=self.batch_size,
                      lr=self.lr_pst if method == "pst" else self.lr_full, warmup=self.warmup,
                      cooldown=self.cooldown, seed=self.seed, progress=progress)
            rows.append({"method": method, "sparsity": s, "accuracy": accuracy(model, *test),
                         "trainable": n_trainable, "scores": n_scores, "seconds": time.perf_counter() - t0,
                         "measured": 0.0 if state is None else measured_sparsity(state)})
        return self._result(rows, trainable_parameters(base.encoder) + n_head, n_layers)

    def _result(self, rows: list[dict[str, Any]], n_total: int, n_layers: int) -> LabResult:
        table = LabTable(
            f"Test accuracy on 'which of {len(self.plays)} plays is this two-line passage from' "
            f"({', '.join(self.plays)}; {self.n_train} training and {self.n_test} test passages per play, test "
            f"passages from the last 20% of each play) after {self.steps} steps of batch {self.batch_size} "
            f"(seq_len {self.seq_len}) from a shared linear-probe head; sparse: the {n_layers} linear layers "
            f"of the encoder blocks, cubic schedule ({self.warmup:.0%} of the steps dense, the last "
            f"{self.cooldown:.0%} at the target); pst rank {self.rank}, mask rank {self.mask_rank}, U and A "
            f"init std {self.init_std:g}, lr {self.lr_pst:g}; full fine-tuning (dense, movement, magnitude) "
            f"lr {self.lr_full:g}; AdamW; chance "
            f"{1 / len(self.plays):.2f}",
            ["method", "target sparsity", "measured sparsity", "test accuracy", "trainable parameters",
             "% of model", "extra score entries", "seconds"],
            [[r["method"], fmt(r["sparsity"]), fmt(r["measured"], 3), fmt(r["accuracy"], 3), f"{r['trainable']:,}",
              fmt(100 * r["trainable"] / n_total), f"{r['scores']:,}", fmt(r["seconds"], 0)] for r in rows])
        acc = {(r["method"], r["sparsity"]): r["accuracy"] for r in rows}
        parts = [f"{s:.0%}: " + ", ".join(f"{m} {acc[(m, s)]:.3f}" for m in self.methods) for s in self.sparsities]
        finding = (f"linear probe {rows[0]['accuracy']:.3f}, dense fine-tuning {acc[('dense fine-tuning', 0.0)]:.3f}; "
                   + "; ".join(parts) + ".")
        return LabResult(self.name, self.claim, [table], finding, {"rows": rows, "model_parameters": n_total})
