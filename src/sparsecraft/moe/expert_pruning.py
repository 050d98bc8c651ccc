"""Expert pruning: remove the least useful experts of every MoE layer from router statistics
gathered on calibration data, and write the smaller model.

Statistics per layer and expert e, over the calibration tokens (:func:`router_statistics`):

* ``frequency``: how many tokens chose e among their top-k (the count behind the load balance);
* ``saliency``: sum over the tokens that chose e of g_{t,e} * ||E_e(x_t)||_2, the gate weight times
  the norm of the expert's output -- what the layer's output loses without e (the criterion of
  expert-pruning work such as Lu et al. 2024, "Not All Experts are Equal", in its simplest form).

:func:`prune_experts` removes the same number of experts from every layer (a transformers config
has one expert count), the lowest-scoring ones (ties: the lower index goes first), by slicing the
router's rows and the experts' 3-D weights (with their masks and biases). The router renormalises
by itself: a softmax over the kept experts' logits is the original softmax renormalised over the
kept set, p_i / sum_{j kept} p_j, so the pruned model computes exactly what the original computes
with the removed experts' logits set to -inf. :func:`save_pruned` writes a transformers model with
``save_pretrained`` (``from_pretrained`` loads it) or a :class:`~sparsecraft.moe.model.SparseLM` with
:func:`~sparsecraft.moe.model.save_lm`, plus ``expert_pruning.json`` (kept experts per layer).

Supported: :class:`~sparsecraft.moe.layer.MoEFFN` and the sparse MoE blocks of transformers'
Qwen2-MoE, Qwen3-MoE, Mixtral and OLMoE (softmax top-k routers without extra routing state);
any other module with ``experts`` is refused by name.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from sparsecraft import atomic
from sparsecraft.errors import SparsecraftError
from sparsecraft.layout import expert_param_names
from sparsecraft.masks import MASK_SUFFIX
from sparsecraft.moe.layer import MoEFFN
from sparsecraft.moe.router import TopKRouter
from sparsecraft.oneshot.stats import expert_call_inputs, expert_output, expert_token_lists

#: transformers router classes whose routing is softmax -> top-k (-> optional renormalisation)
SUPPORTED_ROUTERS = ("Qwen2MoeTopKRouter", "Qwen3MoeTopKRouter", "MixtralTopKRouter", "OlmoeTopKRouter")
CRITERIA = ("saliency", "frequency")
CONFIG_KEYS = ("num_experts", "num_local_experts")


@dataclass
class MoEBlockView:
    name: str
    block: nn.Module
    router: nn.Module
    experts: nn.Module

    @property
    def n_experts(self) -> int:
        return int(self.router.weight.shape[0])

    @property
    def top_k(self) -> int:
        return int(self.router.top_k)


def find_moe_blocks(model: nn.Module) -> list[MoEBlockView]:
    """Every MoE block of ``model``; a module with ``experts`` that is not supported is an error."""
    out = []
    for name, m in model.named_modules():
        if isinstance(m, MoEFFN):
            out.append(MoEBlockView(name, m, m.router, m.experts))
            continue
        experts = getattr(m, "experts", None)
        if not isinstance(experts, nn.Module):
            continue
        router = getattr(m, "gate", None)
        if type(router).__name__ not in SUPPORTED_ROUTERS or not expert_param_names(experts):
            raise SparsecraftError(
                f"unsupported MoE module {type(m).__name__} at {name!r} (router {type(router).__name__}); expert "
                f"pruning supports sparsecraft MoEFFN and transformers' Qwen2-MoE, Qwen3-MoE, Mixtral, OLMoE blocks"
            )
        out.append(MoEBlockView(name, m, router, experts))
    if not out:
        raise SparsecraftError(f"{type(model).__name__} has no MoE layer to prune experts from")
    return out


@dataclass
class RouterStats:
    """Calibration statistics of one MoE layer (see the module docstring)."""

    name: str
    frequency: torch.Tensor  #: (E,) tokens that chose each expert
    saliency: torch.Tensor  #: (E,) sum of gate weight x expert output norm
    tokens: int = 0

    def scores(self, criterion: str) -> torch.Tensor:
        if criterion not in CRITERIA:
            raise SparsecraftError(f"expert-pruning criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
        return self.frequency if criterion == "frequency" else self.saliency


def _default_run(model: nn.Module, batch: Any) -> None:
    if isinstance(batch, dict):
        model(**batch)
    else:
        model(input_ids=batch.to(next(model.parameters()).device))


@torch.no_grad()
def router_statistics(model: nn.Module, calib: torch.Tensor | Iterable[Any], batch_size: int = 8,
                      run: Callable[[nn.Module, Any], Any] | None = None, progress: bool = False) -> list[RouterStats]:
    """Frequency and saliency of every expert of every MoE layer over ``calib`` (an (n, L) id
    tensor, cut into batches of ``batch_size``, or an iterable of batches; ``run(model, batch)``
    overrides how a batch is fed, default ``model(input_ids=batch)``)."""
    blocks = find_moe_blocks(model)
    stats = {b.name: RouterStats(b.name, torch.zeros(b.n_experts, dtype=torch.float64),
                                 torch.zeros(b.n_experts, dtype=torch.float64)) for b in blocks}

    def hook_for(view: MoEBlockView):
        def hook(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            hidden, index = expert_call_inputs(args, kwargs)
            weights = args[2] if len(args) > 2 else kwargs["top_k_weights"]
            hidden = hidden.reshape(-1, hidden.shape[-1])
            index = index.reshape(hidden.shape[0], -1)
            weights = weights.reshape(index.shape)
            st = stats[view.name]
            st.tokens += hidden.shape[0]
            for e, rows in enumerate(expert_token_lists(index, view.n_experts)):
                if rows.numel() == 0:
                    continue
                st.frequency[e] += rows.numel()
                gate = (weights[rows] * (index[rows] == e)).sum(-1)
                norms = expert_output(module, e, hidden[rows]).float().norm(dim=-1)
                st.saliency[e] += float((gate.float() * norms).sum())

        return hook

    handles = [b.experts.register_forward_hook(hook_for(b), with_kwargs=True) for b in blocks]
    batches = [calib[i:i + batch_size] for i in range(0, len(calib), batch_size)] \
        if isinstance(calib, torch.Tensor) else list(calib)
    if not batches:
        raise SparsecraftError("router statistics need calibration data (calib= token ids or batches)")
    was = model.training
    model.eval()
    try:
        for batch in tqdm(batches, desc="router statistics", file=sys.stderr, disable=not progress, leave=False):
            (run or _default_run)(model, batch)
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return [stats[b.name] for b in blocks]


@dataclass
class ExpertPruning:
    """What :func:`prune_experts` did: kept / removed expert indices per layer and the scores."""

    criterion: str
    kept: dict[str, list[int]] = field(default_factory=dict)
    removed: dict[str, list[int]] = field(default_factory=dict)
    scores: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"criterion": self.criterion, "kept": self.kept, "removed": self.removed, "scores": self.scores}


def _count_to_remove(n_experts: int, top_k: int, fraction: float | None, n_remove: int | None) -> int:
    if (fraction is None) == (n_remove is None):
        raise SparsecraftError("give exactly one of fraction= (of the experts per layer) or n_remove=")
    if fraction is not None:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
            raise SparsecraftError(f"fraction of experts to remove must be in [0, 1), got {fraction!r}")
        n_remove = int(fraction * n_experts)
    if isinstance(n_remove, bool) or not isinstance(n_remove, int) or n_remove < 0:
        raise SparsecraftError(f"n_remove must be an integer >= 0, got {n_remove!r}")
    if n_experts - n_remove < max(top_k, 1):
        raise SparsecraftError(f"removing {n_remove} of {n_experts} experts leaves {n_experts - n_remove}, fewer than "
                               f"top_k={top_k} experts per token")
    return n_remove


@torch.no_grad()
def _slice_experts(view: MoEBlockView, keep: torch.Tensor) -> None:
    router = view.router
    router.weight = nn.Parameter(router.weight.detach()[keep].clone(), requires_grad=router.weight.requires_grad)
    for buf in ("expert_bias", "pending_counts"):
        if isinstance(getattr(router, buf, None), torch.Tensor):
            setattr(router, buf, getattr(router, buf)[keep].clone())
    ex = view.experts
    for pname in expert_param_names(ex):
        for name in (pname, f"{pname}_bias"):
            p = getattr(ex, name, None)
            if isinstance(p, nn.Parameter):
                setattr(ex, name, nn.Parameter(p.detach()[keep.to(p.device)].clone(), requires_grad=p.requires_grad))
        mask = getattr(ex, pname + MASK_SUFFIX, None)
        if isinstance(mask, torch.Tensor):
            setattr(ex, pname + MASK_SUFFIX, mask[keep.to(mask.device)].clone())
    n = int(keep.numel())
    for obj in (router, ex):
        if hasattr(obj, "num_experts"):
            obj.num_experts = n
    if isinstance(router, TopKRouter):
        router.n_experts = n
    if isinstance(view.block, MoEFFN):
        view.block.load_counts = view.block.load_counts[keep].clone()


def prune_experts(model: nn.Module, stats: list[RouterStats], fraction: float | None = None,
                  n_remove: int | None = None, criterion: str = "saliency") -> ExpertPruning:
    """Remove the ``n_remove`` (or ``fraction`` x E) lowest-``criterion`` experts of every MoE
    layer in place and update the model's config; returns what was kept and removed."""
    blocks = find_moe_blocks(model)
    if criterion not in CRITERIA:
        raise SparsecraftError(f"expert-pruning criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    by_name = {s.name: s for s in stats}
    missing = [b.name for b in blocks if b.name not in by_name]
    if missing:
        raise SparsecraftError(f"no router statistics for MoE layer(s) {', '.join(missing[:3])}; "
                               "run router_statistics first")
    sizes = {b.n_experts for b in blocks}
    if len(sizes) != 1:
        raise SparsecraftError(f"MoE layers have different expert counts {sorted(sizes)}; expert pruning needs one")
    n_exp = sizes.pop()
    k = _count_to_remove(n_exp, max(b.top_k for b in blocks), fraction, n_remove)
    result = ExpertPruning(criterion)
    for b in blocks:
        scores = by_name[b.name].scores(criterion).double()
        if scores.numel() != n_exp:
            raise SparsecraftError(f"statistics of {b.name!r} cover {scores.numel()} experts, the layer has {n_exp}")
        order = torch.argsort(scores, stable=True)
        removed = sorted(order[:k].tolist())
        keep = torch.tensor(sorted(order[k:].tolist()), dtype=torch.long)
        result.kept[b.name], result.removed[b.name] = keep.tolist(), removed
        result.scores[b.name] = scores.tolist()
        _slice_experts(b, keep)
    _update_config(model, n_exp - k)
    return result


def _update_config(model: nn.Module, n: int) -> None:
    cfg = getattr(model, "config", None)
    if cfg is None:
        return
    if isinstance(getattr(cfg, "moe", None), dict):  # SparseLMConfig
        cfg.moe["n_experts"] = n
        return
    for key in CONFIG_KEYS:
        if hasattr(cfg, key):
            setattr(cfg, key, n)


def save_pruned(model: nn.Module, out_dir: str | os.PathLike, result: ExpertPruning, tokenizer: Any = None) -> Path:
    """Write the expert-pruned model to ``out_dir`` (replaced as a whole): a transformers model
    with ``save_pretrained`` (``from_pretrained`` loads it), a SparseLM as ``model.safetensors``
    (:func:`~sparsecraft.moe.model.load_lm` loads it); both with ``expert_pruning.json``."""
    from sparsecraft.moe.model import SparseLM, save_lm

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SparsecraftError(f"output {str(out)!r} exists and is not a folder")
    if not isinstance(model, SparseLM) and not hasattr(model, "save_pretrained"):
        raise SparsecraftError(f"cannot save a {type(model).__name__}: neither a SparseLM nor a transformers model")
    with atomic.directory(out) as tmp:
        if isinstance(model, SparseLM):
            save_lm(model, tmp / "model.safetensors")
        else:
            model.save_pretrained(str(tmp))
            if tokenizer is not None:
                tokenizer.save_pretrained(str(tmp))
        atomic.write_json(tmp / "expert_pruning.json", result.to_dict())
    return out
