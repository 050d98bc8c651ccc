"""Quantization buffers on a model: attach, read, list, remove, and a state dict that loads into
a fresh model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsecraft.errors import CheckpointError
from sparsecraft.quant.grid import QuantSpec, rtn
from sparsecraft.quant.state import (
    QuantState,
    get_quant,
    prepare_for_state_dict,
    quantized_params,
    remove_quant,
    set_quant,
    siblings,
)


def _quantized_linear(seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    lin = nn.Linear(32, 4)
    deq, s, z = rtn(lin.weight.detach(), QuantSpec(4, 16, False))
    with torch.no_grad():
        lin.weight.copy_(deq)
    set_quant(lin, QuantState(QuantSpec(4, 16, False), s, z))
    return lin


def test_set_get_and_codes():
    lin = _quantized_linear()
    st = get_quant(lin)
    assert st is not None and st.spec == QuantSpec(4, 16, False)
    assert st.scale.shape == (4, 2) and st.zero.dtype == torch.uint8
    codes = st.codes(lin.weight.detach())
    assert torch.equal(st.scale.repeat_interleave(16, 1) * (codes.float() - st.zero.float().repeat_interleave(16, 1)),
                       lin.weight.detach())
    assert set(lin.state_dict()) == {"weight", "bias", "weight_qscale", "weight_qzero", "weight_qspec"}


def test_fresh_model_loads_the_state_dict():
    src = nn.Sequential(_quantized_linear(0))
    dst = nn.Sequential(nn.Linear(32, 4))
    state = src.state_dict()
    prepare_for_state_dict(dst, state)
    dst.load_state_dict(state)
    assert torch.equal(get_quant(dst[0]).scale, get_quant(src[0]).scale)
    assert [n for n, *_ in quantized_params(dst)] == ["0"]
    remove_quant(dst[0])
    assert get_quant(dst[0]) is None and list(quantized_params(dst)) == []


def test_partial_siblings_are_an_error():
    state = _quantized_linear().state_dict()
    del state["weight_qzero"]
    with pytest.raises(CheckpointError, match="missing weight_qzero"):
        siblings(state, "weight")
    assert siblings(state, "bias") is None


def test_state_for_a_missing_weight_is_refused():
    state = {"nope_qspec": torch.tensor([4, 16, 1]), "nope_qscale": torch.ones(1, 1)}
    with pytest.raises(CheckpointError, match="no such weight"):
        prepare_for_state_dict(nn.Linear(2, 2), state)
