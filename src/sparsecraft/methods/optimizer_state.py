"""Optimizer state of sparse weights: zero it where weights are pruned, reset it where
weights are regrown, and save/restore a whole optimizer without pickle.

Works for any ``torch.optim`` optimizer whose per-parameter state holds tensors of the
parameter's shape: SGD ``momentum_buffer``, Adam/AdamW ``exp_avg``/``exp_avg_sq``
(``max_exp_avg_sq`` with amsgrad), RMSprop ``square_avg``, Adagrad ``sum``, ... Scalars and
tensors of another shape (Adam's ``step``, factored second moments) are left alone.

Why it matters: with the gradient of a pruned weight masked to 0 and its state zeroed, SGD
momentum and weight decay (w <- w - lr (m + wd w)), Adam (m/(sqrt(v)+eps) = 0) and AdamW
(decoupled w(1 - lr wd)) all leave the weight exactly 0; a regrown weight starts with zero
moments (RigL, Evci et al. 2020: "newly activated connections ... optimizer moments reset").
"""

from __future__ import annotations

import json
from typing import Any

import torch

from sparsecraft.errors import CheckpointError


def param_state(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> dict[str, torch.Tensor]:
    """The state tensors of ``param`` that have its shape (empty before the first step)."""
    state = optimizer.state.get(param, {})
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor) and tuple(v.shape) == tuple(param.shape)}


@torch.no_grad()
def zero_state(optimizer: torch.optim.Optimizer, param: torch.Tensor, where: torch.Tensor) -> int:
    """Set every per-element state tensor of ``param`` to 0 at the ``True`` positions of
    ``where``; returns how many state tensors were touched."""
    where = where.to(device=param.device, dtype=torch.bool)
    tensors = param_state(optimizer, param)
    for t in tensors.values():
        t.masked_fill_(where, 0)
    return len(tensors)


def mask_state(optimizer: torch.optim.Optimizer, param: torch.Tensor, keep: torch.Tensor) -> int:
    """Zero the state of pruned positions (``keep`` False)."""
    return zero_state(optimizer, param, ~keep.to(torch.bool))


def reset_state(optimizer: torch.optim.Optimizer, param: torch.Tensor, grown: torch.Tensor) -> int:
    """Reset (to 0) the state of newly grown positions (``grown`` True)."""
    return zero_state(optimizer, param, grown)


# ---------------------------------------------------------------- checkpointing, no pickle
_TUPLE = "__tuple__"
_TENSOR = "__tensor__"


def _encode(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach().cpu().contiguous().clone()
        return {_TENSOR: key}
    if isinstance(value, tuple):
        return {_TUPLE: [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {str(k): _encode(v, f"{key}.{k}", tensors) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise CheckpointError(f"optimizer state value {key!r} of type {type(value).__name__} cannot be saved")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if _TENSOR in value:
            return tensors[value[_TENSOR]]
        if _TUPLE in value:
            return tuple(_decode(v, tensors) for v in value[_TUPLE])
        return {k: _decode(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    return value


def optimizer_to_tensors(
    optimizer: torch.optim.Optimizer, prefix: str = "optimizer"
) -> tuple[dict[str, torch.Tensor], str]:
    """``optimizer.state_dict()`` as (tensors for safetensors, JSON text for the structure)."""
    tensors: dict[str, torch.Tensor] = {}
    sd = optimizer.state_dict()
    doc = {
        "state": {str(i): _encode(s, f"{prefix}.state.{i}", tensors) for i, s in sd["state"].items()},
        "param_groups": _encode(sd["param_groups"], f"{prefix}.groups", tensors),
    }
    return tensors, json.dumps(doc)


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], structure: str) -> None:
    """Restore what :func:`optimizer_to_tensors` wrote (exactly, incl. dtypes)."""
    doc = json.loads(structure)
    sd = {
        "state": {int(i): _decode(s, tensors) for i, s in doc["state"].items()},
        "param_groups": _decode(doc["param_groups"], tensors),
    }
    try:
        optimizer.load_state_dict(sd)
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"optimizer state does not match this optimizer ({e})") from None
