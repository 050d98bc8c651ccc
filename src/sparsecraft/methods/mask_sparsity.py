"""``mask-sparsity``: pruning-aware L1 on the BN scales of chosen channels, then channel pruning.

Jiang et al. (2022), "Pruning-aware Sparse Regularization for Network Pruning" (MaskSparsity;
ALGORITHMS.md, "Structured / regularised"). Unlike network slimming, the sparsity penalty is
applied *only* to the BatchNorm scales ``gamma`` of the channels chosen for pruning (a pruning
mask decided beforehand), so the kept channels train unconstrained. After ``loss.backward()``
(here: just before the optimizer step)::

    grad(gamma_c) += lambda * sign(gamma_c)     for chosen channels c only,  lambda = 5e-4

At ``total_steps - finetune_steps`` every channel with ``|gamma_c| < threshold`` (0.01) is
pruned and the rest of training fine-tunes. Which channels are chosen: ``chosen`` (a dict
BN-module name -> channel indices) or, by default, the ``ratio`` fraction of each BN layer
with the smallest ``|gamma|`` when the method is attached.

Pruning is done by *masking whole channels* (``physical=True`` additionally removes them at
``finalize()`` through the traced dependency graph, :func:`sparsecraft.structure.remove_masked`,
residual adds included; the first training batch is kept as the trace's example input): the BN's
``gamma`` and ``beta`` of a pruned channel are hard-masked to 0 (so the channel's output is
exactly 0) and so is the producing layer's output row (the conv/linear just before the BN
in module order with as many outputs as the BN has channels); the masks are ordinary hard
masks, kept at zero after every step, saved by checkpoints and counted by reports.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.masks import MaskMeta, set_mask
from sparsecraft.methods.base import METHODS, SparseMethod, resolve_step
from sparsecraft.methods.optimizer_state import mask_state
from sparsecraft.patterns import count_to_prune

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def out_channels(module: nn.Module) -> int:
    w = module.weight
    return w.shape[1] if type(module).__name__ == "Conv1D" else w.shape[0]


@METHODS.register("mask-sparsity")
class MaskSparsity(SparseMethod):
    """L1 (lambda*sign) on the BN scales of chosen channels only; prune |gamma| < 0.01."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        lam: float = 5e-4,
        threshold: float = 0.01,
        ratio: float = 0.5,
        chosen: dict[str, list[int]] | None = None,
        finetune_steps: int | float = 0.1,
        physical: bool = False,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("sparsity", 0.0)
        super().__init__(model, optimizer, **kwargs)
        self.physical = bool(physical)
        self._example: torch.Tensor | None = None
        if self.physical:  # keep one input sample to trace the model with at finalize()
            self._example_hook = model.register_forward_pre_hook(self._keep_example)
        if not 0.0 <= ratio <= 1.0:
            raise SparsecraftError(f"mask-sparsity ratio must be in [0, 1], got {ratio}")
        self.lam, self.threshold, self.ratio = float(lam), float(threshold), float(ratio)
        self.bns: dict[str, nn.Module] = {
            n: m for n, m in model.named_modules() if isinstance(m, BN_TYPES) and m.affine
        }
        if not self.bns:
            raise SparsecraftError("mask-sparsity needs BatchNorm layers with affine scales")
        unknown = sorted(set(chosen or {}) - set(self.bns))
        if unknown:
            raise SparsecraftError(f"chosen names {unknown} are not BN layers; BN layers: "
                                   f"{sorted(self.bns)}")
        self.producers = self._pair_producers(model)
        self.chosen = {n: self._choose(n, bn, chosen) for n, bn in self.bns.items()}
        self.prune_step = self.total_steps - (resolve_step(finetune_steps, self.total_steps) or 0)
        self.pruned = False

    def _keep_example(self, module: nn.Module, args: tuple) -> None:
        if args and isinstance(args[0], torch.Tensor):
            self._example = args[0][:1].detach().clone()
            self._example_hook.remove()

    def _pair_producers(self, model: nn.Module) -> dict[str, str]:
        """BN name -> name of the target just before it with as many outputs."""
        by_module = {t.module_name: t for t in self.targets}
        last: dict[str, Any] = {}
        pairs = {}
        for name, mod in model.named_modules():
            if name in by_module:
                last = {"name": by_module[name].name, "out": out_channels(mod)}
            elif name in self.bns and last.get("out") == self.bns[name].num_features:
                pairs[name] = last["name"]
        return pairs

    def _choose(self, name: str, bn: nn.Module, chosen: dict[str, list[int]] | None) -> torch.Tensor:
        sel = torch.zeros(bn.num_features, dtype=torch.bool, device=bn.weight.device)
        if chosen is not None:
            sel[torch.as_tensor(chosen.get(name, []), dtype=torch.long)] = True
            return sel
        k = count_to_prune(self.ratio, bn.num_features)
        sel[torch.argsort(bn.weight.detach().abs(), stable=True)[:k]] = True
        return sel

    def initial_masks(self) -> dict[str, torch.Tensor]:
        return {t.name: torch.ones_like(t.param, dtype=torch.bool) for t in self.targets}

    @torch.no_grad()
    def modify_gradients(self) -> None:
        """``grad(gamma) += lambda * sign(gamma)`` on chosen channels (regularisation phase);
        after the prune, pruned BN entries get no gradient."""
        for name, bn in self.bns.items():
            if self.pruned:
                for p in (bn.weight, bn.bias):
                    if p.grad is not None:
                        p.grad.masked_fill_(~self._bn_keep(name), 0)
                continue
            if bn.weight.grad is None:
                bn.weight.grad = torch.zeros_like(bn.weight)
            bn.weight.grad.add_(self.lam * torch.sign(bn.weight) * self.chosen[name])

    def _bn_keep(self, name: str) -> torch.Tensor:
        return self.bns[name].weight_mask

    @torch.no_grad()
    def prune_channels(self) -> dict[str, int]:
        """Mask every channel with ``|gamma| < threshold``; returns pruned counts per BN."""
        counts, masks = {}, {}
        for name, bn in self.bns.items():
            keep = bn.weight.detach().abs() >= self.threshold
            counts[name] = int((~keep).sum())
            meta = MaskMeta("channel", counts[name] / keep.numel(), self.name, self.step_count)
            for pname in ("weight", "bias"):
                set_mask(bn, keep, pname, meta)
                if self.optimizer is not None:
                    mask_state(self.optimizer, getattr(bn, pname), keep)
            producer = self.producers.get(name)
            if producer is not None:
                t = next(t for t in self.targets if t.name == producer)
                rows = keep[:, None].expand(t.layout.rows, t.layout.cols)
                masks[producer] = t.layout.from_rows(rows).contiguous()
        self._set_masks(masks)
        self.pruned = True
        self.pruned_counts = counts
        return counts

    @torch.no_grad()
    def post_step(self) -> None:
        if self.pruned:
            for bn in self.bns.values():
                bn.weight.masked_fill_(~bn.weight_mask, 0)
                bn.bias.masked_fill_(~bn.bias_mask, 0)
        elif self.step_count >= self.prune_step:
            self.prune_channels()

    def finalize(self) -> None:
        """Prune if not done yet; with ``physical=True`` also remove the masked channels
        (:func:`sparsecraft.structure.remove_masked`; ``removed_channels`` maps each channel group,
        named by its first producer layer, to the channels removed)."""
        if not self.pruned:
            self.prune_channels()
        super().finalize()
        if self.physical:
            if self._example is None:
                raise SparsecraftError("mask-sparsity physical=True traces the model at finalize(), which needs one "
                                       "forward pass of training first")
            from sparsecraft.structure import remove_masked

            self.removed_channels = dict(remove_masked(self.model, example=self._example).removed)

    def extra_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, meta = super().extra_state()
        tensors.update({f"chosen.{k}": v.clone() for k, v in self.chosen.items()})
        return tensors, {**meta, "pruned": self.pruned}

    def load_extra_state(self, tensors: Any, meta: Any) -> None:
        super().load_extra_state({k: v for k, v in tensors.items() if not k.startswith("chosen.")},
                                 meta)
        for k, v in tensors.items():
            if k.startswith("chosen."):
                self.chosen[k[7:]] = v.to(torch.bool).clone()
        self.pruned = bool(meta.get("pruned", False))
