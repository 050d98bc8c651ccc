"""How important a structure is: a criterion of the criteria axis, aggregated over its slices.

Every weight slot of a channel space (producer rows, consumer columns) is scored element-wise
with a criterion from :mod:`sparsecraft.criteria`, and the elements that belong to one channel
are aggregated over *all* slots of its group:

* ``magnitude``: ||W_c||_2, the L2 norm of every weight tied to channel ``c`` (the L2 group norm
  used by Li et al. 2017 for filters and by LLM-Pruner's "vector" magnitude);
* ``wanda``: the L2 norm of the Wanda scores |W_ij| ||X_j||_2 (Sun et al. 2024, Eq. 1) of those
  weights: for a producer row the input norms of that layer, for a consumer column the norm of
  the channel itself as it enters the consumer;
* ``taylor`` (= criterion ``saliency``): sum_i |w_i g_i| over the weights of the structure, the
  first-order Taylor estimate of the loss change when they are removed (Molchanov et al. 2019,
  "Importance Estimation for Neural Network Pruning"; LLM-Pruner's element-wise first order),
  with g summed over the calibration batches.

A head's score aggregates its query rows and output-projection columns (plus its key/value rows
when whole key/value groups are scored); a block's is its Block Influence
(:mod:`sparsecraft.structure.depth`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from sparsecraft.criteria import Criterion, LossFn, make_criterion
from sparsecraft.errors import SparsecraftError
from sparsecraft.layout import layout_for
from sparsecraft.oneshot.blockwise import model_inputs
from sparsecraft.structure.graph import DependencyGraph, HeadGroup
from sparsecraft.targets import Target, is_prunable_module

ALIASES = {"taylor": "saliency", "l2": "magnitude"}
L1_CRITERIA = ("saliency", "movement", "gradient")


def make_structure_criterion(spec: Any) -> Criterion:
    if isinstance(spec, str):
        spec = ALIASES.get(spec.lower(), spec)
    return make_criterion(spec)


def lm_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """Next-token cross-entropy of a causal LM on a batch of token ids (the default Taylor loss)."""
    kw = model_inputs(model, batch)
    kw.setdefault("labels", kw["input_ids"])
    return model(**kw).loss


@torch.no_grad()
def input_norms(model: nn.Module, targets: list[Target], batches: Iterable[Any]) -> dict[str, torch.Tensor]:
    """||X_j||_2 over all calibration tokens of every input feature of every target layer."""
    sums: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def fn(module: nn.Module, args: tuple) -> None:
            x = args[0].detach().float()
            x = x.reshape(-1, x.shape[-1])
            sq = x.pow(2).sum(0)
            sums[name] = sums[name] + sq if name in sums else sq
        return fn

    handles = []
    for t in targets:
        if layout_for(t.module, t.param).kind == "conv":
            raise SparsecraftError(f"criterion 'wanda' scores Linear layers; {t.module_name} is a convolution "
                                   "(use magnitude or taylor)")
        handles.append(t.module.register_forward_pre_hook(hook(t.name)))
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            if isinstance(batch, (tuple, list)):  # (inputs, labels) batches of a plain model
                model(batch[0])
            else:
                model(**model_inputs(model, batch))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {k: v.sqrt() for k, v in sums.items()}


def _weight_targets(model: nn.Module, graph: DependencyGraph, spaces: Iterable[int]) -> dict[tuple[str, str], Target]:
    modules = dict(model.named_modules())
    out: dict[tuple[str, str], Target] = {}
    for space in spaces:
        for slot in graph.slots(space):
            mod = modules.get(slot.module)
            if slot.name == "weight" and mod is not None and is_prunable_module(mod):
                out[(slot.module, slot.name)] = Target(slot.module, mod, "weight")
    return out


def space_energies(model: nn.Module, graph: DependencyGraph, spaces: list[int], criterion: Any = "magnitude",
                   calib: Iterable[Any] | None = None, loss_fn: LossFn | None = None
                   ) -> tuple[dict[int, torch.Tensor], bool]:
    """Per space, per channel: sum over its weight slots of score^2 (L2 criteria) or |score|
    (gradient criteria, then the flag is True). :func:`finish` turns these sums into scores."""
    crit = make_structure_criterion(criterion)
    targets = _weight_targets(model, graph, spaces)
    batches = list(calib) if calib is not None else None
    if crit.needs_activations:
        if not batches:
            raise SparsecraftError("criterion 'wanda' needs calibration data: pass calib=")
        norms = input_norms(model, list(targets.values()), batches)
        for t in targets.values():
            crit.set_input_norms(t, norms[t.name])  # type: ignore[attr-defined]
    if crit.needs_gradients:
        if not batches:
            name = crit.registry_name  # type: ignore[attr-defined]
            raise SparsecraftError(f"criterion {name!r} needs calibration data for gradients: pass calib=")
        is_lm = hasattr(getattr(model, "config", None), "vocab_size")
        crit.prepare(model, list(targets.values()), batches, loss_fn or (lm_loss if is_lm else None))
    l1 = crit.registry_name in L1_CRITERIA  # type: ignore[attr-defined]
    scores = {k: crit.score(t).detach().float() for k, t in targets.items()}
    out: dict[int, torch.Tensor] = {}
    for space in spaces:
        size = graph.spaces.size[graph.spaces.find(space)]
        e = torch.zeros(size)
        for slot in graph.slots(space):
            s = scores.get((slot.module, slot.name))
            if s is None:
                continue
            s = s.abs() if l1 else s.pow(2)
            dims = [d for d in range(s.dim()) if d != slot.dim]
            v = s.sum(dims) if dims else s
            e += v.reshape(size, slot.spread).sum(1).cpu()
        out[space] = e
    return out, l1


def finish(energy: torch.Tensor, l1: bool) -> torch.Tensor:
    return energy if l1 else energy.sqrt()


def head_energies(g: HeadGroup, e: dict[int, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(per query head: query rows + output columns, per key/value head: key + value rows)."""
    (qs, qo), (ks, ko), (vs, vo) = g.q, g.k, g.v
    q = e[qs][qo: qo + g.hq * g.d].reshape(g.hq, g.d).sum(1) + e[g.o].reshape(g.hq, g.dv).sum(1)
    kv = (e[ks][ko: ko + g.hkv * g.d].reshape(g.hkv, g.d).sum(1)
          + e[vs][vo: vo + g.hkv * g.dv].reshape(g.hkv, g.dv).sum(1))
    return q, kv
