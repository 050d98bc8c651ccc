"""Quantization state on a model: which weights are quantized, with which scales.

A quantized weight keeps its *dequantized* float values in the parameter itself (so the model
runs anywhere, e.g. through plain ``transformers``), plus three buffers on its module, part of
``state_dict`` like the masks of :mod:`sparsecraft.masks`:

* ``<param>_qscale``: float32 (rows, ngroups), float16-exact scales of the row view;
* ``<param>_qzero``: uint8 (rows, ngroups), integer zero points;
* ``<param>_qspec``: int64 ``[bits, group, sym]``.

The integer codes are not stored: ``w / s + z`` gives them back exactly
(:func:`sparsecraft.quant.grid.codes_of`). Packed formats (``sparsecraft.formats``) store
codes + scales instead of floats, and the C++ kernels read codes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from sparsecraft.errors import CheckpointError
from sparsecraft.layout import WeightLayout, layout_for
from sparsecraft.quant.grid import QuantSpec, codes_of

SCALE, ZERO, SPEC = "_qscale", "_qzero", "_qspec"
SUFFIXES = (SCALE, ZERO, SPEC)


@dataclass
class QuantState:
    """The quantization of one weight: spec, scales and zero points of its row view."""

    spec: QuantSpec
    scale: torch.Tensor  #: float32 (rows, ngroups)
    zero: torch.Tensor  #: integer-valued (rows, ngroups)

    def codes(self, w_rows: torch.Tensor, what: str = "weight") -> torch.Tensor:
        """uint8 codes of the row view ``w_rows`` (checked to lie on the grid)."""
        return codes_of(w_rows, self.scale, self.zero, self.spec.bits, what)


def spec_tensor(spec: QuantSpec) -> torch.Tensor:
    return torch.tensor([spec.bits, spec.group, int(spec.sym)], dtype=torch.int64)


def spec_from_tensor(t: torch.Tensor) -> QuantSpec:
    bits, group, sym = (int(v) for v in t.reshape(-1).tolist()[:3])
    return QuantSpec(bits, group, bool(sym))


def set_quant(module: nn.Module, state: QuantState, param_name: str = "weight") -> None:
    """Attach (or replace) the quantization buffers of ``module.<param_name>``."""
    values = {
        SCALE: state.scale.detach().to(torch.float32).contiguous(),
        ZERO: state.zero.detach().to(torch.uint8).contiguous(),
        SPEC: spec_tensor(state.spec),
    }
    for suffix, t in values.items():
        name = param_name + suffix
        if name in module._buffers:
            module._buffers[name] = t.to(getattr(module, param_name).device)
        else:
            module.register_buffer(name, t.to(getattr(module, param_name).device))


def get_quant(module: nn.Module, param_name: str = "weight") -> QuantState | None:
    """The :class:`QuantState` of ``module.<param_name>``, or ``None`` when not quantized."""
    bufs = module._buffers
    if param_name + SPEC not in bufs or bufs[param_name + SPEC] is None:
        return None
    return QuantState(spec_from_tensor(bufs[param_name + SPEC]), bufs[param_name + SCALE], bufs[param_name + ZERO])


def remove_quant(module: nn.Module, param_name: str = "weight") -> None:
    """Drop the quantization buffers (the float weight stays as it is)."""
    for suffix in SUFFIXES:
        module._buffers.pop(param_name + suffix, None)


def quantized_params(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, QuantState]]:
    """(module name, module, param name, state) of every quantized weight, each tensor once."""
    seen: set[int] = set()
    for mname, module in model.named_modules():
        for bname in list(module._buffers):
            if bname.endswith(SPEC):
                pname = bname[: -len(SPEC)]
                param = getattr(module, pname, None)
                st = get_quant(module, pname)
                if isinstance(param, torch.Tensor) and st is not None and id(param) not in seen:
                    seen.add(id(param))
                    yield mname, module, pname, st


def row_codes(module: nn.Module, param_name: str = "weight") -> tuple[torch.Tensor, QuantState, WeightLayout]:
    """(uint8 codes of the row view, state, layout) of a quantized weight."""
    st = get_quant(module, param_name)
    if st is None:
        raise CheckpointError(f"{type(module).__name__}.{param_name} is not quantized")
    w = getattr(module, param_name).detach()
    layout = layout_for(module, w)
    return st.codes(layout.to_rows(w).cpu()), st, layout


def siblings(state: dict[str, torch.Tensor], key: str) -> dict[str, torch.Tensor] | None:
    """The three quantization tensors of weight ``key`` in a state dict ({suffix: tensor}),
    or ``None`` when ``key`` is not quantized (a partial set is an error)."""
    have = {s: state[key + s] for s in SUFFIXES if key + s in state}
    if not have:
        return None
    if len(have) != len(SUFFIXES):
        missing = [key + s for s in SUFFIXES if s not in have]
        raise CheckpointError(f"quantized weight {key!r} is missing {', '.join(missing)}")
    return have


def state_from_siblings(sib: dict[str, torch.Tensor]) -> QuantState:
    return QuantState(spec_from_tensor(sib[SPEC]), sib[SCALE].to(torch.float32), sib[ZERO])


def is_quant_key(key: str) -> bool:
    return key.endswith(SUFFIXES)


def prepare_for_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Register empty quantization buffers on ``model`` for every ``*_qspec`` key of ``state``
    so that ``model.load_state_dict(state)`` works on a fresh (unquantized) model."""
    modules = dict(model.named_modules())
    for key in state:
        if not key.endswith(SPEC):
            continue
        mname, _, bname = key.rpartition(".")
        pname = bname[: -len(SPEC)]
        module = modules.get(mname)
        if module is None or not isinstance(getattr(module, pname, None), torch.Tensor):
            raise CheckpointError(f"state_dict has quantization {key!r} but the model has no such weight")
        if get_quant(module, pname) is None:
            scale = state[f"{mname}.{pname}{SCALE}" if mname else pname + SCALE]
            set_quant(module, QuantState(spec_from_tensor(state[key]), torch.zeros_like(scale),
                                         torch.zeros(scale.shape, dtype=torch.uint8)), pname)
