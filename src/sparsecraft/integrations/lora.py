"""LoRA fine-tuning of a pruned model through ``peft``, merged so that the mask survives.

A LoRA update ``B A`` is dense: merging it the usual way (``W + s B A``, ``merge_and_unload``)
fills every pruned position and the model is dense again (the complaint of Wanda #10/#83,
SparseGPT #17, llm-compressor #952/#1028). Here the merge is

    W' = W + M * (s B A)        (M = the layer's mask, 1 = kept; s = lora_alpha / r)

so ``W'`` is zero wherever ``W`` was pruned and ``report()`` shows the same per-layer sparsity
after the merge as before. Two ways, both through ``peft``:

* :func:`merge_lora` merges *any* peft LoRA model (made by you with ``get_peft_model``, trained
  any way) with the mask and removes the adapters. During training such an adapter sees the
  dense update, so the merged model differs from the trained one at the pruned positions.
* :func:`lora_model` (``masked=True``, the default) wraps the masked Linear layers in
  :class:`MaskedLoraLinear`, whose forward is ``x W^T + x (M * s B A)^T``: the update is sparse
  by construction, the model trained is the model merged (and ``peft``'s own
  ``merge_and_unload()`` keeps the mask too).

The mask ``M`` is the nonzero pattern of ``W`` (at wrap / merge time) within the layer's
sparsecraft mask (``weight_mask``) where it has one: a kept weight that is exactly zero stays
zero. Training works with any loop: a plain one, the Hugging Face ``Trainer`` (with or without
:class:`~sparsecraft.integrations.hf_trainer.SparsecraftCallback`;
use ``targets=masked_base_layers(peft_model)`` and ``method="static", from_model=True`` there),
or :func:`sparsecraft.oneshot.recovery.recover` (SquareHead distillation of the adapters alone:
it trains the parameters that require gradients). Needs the extra ``sparsecraft[peft]``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparsecraft.errors import MissingDependencyError, SparsecraftError
from sparsecraft.masks import MASK_SUFFIX

PEFT_PIP = "pip install 'sparsecraft[peft]'"


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise MissingDependencyError(f"LoRA fine-tuning needs peft: {PEFT_PIP}") from None
    return peft


def keep_mask(layer: nn.Module) -> torch.Tensor:
    """``M`` of a Linear: the weights that are nonzero and, where it has a sparsecraft mask, kept
    by it. A kept weight that is exactly zero (SparseGPT's update or a quantized checkpoint
    produce a few) counts as pruned, as ``report()`` counts it, so the merge never changes the
    sparsity ``report()`` shows."""
    keep = layer.weight.detach() != 0
    mask = getattr(layer, "weight" + MASK_SUFFIX, None)
    if isinstance(mask, torch.Tensor) and mask.dtype == torch.bool:
        keep &= mask
    return keep


def _masked_lora_class() -> type:
    peft = _peft()
    from peft.tuners.lora.layer import Linear as LoraLinear

    class MaskedLoraLinear(LoraLinear):
        """peft's LoRA Linear whose update is ``M * (s B A)`` (forward, merge and delta)."""

        def __init__(self, base_layer: nn.Module, adapter_name: str, **kwargs: Any) -> None:
            config = kwargs.get("config")
            if config is not None and (getattr(config, "use_dora", False) or getattr(config, "lora_bias", False)):
                raise SparsecraftError("masked LoRA supports plain LoRA only (no use_dora, no lora_bias)")
            super().__init__(base_layer, adapter_name, **kwargs)
            if self.fan_in_fan_out:
                raise SparsecraftError("masked LoRA wraps nn.Linear (fan_in_fan_out=False)")

        def get_delta_weight(self, adapter: str) -> torch.Tensor:
            delta = super().get_delta_weight(adapter)
            keep = keep_mask(self.get_base_layer()).to(delta.device)
            return torch.where(keep, delta, torch.zeros((), dtype=delta.dtype, device=delta.device))

        def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            if self.disable_adapters or self.merged or kwargs.get("adapter_names") is not None:
                return super().forward(x, *args, **kwargs)
            result = self.base_layer(x, *args, **kwargs)
            for name in self.active_adapters:
                if name in self.lora_A:
                    h = self.lora_dropout[name](self._cast_input_dtype(x, self.lora_A[name].weight.dtype))
                    result = result + F.linear(h, self.get_delta_weight(name)).to(result.dtype)
            return result

    MaskedLoraLinear.__qualname__ = MaskedLoraLinear.__name__ = "MaskedLoraLinear"
    del peft
    return MaskedLoraLinear


