"""Sparse Model Soups (Zimmer et al. 2024, "Sparse Model Soups: A Recipe for Improved Pruning
via Model Averaging"), ALGORITHMS.md "Merging".

Per phase i = 1..P: prune the current model globally by magnitude so that q = 1-(1-s)^(1/P)
of the remaining weights go (total sparsity 1-(1-s)^(i/P)); retrain m copies with the *same
mask* but different hyper-parameters (seed / batch order / weight decay: one dict per
ingredient, handed to the user's ``train_fn``); merge them into a soup and start the next phase
from it. Merging:

* ``uniform``: average all ingredients;
* ``greedy`` (Wortsman et al. 2022): sort ingredients by ``validate`` (higher is better), start
  from the best, add each next one if the averaged model scores at least as well.

After averaging, BatchNorm running statistics are recomputed on ``bn_batches`` (they are
not averages of the ingredients' statistics). Masks are shared, so the soup keeps the
sparsity exactly (checked).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.masks import MASK_SUFFIX, apply_masks
from sparsecraft.pruning import prune_by_criterion

TrainFn = Callable[..., Any]
ValidateFn = Callable[[nn.Module], float]


def average_state(models: Sequence[nn.Module]) -> dict[str, torch.Tensor]:
    """Mean of the floating-point state of ``models``; other entries (masks, counters) must
    be equal and are taken from the first model."""
    states = [m.state_dict() for m in models]
    out = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            out[key] = torch.stack([s[key].float() for s in states]).mean(0).to(first.dtype)
        else:
            if key.endswith(MASK_SUFFIX) and any(not torch.equal(s[key], first) for s in states):
                raise SparsecraftError(f"soup ingredients have different masks at {key!r}")
            out[key] = first.clone()
    return out


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[Any]) -> int:
    """Recompute BatchNorm running mean/var as exact averages over ``batches``; returns the
    number of batches used. Batches are tensors, (inputs, labels) pairs or dicts."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    saved = [(m.momentum, m.training) for m in bns]
    was_training = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average = exact mean over the batches
    model.train()
    n = 0
    for batch in batches:
        if isinstance(batch, Mapping):
            model(**batch)
        elif isinstance(batch, (tuple, list)):
            model(batch[0])
        else:
            model(batch)
        n += 1
    for m, (momentum, _) in zip(bns, saved):
        m.momentum = momentum
    model.train(was_training)
    return n


def make_soup(
    models: Sequence[nn.Module],
    mode: str = "uniform",
    validate: ValidateFn | None = None,
    bn_batches: Iterable[Any] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Merge ``models`` (same architecture and masks); returns (soup, info)."""
    if not models:
        raise SparsecraftError("a soup needs at least one ingredient")
    soup = copy.deepcopy(models[0])
    scores: list[float] = []

    def load(members: Sequence[nn.Module]) -> None:
        soup.load_state_dict(average_state(members))
        if bn_batches is not None:
            recalibrate_batchnorm(soup, bn_batches)

    if mode == "uniform":
        chosen = list(range(len(models)))
        load(models)
        if validate is not None:
            scores = [float(validate(m)) for m in models]
    elif mode == "greedy":
        if validate is None:
            raise SparsecraftError("the greedy soup needs validate=fn(model) -> score")
        scores = [float(validate(m)) for m in models]
        order = sorted(range(len(models)), key=lambda i: -scores[i])
        chosen, best = [order[0]], scores[order[0]]
        for i in order[1:]:
            load([models[j] for j in chosen + [i]])
            score = float(validate(soup))
            if score >= best:
                chosen, best = chosen + [i], score
        load([models[j] for j in chosen])
    else:
        raise SparsecraftError(f"unknown soup mode {mode!r}; allowed: uniform, greedy")
    apply_masks(soup)
    info = {"mode": mode, "chosen": chosen, "ingredient_scores": scores}
    if validate is not None:
        info["soup_score"] = float(validate(soup))
    return soup, info


def sparse_model_soups(
    model: nn.Module,
    train_fn: TrainFn,
    *,
    sparsity: float,
    phases: int,
    ingredients: Sequence[Mapping[str, Any]],
    mode: str = "uniform",
    validate: ValidateFn | None = None,
    bn_batches: Iterable[Any] | None = None,
    targets: Sequence[str] | None = None,
    ignore: Sequence[str] | None = None,
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Run SMS: P prune-retrain phases with m ingredients each; returns (soup, per-phase info).

    ``train_fn(model, phase=i, **ingredient)`` trains a copy in place with its mask fixed (e.g.
    ``sparsecraft.attach(model, opt, method="static", from_model=True, ...)``); masks are
    re-applied afterwards and must be unchanged. ``bn_batches`` should be a re-iterable.
    """
    if not 0.0 <= sparsity < 1.0 or phases < 1 or not ingredients:
        raise SparsecraftError("sparse_model_soups needs 0 <= sparsity < 1, phases >= 1, ingredients")
    history = []
    current = model
    for i in range(1, phases + 1):
        s_i = 1.0 - (1.0 - sparsity) ** (i / phases)
        prune_by_criterion(current, s_i, criterion="magnitude", distribution="global", targets=targets,
                           ignore=ignore, label="sms", step=i)
        copies = []
        for cfg in ingredients:
            c = copy.deepcopy(current)
            train_fn(c, phase=i, **dict(cfg))
            apply_masks(c)
            copies.append(c)
        current, info = make_soup(copies, mode, validate, bn_batches)
        history.append({"phase": i, "sparsity": s_i, **info})
    return current, history
