"""Masks on a model: attach, re-apply, remove, list.

A mask is a boolean buffer ``<param>_mask`` registered on the module that owns the weight
(``True`` = kept). Masks are *hard*: attaching zeroes the masked weights in place, and
:func:`apply_masks` re-zeroes them (call it after every optimizer step, or let a training
method do it). So the weight used in forward is the weight itself, and a report's true
sparsity is a count of its zeros. The buffers are part of ``state_dict``; metadata (pattern,
target sparsity, method) lives in ``module.sparsecraft_meta``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.targets import Target

MASK_SUFFIX = "_mask"


@dataclass
class MaskMeta:
    """What produced a mask: pattern spec, target sparsity, method, step."""

    pattern: str = "unstructured"
    target: float = 0.0
    method: str = "oneshot"
    step: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class MaskedParam(Target):
    """A target that carries a mask (``mask`` is the live buffer, ``meta`` its metadata)."""

    @property
    def mask(self) -> torch.Tensor:
        return getattr(self.module, self.param_name + MASK_SUFFIX)

    @property
    def meta(self) -> MaskMeta:
        return self.module.sparsecraft_meta[self.param_name]


def set_mask(
    module: nn.Module,
    mask: torch.Tensor,
    param_name: str = "weight",
    meta: MaskMeta | None = None,
    apply: bool = True,
) -> None:
    """Attach (or replace) the mask of ``module.<param_name>`` and zero the pruned weights."""
    param = getattr(module, param_name, None)
    if not isinstance(param, torch.Tensor):
        raise SparsecraftError(f"{type(module).__name__} has no tensor {param_name!r} to mask")
    if tuple(mask.shape) != tuple(param.shape):
        raise SparsecraftError(f"mask shape {tuple(mask.shape)} does not match {param_name} shape {tuple(param.shape)}")
    mask = mask.to(device=param.device, dtype=torch.bool)
    buf = param_name + MASK_SUFFIX
    if hasattr(module, buf) and isinstance(getattr(module, buf), torch.Tensor):
        getattr(module, buf).copy_(mask)
    else:
        module.register_buffer(buf, mask.clone())
    if not hasattr(module, "sparsecraft_meta"):
        module.sparsecraft_meta = {}
    module.sparsecraft_meta[param_name] = meta or module.sparsecraft_meta.get(param_name, MaskMeta())
    if apply:
        with torch.no_grad():
            param.masked_fill_(~getattr(module, buf), 0)


_SAME_WIDTH_INT = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def keep_bits(keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """``keep`` as integers as wide as the float ``dtype``: all bits set where kept, 0 where
    pruned (None when ``dtype`` is not a 2/4/8-byte float). For :func:`zero_pruned_`."""
    if not dtype.is_floating_point or dtype.itemsize not in _SAME_WIDTH_INT:
        return None
    int_dtype = _SAME_WIDTH_INT[dtype.itemsize]
    return torch.where(keep.to(torch.bool), torch.tensor(-1, dtype=int_dtype, device=keep.device),
                       torch.tensor(0, dtype=int_dtype, device=keep.device))  # fmt: skip


@torch.no_grad()
def zero_pruned_(tensor: torch.Tensor, keep: torch.Tensor, bits: torch.Tensor | None = None) -> None:
    """Set the pruned entries of ``tensor`` to +0 in place, kept entries bit-identical -- a
    ``where``, not a product (``inf * 0`` would be NaN). With ``bits`` from :func:`keep_bits`
    it is one bitwise AND on the integer view of the floats, as fast as a multiplication
    (``masked_fill_`` is ~13x slower on CPU); otherwise ``masked_fill_``."""
    if bits is not None and bits.dtype.itemsize == tensor.dtype.itemsize and tensor.dtype.is_floating_point:
        tensor.view(bits.dtype).bitwise_and_(bits)
    else:
        tensor.masked_fill_(~keep.to(torch.bool), 0)


def masked_params(model: nn.Module) -> Iterator[MaskedParam]:
    """Every masked parameter of ``model`` in module order, each tensor once: a weight shared
    by several modules (tied) is yielded for the first module that carries a mask for it."""
    seen: set[int] = set()
    for mname, module in model.named_modules():
        for bname, buf in list(module.named_buffers(recurse=False)):
            if bname.endswith(MASK_SUFFIX) and buf is not None and buf.dtype == torch.bool:
                pname = bname[: -len(MASK_SUFFIX)]
                param = getattr(module, pname, None)
                if isinstance(param, torch.Tensor) and id(param) not in seen:
                    seen.add(id(param))
                    if not hasattr(module, "sparsecraft_meta"):
                        module.sparsecraft_meta = {}
                    module.sparsecraft_meta.setdefault(pname, MaskMeta())
                    yield MaskedParam(mname, module, pname)


def is_soft(mp: MaskedParam) -> bool:
    """True when forward computes its own weight from a dense one (straight-through N:M
    training): the mask is then an indicator and the dense weight must not be zeroed."""
    return mp.param_name in (getattr(mp.module, "sparsecraft_forward_weights", None) or {})


@torch.no_grad()
def apply_masks(model: nn.Module) -> None:
    """Re-zero every hard-masked weight (after an optimizer step, a load, a manual edit).
    Soft masks (see :func:`is_soft`) are left alone: zeroing would destroy the dense weights
    their method trains; the method's ``finalize()`` makes them hard."""
    for mp in masked_params(model):
        if not is_soft(mp):
            mp.param.masked_fill_(~mp.mask, 0)


@torch.no_grad()
def remove_masks(model: nn.Module) -> None:
    """Make the zeros permanent and drop the mask buffers and metadata."""
    for mp in list(masked_params(model)):
        mp.param.masked_fill_(~mp.mask, 0)
        delattr(mp.module, mp.param_name + MASK_SUFFIX)
        mp.module.sparsecraft_meta.pop(mp.param_name, None)


def prepare_for_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Register empty masks on ``model`` for every ``*_mask`` key of ``state_dict`` so that
    ``model.load_state_dict(state_dict)`` works on a fresh (unmasked) model."""
    modules = dict(model.named_modules())
    for key, value in state_dict.items():
        if not key.endswith(MASK_SUFFIX) or value.dtype != torch.bool:
            continue
        mname, _, bname = key.rpartition(".")
        module = modules.get(mname)
        pname = bname[: -len(MASK_SUFFIX)]
        if module is None or not isinstance(getattr(module, pname, None), torch.Tensor):
            raise SparsecraftError(f"state_dict has mask {key!r} but the model has no such weight")
        if not hasattr(module, bname):
            set_mask(module, torch.ones_like(getattr(module, pname), dtype=torch.bool), pname, apply=False)