_CLASS: list[type] = []


def masked_lora_class() -> type:
    """The :class:`MaskedLoraLinear` class (built on first use: it subclasses peft's Linear)."""
    if not _CLASS:
        _CLASS.append(_masked_lora_class())
    return _CLASS[0]


def masked_layers(model: nn.Module) -> list[str]:
    """Names of the ``nn.Linear`` modules of ``model`` that carry a sparsecraft mask."""
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and isinstance(getattr(m, "weight" + MASK_SUFFIX, None), torch.Tensor)]


def lora_model(
    model: nn.Module,
    r: int = 16,
    lora_alpha: float = 32,
    dropout: float = 0.0,
    target_modules: Sequence[str] | None = None,
    masked: bool = True,
    **lora_kwargs: Any,
) -> nn.Module:
    """``peft.get_peft_model`` with LoRA on ``target_modules`` (default: every masked Linear,
    by exact name); ``masked=True`` uses :class:`MaskedLoraLinear` (sparse update)."""
    peft = _peft()
    if target_modules is None:
        names = masked_layers(model)
        if not names:
            raise SparsecraftError("the model carries no masked Linear layer; prune it first or give target_modules")
        target_modules = "|".join(re.escape(n) for n in names)  # peft full-matches a string against each name
    config = peft.LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=dropout, target_modules=target_modules,
                             bias="none", **lora_kwargs)
    if masked:
        config._register_custom_module({nn.Linear: masked_lora_class()})
    return peft.get_peft_model(model, config)


def masked_base_layers(peft_model: nn.Module) -> list[str]:
    """Regexes naming the masked base layers inside a peft model (for ``targets=`` of
    ``attach`` / :class:`SparsecraftCallback`, so the adapters themselves are not targets)."""
    return [rf"^{re.escape(n)}$" for n in masked_layers(peft_model)]


@torch.no_grad()
def merge_lora(peft_model: nn.Module) -> nn.Module:
    """Merge every active LoRA adapter as ``W + M * delta`` and remove the adapters; returns the
    base model (masks and their metadata kept). Works for plain and masked LoRA layers."""
    _peft()
    from peft.tuners.lora.layer import Linear as LoraLinear
    from peft.tuners.tuners_utils import BaseTunerLayer

    if not hasattr(peft_model, "unload"):
        raise SparsecraftError(f"merge_lora expects a peft model (get_peft_model / lora_model), got "
                               f"{type(peft_model).__name__}")
    for name, module in peft_model.named_modules():
        if not isinstance(module, BaseTunerLayer):
            continue
        if not isinstance(module, LoraLinear) or getattr(module, "fan_in_fan_out", False):
            raise SparsecraftError(f"{name}: only LoRA on nn.Linear is merged with the mask "
                                   f"(got {type(module).__name__})")
        if module.merged:
            raise SparsecraftError(f"{name}: the adapter is already merged densely; unmerge it first")
        if any(module.lora_bias.get(a) for a in module.active_adapters) or module.lora_variant:
            raise SparsecraftError(f"{name}: DoRA / LoRA bias / other variants cannot be merged with a mask")
        base = module.get_base_layer()
        keep = keep_mask(base)
        for adapter in module.active_adapters:
            if adapter in module.lora_A:
                delta = module.get_delta_weight(adapter).to(base.weight.dtype)
                base.weight.add_(torch.where(keep, delta, torch.zeros((), dtype=delta.dtype, device=delta.device)))
    return peft_model.unload()
