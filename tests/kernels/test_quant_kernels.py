"""packed_linear (csrc/quant_kernels.cpp + qdot.h) == dequantize-then-matmul, for every layout,
bit width, group, batch 1..11 and every instruction set compiled here (scalar / AVX2 / AVX-512);
the kernel layouts by hand; the thread pool under oversubscription; malformed inputs refused."""

from __future__ import annotations

import threading

import pytest
import torch

from sparsecraft.kernels import quant_pack as qp
from sparsecraft.quant.grid import QuantSpec, codes_of, rtn


def _ref(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return x.double() @ w.double().t()


def _levels(kops) -> list[int]:
    top = kops.set_isa(9)  # clamps to the best compiled level
    return list(range(top + 1))


def test_int4_layouts_by_hand():
    codes = torch.arange(32, dtype=torch.uint8).remainder(16).reshape(1, 32)
    scale, zero = torch.ones(1, 1), torch.full((1, 1), 8.0)
    p = qp.pack_q_dense(codes, scale, zero, 4)
    # blocks of 32: byte j = code[j] | code[j + 16] << 4 -> j | j << 4
    assert p["codes"].tolist() == [[j | (j << 4) for j in range(16)]]
    keep = torch.zeros(1, 32, dtype=torch.bool)
    keep[0, [1, 2, 5]] = True
    s = qp.pack_q_sparse(codes, keep, scale, zero, 4, 0)
    assert s["masks"].tolist() == [[(1 << 1) | (1 << 2) | (1 << 5)]]
    assert s["codes"][:2].tolist() == [1 | (2 << 4), 5] and s["rowoff"].tolist() == [0, 2]
    assert s["scales"].dtype == torch.int16 and s["scales"].view(torch.float16).item() == 1.0


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group", [16, 32, 64, 128])
@pytest.mark.parametrize("g", [0, 4, 8, 16])
def test_quantized_layouts_match_reference(kops, bits, group, g):
    torch.manual_seed(bits + group + g)
    out, inp = 37, 384
    keep = (torch.rand(out, inp // g) > 0.5).repeat_interleave(g, 1) if g else torch.rand(out, inp) > 0.6
    w, s, z = rtn(torch.randn(out, inp) * keep, QuantSpec(bits, group, False))
    codes = codes_of(w, s, z, bits)
    packs = [qp.pack_q_dense(codes, s, z, bits), qp.pack_q_sparse(codes, keep, s, z, bits, g)]
    for level in _levels(kops):
        kops.set_isa(level)
        for n in (1, 2, 5, 8, 11):
            x = torch.randn(n, inp)
            for p in packs:
                y = kops.packed_linear(x, qp.parts_of(p), None, p["meta"].tolist())
                assert (y.double() - _ref(w, x)).abs().max() < 1e-4, (level, n, int(p["meta"][0]))


def test_odd_widths_and_float_layouts(kops):
    torch.manual_seed(0)
    w = torch.randn(33, 200) * (torch.rand(33, 200) > 0.6)
    b = torch.randn(33)
    for level in _levels(kops):
        kops.set_isa(level)
        for n in (1, 3):
            x = torch.randn(n, 200)
            for p in (qp.pack_f32_dense(w), qp.pack_f32_bitmap(w)):
                y = kops.packed_linear(x, qp.parts_of(p), b, p["meta"].tolist())
                assert (y.double() - _ref(w, x) - b.double()).abs().max() < 1e-4


def test_results_stay_exact_with_more_threads_than_cores(kops):
    """Oversubscribed pool (threads > cores, plus a busy Python thread): helpers get descheduled
    mid-chunk and the caller finishes their chunks; every result must still be the right one."""
    w, s, z = rtn(torch.randn(1024, 256), QuantSpec(4, 64, True))
    p = qp.pack_q_dense(codes_of(w, s, z, 4), s, z, 4)
    parts, meta = qp.parts_of(p), p["meta"].tolist()
    x = torch.randn(2, 256)
    ref = _ref(w, x)
    stop = threading.Event()
    busy = threading.Thread(target=lambda: [None for _ in iter(stop.is_set, True)], daemon=True)
    busy.start()
    try:
        for threads in (3, 4):
            kops.set_threads(threads)
            assert kops.threads() == threads
            for _ in range(300):
                y = kops.packed_linear(x, parts, None, meta)
                assert (y.double() - ref).abs().max() < 1e-4
    finally:
        stop.set()
        busy.join()


def test_malformed_inputs_are_refused(kops):
    w, s, z = rtn(torch.randn(8, 64), QuantSpec(4, 16, True))
    p = qp.pack_q_sparse(codes_of(w, s, z, 4), w != 0, s, z, 4, 0)
    parts, meta = qp.parts_of(p), p["meta"].tolist()
    x = torch.randn(1, 64)
    with pytest.raises(RuntimeError, match="codes"):
        kops.packed_linear(x, [parts[0][:5], *parts[1:]], None, meta)
    with pytest.raises(RuntimeError, match="scales"):
        kops.packed_linear(x, [parts[0], parts[1][:1], *parts[2:]], None, meta)
    with pytest.raises(RuntimeError, match="x must be float32"):
        kops.packed_linear(torch.randn(1, 63), parts, None, meta)
    with pytest.raises(RuntimeError, match="bits must be 4/8"):
        kops.packed_linear(x, parts, None, [meta[0], meta[1], meta[2], 3, *meta[4:]])


def test_int4_float_inputs_keep_float32_precision(kops):
    """The int4 bitmap and dense loops multiply the float input itself with exact weights s * (c - z)
    (qdot_lanes.h; no bfloat16 or int8 rounding of the input): 3 x (1 + 2^-10 + 2^-20) is exact in
    float32 and must come out so (a bfloat16 input would keep 8 significant bits); inputs spread over
    six decades stay within float32 rounding of the reference."""
    codes = torch.full((1, 64), 8, dtype=torch.uint8)
    codes[0, 37] = 11  # (11 - 8) * scale 1 = 3; input 37 sits in the dense layout's second block
    keep = torch.zeros(1, 64, dtype=torch.bool)
    keep[0, [9, 37]] = True  # input 9 is kept with a zero weight (code 8)
    one, eight = torch.ones(1, 1), torch.full((1, 1), 8.0)
    x = torch.zeros(1, 64)
    x[0, 37] = 1 + 2**-10 + 2**-20
    x[0, 9] = 12345.0
    for p in (qp.pack_q_sparse(codes, keep, one, eight, 4, 0), qp.pack_q_dense(codes, one, eight, 4)):
        for level in _levels(kops):
            kops.set_isa(level)
            y = kops.packed_linear(x, qp.parts_of(p), None, p["meta"].tolist())
            assert y.item() == 3 * (1 + 2**-10 + 2**-20), (level, int(p["meta"][0]))
    torch.manual_seed(3)
    out, inp = 19, 512
    keep = torch.rand(out, inp) > 0.5
    w, s, z = rtn(torch.randn(out, inp) * keep, QuantSpec(4, 64, False))
    c = codes_of(w, s, z, 4)
    for p in (qp.pack_q_sparse(c, keep, s, z, 4, 0), qp.pack_q_dense(c, s, z, 4)):
        for level in _levels(kops):
            kops.set_isa(level)
            for n in (1, 3):
                x = torch.randn(n, inp) * 10 ** (torch.rand(n, inp) * 6 - 3)
                y = kops.packed_linear(x, qp.parts_of(p), None, p["meta"].tolist())
                scale = x.double().abs() @ w.double().abs().t()  # sum |w| |x| per output
                assert ((y.double() - _ref(w, x)).abs() / scale).max() < 2e-6, (level, n, int(p["meta"][0]))


def test_int8_bitmap_float_inputs_exact_at_extreme_codes(kops):
    """The int8 bitmap loop turns a code into c - z by the float exponent trick (qdot_lanes.h): the
    extremes c - z = 255 (z 0) and -255 (z 255) come out exact, dropped inputs count nothing however
    large their input, and a kept input whose code is its zero point weighs 0. By hand:
    0.5 * 255 * (1 + 2^-15) + 0.25 * (0 - 255) * 3 = 127.5 + 255 * 2^-16 - 191.25."""
    codes = torch.zeros(1, 128, dtype=torch.uint8)
    codes[0, 5], codes[0, 9], codes[0, 70] = 255, 0, 0
    keep = torch.zeros(1, 128, dtype=torch.bool)
    keep[0, [5, 9, 70]] = True
    scale = torch.tensor([[0.5, 0.25]])
    zero = torch.tensor([[0.0, 255.0]])
    p = qp.pack_q_sparse(codes, keep, scale, zero, 8, 0)
    x = torch.zeros(2, 128)
    x[:, 5] = 1 + 2**-15
    x[:, 9] = 7.0  # code 0 with zero point 0: weight 0
    x[:, 70] = 3.0
    x[:, 6] = x[:, 100] = 1e6  # dropped
    x[1] *= -2
    want = 127.5 + 255 * 2**-16 - 191.25
    for level in _levels(kops):
        kops.set_isa(level)
        y = kops.packed_linear(x, qp.parts_of(p), None, p["meta"].tolist())
        assert y[:, 0].tolist() == [want, -2 * want], level
