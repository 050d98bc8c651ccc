"""The group grid: GPTQ's parameter rule (with the documented departures), float16 scales, exact
codes, refusal of values that are off the grid, and the one-line errors of parse_spec."""

from __future__ import annotations

import pytest
import torch

from sparsecraft.errors import SparsecraftError
from sparsecraft.quant.grid import QuantSpec, codes_of, dequantize, find_params, parse_spec, quantize, rtn


def test_asymmetric_params_by_hand():
    # one group [-0.5, 1.0]: xmin -0.5, xmax 1.0, s = 1.5/15 = 0.1 -> float16 0.0999755859375,
    # z = round(0.5 / s) = 5
    s, z = find_params(torch.tensor([[-0.5, 1.0, 0.25, 0.0]]), bits=4, sym=False)
    assert s.item() == pytest.approx(0.0999755859375, abs=0) and z.item() == 5
    assert float(torch.tensor(0.1, dtype=torch.float16)) == s.item()


def test_symmetric_params_by_hand():
    # [0.46875, 0.09]: xmax = 0.46875, s = 2 * 0.46875 / 15 = 0.0625 (a float16), z = 8
    s, z = find_params(torch.tensor([[0.46875, 0.09]]), bits=4, sym=True)
    assert s.item() == 0.0625 and z.item() == 8
    q = quantize(torch.tensor([0.46875, 0.09]), s, z, 15)
    # 0.46875 / 0.0625 = 7.5 -> round half to even 8 -> 16 -> clamped to 15: 7 * 0.0625
    assert q.tolist() == [15.0, 9.0]
    assert dequantize(q, s, z).tolist() == [0.4375, 0.0625]


def test_all_positive_symmetric_group_is_not_clipped():
    # the reference would use s = xmax / 15 here and clip 1.0 to 7/15; the symmetric grid holds it
    s, z = find_params(torch.tensor([[0.2, 1.0]]), bits=8, sym=True)
    deq = dequantize(quantize(torch.tensor([0.2, 1.0]), s, z, 255), s, z)
    assert (deq - torch.tensor([0.2, 1.0])).abs().max() < s.item()


def test_zero_group_gets_unit_range_and_stays_zero():
    s, z = find_params(torch.zeros(1, 4), bits=4, sym=False)
    assert float(torch.tensor(2 / 15, dtype=torch.float16)) == s.item()
    assert dequantize(quantize(torch.zeros(4), s, z, 15), s, z).eq(0).all()


def test_tiny_scale_never_underflows_to_zero():
    s, _ = find_params(torch.tensor([[1e-12, -1e-12]]), bits=4, sym=True)
    assert s.item() == 2.0**-24


@pytest.mark.parametrize("bits,sym", [(4, True), (4, False), (8, True), (8, False)])
def test_rtn_values_decode_to_their_codes_exactly(bits, sym):
    torch.manual_seed(bits + sym)
    w = torch.randn(6, 64) * 0.05
    deq, s, z = rtn(w, QuantSpec(bits, 16, sym))
    q = codes_of(deq, s, z, bits)
    assert q.dtype == torch.uint8 and int(q.max()) <= (1 << bits) - 1
    # independent decode: s * (q - z), group by group
    back = torch.empty_like(deq)
    for r in range(6):
        for g in range(4):
            back[r, 16 * g:16 * g + 16] = s[r, g] * (q[r, 16 * g:16 * g + 16].float() - z[r, g])
    assert torch.equal(back, deq)
    # round to nearest: within half a step, one step for the clamped top of a symmetric grid
    assert ((deq - w).abs() <= s.repeat_interleave(16, 1) * (1.0 if sym else 0.5) + 1e-7).all()


def test_codes_of_refuses_values_off_the_grid():
    deq, s, z = rtn(torch.randn(2, 16), QuantSpec(4, 16, True))
    bad = deq.clone()
    bad[0, 3] += 1e-3
    with pytest.raises(SparsecraftError, match="not on the layer's int4 grid"):
        codes_of(bad, s, z, 4)
    neg0 = deq.clone()
    neg0[1, 0] = -0.0
    with pytest.raises(SparsecraftError, match="not on the layer's int4 grid"):
        codes_of(neg0, s, z, 4)


@pytest.mark.parametrize("spec,match", [
    ({"bits": 3}, "bits must be one of 4, 8"),
    ({"bits": True}, "bits must be one of"),
    ({"group": 24}, "multiple of 16"),
    ({"group": 0}, "multiple of 16"),
    ({"sym": "yes"}, "sym must be true or false"),
    ({"embedding": 2}, "embedding must be one of"),
    ({"bitz": 4}, "unknown quantize key"),
    ("int4", "must be a dict"),
])
def test_parse_spec_errors(spec, match):
    with pytest.raises(SparsecraftError, match=match):
        parse_spec(spec)


def test_parse_spec_defaults_and_int():
    assert parse_spec({}) == QuantSpec(4, 64, True, None)
    assert parse_spec(8) == QuantSpec(8, 64, True, None)


def test_check_layer_names_the_layer():
    with pytest.raises(SparsecraftError, match=r"layer 'blk.q': quantization group 128 does not divide its 576"):
        QuantSpec(4, 128).check_layer(576, "blk.q")
    QuantSpec(4, 64).check_layer(576, "blk.q")
